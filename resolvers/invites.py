"""Invite links: a group's owners and admins hand out codes, and whoever holds one may join.

A code is 192 random bits, shown once, in createInvite's answer; only its SHA-256 is
stored, so neither a database dump nor `invites` gives a usable code, and the lookup by
hash leaks nothing about codes through its timing.

Joining applies addMembers' rules from the joiner's side: the member cap, bans
(resolvers/bans.py), and blocks, where the joiner puts themselves in a group with the
invite's creator and the group's owners, so any of those who blocked the joiner refuses
it (`FORBIDDEN`, the same message for a ban and a block: neither is revealed). Other
members' blocks do not count, as for addMembers: groups are not filtered by blocks.
The use is counted and the member added in one transaction, in the global lock order
(the conversation row first), so concurrent joins exceed neither `maxUses` nor the cap.
A viewer who is a member already gets the conversation, and the invite is not used.

Guessing: every code that names no usable invite (wrong, expired, revoked, used up) gets
the same `NOT_FOUND` and counts as a failure, per user and per client address, before
anything is looked up; an attempt that ends otherwise is taken back. Successful joins
count against an hourly limit of their own. The failure counts fail open, as the chat
limits do (resolvers/rate_limits.py): 192-bit codes are not guessable in any case.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Conversation, ConversationKind, Invite, Member, MemberRole
from resolvers.accounts import Viewer
from resolvers.auth_limits import address_key
from resolvers.blocks import blockers_among
from resolvers.conversations import (
    HOUR,
    Change,
    ConversationView,
    _announce,
    _group,
    _require_manager,
    _view,
    banned_among,
    membership,
)
from resolvers.errors import BadUserInput, Conflict, Forbidden, NotFound
from resolvers.inbox import Appended
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend, take_back
from resolvers.services import Services

log = logging.getLogger("parley.invites")

# 24 bytes: 192 bits, 32 URL-safe characters.
CODE_BYTES = 24
MAX_CODE_LENGTH = 100
# `invites` lists the live ones and those that ended (expired or revoked) within this long.
ENDED_LISTED_SECONDS = 7 * 86400
MAX_INVITES_LISTED = 100
INVALID = "This invite link is not valid: it may have expired, been revoked or been used up."
REFUSED = "You cannot join this group."
NO_INVITE = "No such invite."


class InvalidInvite(NotFound):
    """A code that names no usable invite: one answer for every reason, so none is revealed."""

    def __init__(self) -> None:
        super().__init__(INVALID)


@dataclass(frozen=True)
class InviteView:
    """An invite as its group's managers see it; `code` only in the answer that created it."""

    invite: Invite
    code: str | None = None

    @property
    def id(self) -> int:
        assert self.invite.id is not None
        return self.invite.id


def code_hash(code: str) -> str:
    """What is stored of a code: its SHA-256, in hex."""
    return hashlib.sha256(code.encode()).hexdigest()


def _usable(now: datetime) -> ColumnElement[bool]:
    return (
        col(Invite.revoked_at).is_(None)
        & (col(Invite.expires_at).is_(None) | (col(Invite.expires_at) > now))
        & (col(Invite.max_uses).is_(None) | (col(Invite.uses) < col(Invite.max_uses)))
    )


async def create_invite(
    services: Services, viewer: Viewer, *, conversation_id: int, max_uses: int | None, expires_in: int | None
) -> InviteView:
    """A new invite link to a group (OWNER or ADMIN), with its code; `expires_in` None: the longest allowed."""
    limits = services.limits
    if max_uses is not None and not 1 <= max_uses <= limits.invite_max_uses:
        raise BadUserInput(f"maxUses is between 1 and {limits.invite_max_uses}, or null.")
    lifetime = limits.invite_max_lifetime_seconds if expires_in is None else expires_in
    if not 1 <= lifetime <= limits.invite_max_lifetime_seconds:
        raise BadUserInput(f"expiresIn is between 1 and {limits.invite_max_lifetime_seconds} seconds, or null.")
    code = secrets.token_urlsafe(CODE_BYTES)

    async def work(session: AsyncSession) -> Invite:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        now = services.clock()
        # Counted under the conversation row's lock: concurrent creations cannot pass the bound together.
        live = await session.scalar(
            select(func.count()).select_from(Invite).where(col(Invite.conversation_id) == conversation_id, _usable(now))
        )
        if (live or 0) >= limits.invite_max_live_per_group:
            raise Conflict(
                f"A group has at most {limits.invite_max_live_per_group} usable invite links: revoke one first."
            )
        await spend(
            services,
            f"invites:{viewer.user_id}",
            limit=limits.invites_per_hour,
            window_seconds=HOUR,
            refusal=f"At most {limits.invites_per_hour} invite links an hour; try again later.",
        )
        invite = Invite(
            conversation_id=conversation_id,
            code_hash=code_hash(code),
            created_by=viewer.user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            max_uses=max_uses,
        )
        session.add(invite)
        await session.flush()
        return invite

    invite = await services.db.transaction(work)
    log.info("user %s created invite %s to group %s", viewer.user_id, invite.id, conversation_id)
    return InviteView(invite, code=code)


def _failure_keys(services: Services, viewer: Viewer, address: str | None) -> list[tuple[str, int]]:
    limits = services.limits
    return [
        (f"invite-failures:user:{viewer.user_id}", limits.invite_failures_per_user),
        (f"invite-failures:address:{address_key(address)}", limits.invite_failures_per_address),
    ]


async def join_by_invite(services: Services, viewer: Viewer, *, code: str, address: str | None) -> ConversationView:
    """Joins the viewer to the group the code invites to; the conversation as the viewer now sees it.

    `NOT_FOUND` for a code that names no usable invite, `FORBIDDEN` when banned or blocked,
    `CONFLICT` when the group is full, `RATE_LIMITED` after too many failures.
    """
    window = services.limits.invite_failure_window_seconds
    keys = _failure_keys(services, viewer, address)
    # Counted as a failure before the lookup, so parallel guesses cannot all pass a check made first.
    for key, limit in keys:
        await spend(
            services,
            key,
            limit=limit,
            window_seconds=window,
            refusal="Too many invalid invite links; try again later.",
        )
    try:
        view = await _join(services, viewer, code.strip())
    except InvalidInvite:
        log.info("user %s tried an invite code that names no usable invite", viewer.user_id)
        raise
    except Exception:
        await _take_back(services, keys, window)
        raise
    await _take_back(services, keys, window)
    return view


async def _take_back(services: Services, keys: list[tuple[str, int]], window: int) -> None:
    for key, _ in keys:
        await take_back(services, key, window_seconds=window)


async def _join(services: Services, viewer: Viewer, code: str) -> ConversationView:
    if not 1 <= len(code) <= MAX_CODE_LENGTH or not code.isascii():
        raise InvalidInvite()
    async with services.db.session() as session:
        found = (
            await session.execute(
                select(col(Invite.id), col(Invite.conversation_id)).where(col(Invite.code_hash) == code_hash(code))
            )
        ).first()
    if found is None:
        raise InvalidInvite()
    invite_id, conversation_id = found
    limits = services.limits

    async def work(session: AsyncSession) -> tuple[ConversationView, list[Appended]]:
        # The conversation row first (the global lock order): joins, additions, bans and
        # revocations of this group run one at a time from here, so what is read is current.
        conversation = await session.get(Conversation, conversation_id, with_for_update={"key_share": True})
        if conversation is None or conversation.kind is not ConversationKind.GROUP:
            raise InvalidInvite()
        if await session.get(Member, (conversation_id, viewer.user_id)) is not None:
            return await _view(session, conversation_id, viewer.user_id), []
        now = services.clock()
        invite = (
            await session.execute(select(Invite).where(col(Invite.id) == invite_id, _usable(now)))
        ).scalar_one_or_none()
        if invite is None:
            raise InvalidInvite()
        if await banned_among(session, conversation_id, [viewer.user_id], now=now):
            raise Forbidden(REFUSED)
        owners = (
            await session.execute(
                select(col(Member.user_id)).where(
                    col(Member.conversation_id) == conversation_id, col(Member.role) == MemberRole.OWNER
                )
            )
        ).scalars()
        if await blockers_among(session, viewer.user_id, [invite.created_by, *owners]):
            raise Forbidden(REFUSED)
        members = await session.scalar(
            select(func.count()).select_from(Member).where(col(Member.conversation_id) == conversation_id)
        )
        if (members or 0) >= limits.max_group_members:
            raise Conflict(f"A group has at most {limits.max_group_members} members.")
        await spend(
            services,
            f"invite-joins:{viewer.user_id}",
            limit=limits.invite_joins_per_hour,
            window_seconds=HOUR,
            refusal=f"At most {limits.invite_joins_per_hour} groups joined by invite an hour; try again later.",
        )
        used = await session.execute(
            update(Invite).where(col(Invite.id) == invite_id, _usable(now)).values(uses=col(Invite.uses) + 1)
        )
        if used.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidInvite()
        session.add(
            Member(conversation_id=conversation_id, user_id=viewer.user_id, role=MemberRole.MEMBER, joined_at=now)
        )
        await session.flush()
        appended = await _announce(
            session, conversation_id, Change.JOINED, actor_id=viewer.user_id, users=[viewer.user_id]
        )
        log.info("user %s joined group %s by invite %s", viewer.user_id, conversation_id, invite_id)
        return await _view(session, conversation_id, viewer.user_id), appended

    return await commit_then_publish(services, work)


async def revoke_invite(services: Services, viewer: Viewer, *, invite_id: int) -> None:
    """Ends an invite link at once (OWNER or ADMIN of its group); revoking it again changes nothing."""
    async with services.db.session() as session:
        conversation_id = await session.scalar(select(col(Invite.conversation_id)).where(col(Invite.id) == invite_id))
    if conversation_id is None:
        raise NotFound(NO_INVITE)

    async def work(session: AsyncSession) -> None:
        try:
            _, me = await _group(session, conversation_id, viewer)
        except NotFound:
            raise NotFound(NO_INVITE) from None  # a non-member learns nothing about the id
        _require_manager(me)
        await session.execute(
            update(Invite)
            .where(col(Invite.id) == invite_id, col(Invite.revoked_at).is_(None))
            .values(revoked_at=services.clock())
        )

    await services.db.transaction(work)
    log.info("user %s revoked invite %s of group %s", viewer.user_id, invite_id, conversation_id)


async def list_invites(services: Services, viewer: Viewer, *, conversation_id: int) -> list[InviteView]:
    """A group's invite links (OWNER or ADMIN), newest first: the live ones and those ended lately, without codes."""
    async with services.db.session() as session:
        me = await membership(session, conversation_id, viewer.user_id)
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None or conversation.kind is not ConversationKind.GROUP:
            raise BadUserInput("Only groups have invite links.")
        _require_manager(me)
        since = services.clock() - timedelta(seconds=ENDED_LISTED_SECONDS)
        rows = await session.execute(
            select(Invite)
            .where(
                col(Invite.conversation_id) == conversation_id,
                col(Invite.revoked_at).is_(None) | (col(Invite.revoked_at) > since),
                col(Invite.expires_at).is_(None) | (col(Invite.expires_at) > since),
            )
            .order_by(col(Invite.created_at).desc(), col(Invite.id).desc())
            .limit(MAX_INVITES_LISTED)
        )
        return [InviteView(invite) for invite in rows.scalars()]
