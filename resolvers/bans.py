"""Bans: a group's owners and admins bar a user from it, for a while or until unbanned.

A ban removes the user if they are a member (the usual MEMBER_REMOVED event, after which
their sends are NOT_FOUND) and keeps them out: neither addMembers nor an invite link lets
them back in until the ban ends
(`banned_among` in resolvers/conversations.py is the rule both apply). Like removing,
only an owner bans an owner. Changes run under the conversation row's lock, as every
membership change does, so a join cannot slip in beside a ban.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Ban, Member, MemberRole, User
from resolvers.accounts import Viewer
from resolvers.conversations import Change, _announce, _group, _require_manager, membership
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.inbox import Appended
from resolvers.moderation import check_until, spend_moderation
from resolvers.publish import commit_then_publish
from resolvers.services import Services
from resolvers.webhooks import stage

log = logging.getLogger("parley.bans")

# The `bans` list: a group's bans in force, newest first.
MAX_LISTED = 500


@dataclass(frozen=True, slots=True)
class BanView:
    """A ban in force, as `bans` lists it."""

    user_id: int
    banned_by: int | None
    created_at: datetime
    until: datetime | None


async def ban_member(
    services: Services, viewer: Viewer, *, conversation_id: int, user_id: int, until: datetime | None
) -> None:
    """Bans a user from a group (OWNER or ADMIN), removing them if present; `until` None: until unbanned.

    `until` is in the future, at most `moderation_max_seconds` ahead. Banning again only sets the new end.
    """
    if user_id == viewer.user_id:
        raise BadUserInput("You cannot ban yourself; to go, use leaveGroup.")
    expires_at = check_until(services, until, what="until")

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        if await session.get(User, user_id) is None:
            raise NotFound(f"No such user: {user_id}.")
        target = await session.get(Member, (conversation_id, user_id))
        if target is not None and target.role is MemberRole.OWNER and me.role is not MemberRole.OWNER:
            raise Forbidden("Only an owner can ban an owner.")
        now = services.clock()
        await spend_moderation(services, viewer)
        ban = await session.get(Ban, (conversation_id, user_id))
        if ban is None:
            ban = Ban(conversation_id=conversation_id, user_id=user_id, created_at=now)
        ban.banned_by = viewer.user_id
        ban.expires_at = expires_at
        session.add(ban)
        until = expires_at.isoformat() if expires_at is not None else None
        stage(
            session,
            "member.banned",
            {"conversation_id": conversation_id, "user_id": user_id, "actor_id": viewer.user_id, "until": until},
        )
        if target is None:
            await session.flush()
            return None, []
        await session.delete(target)
        await session.flush()
        appended = await _announce(
            session,
            conversation_id,
            Change.MEMBER_REMOVED,
            actor_id=viewer.user_id,
            users=[user_id],
            also_notify=[user_id],
        )
        return None, appended

    await commit_then_publish(services, work)
    log.info("user %s banned user %s from group %s", viewer.user_id, user_id, conversation_id)


async def unban_member(services: Services, viewer: Viewer, *, conversation_id: int, user_id: int) -> None:
    """Ends a user's ban from a group (OWNER or ADMIN); they may then be added or join again. Idempotent."""

    async def work(session: AsyncSession) -> None:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        if await session.get(Ban, (conversation_id, user_id)) is None:
            return
        await spend_moderation(services, viewer)
        await session.execute(
            delete(Ban).where(col(Ban.conversation_id) == conversation_id, col(Ban.user_id) == user_id)
        )

    await services.db.transaction(work)
    log.info("user %s unbanned user %s from group %s", viewer.user_id, user_id, conversation_id)


async def list_bans(services: Services, viewer: Viewer, *, conversation_id: int) -> list[BanView]:
    """A group's bans in force (OWNER or ADMIN), newest first; at most `MAX_LISTED`."""

    async with services.db.session() as session:
        # A read: no lock on the conversation row (which every send takes).
        _require_manager(await membership(session, conversation_id, viewer.user_id))
        now = services.clock()
        rows = (
            await session.execute(
                select(Ban)
                .where(
                    col(Ban.conversation_id) == conversation_id,
                    col(Ban.expires_at).is_(None) | (col(Ban.expires_at) > now),
                )
                .order_by(col(Ban.created_at).desc(), col(Ban.user_id))
                .limit(MAX_LISTED)
            )
        ).scalars()
        return [BanView(b.user_id, b.banned_by, b.created_at, b.expires_at) for b in rows]
