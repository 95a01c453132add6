"""Group moderation: muting members, a group's send rules (announcement, slow mode), frozen conversations.

The rules of a send are checked in the send's own statement (infra/pg_inbox_store.py, and
infra/sql_inbox_store.py by `refusal_of`), under the conversation row's lock every send and
every change here takes first, so a change holds from its commit on, on every process.
Reactions and typing check `require_voice` in a plain query. "Silenced" is the code's word
for a member muted by an owner or admin (`muteMember`), apart from a member's own mute.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Conversation, EventKind, Member, MemberRole
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.conversations import MANAGERS, ConversationHeader, _group, announce, member_ids
from resolvers.errors import BadUserInput, Forbidden, NotFound, RateLimited
from resolvers.inbox import Appended, append_events
from resolvers.member_state import MemberState
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend
from resolvers.services import Services
from resolvers.webhooks import stage

log = logging.getLogger("parley.moderation")

HOUR = 3600


class Refusal:
    """Why a send was refused (the send statement's `refusal` column), in the order they are checked."""

    FROZEN = "frozen"
    SILENCED = "silenced"
    ADMINS_ONLY = "admins_only"
    SLOW_MODE = "slow_mode"


class ModerationChange:
    """The `ConversationChange` values of this module."""

    SETTINGS_CHANGED = "SETTINGS_CHANGED"
    MEMBER_MUTED = "MEMBER_MUTED"
    MEMBER_UNMUTED = "MEMBER_UNMUTED"
    FROZEN = "FROZEN"
    UNFROZEN = "UNFROZEN"


FROZEN_MESSAGE = "This conversation is frozen."
# The actor of an operator's change (FROZEN, UNFROZEN): no user.
OPERATOR_ACTOR = 0


class SlowModeLimited(RateLimited):
    """Slow mode: the member's next message is allowed in `retry_after` seconds (also in `extensions`)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Slow mode: you can send your next message here in {retry_after} seconds.")
        self.retry_after = retry_after
        # graphql-core copies an original error's `extensions` into the GraphQL error.
        self.extensions = {"retryAfter": retry_after}


@dataclass(frozen=True, slots=True)
class ConversationSettingsView:
    """A group's moderation settings (updateConversationSettings)."""

    only_admins_send: bool
    only_admins_edit: bool
    slow_mode_seconds: int | None

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationSettingsView:
        """The settings stored on a conversation row."""
        return cls(conversation.only_admins_send, conversation.only_admins_edit, conversation.slow_mode_seconds)


def silenced_now(member: Member, now: datetime) -> bool:
    """Whether an owner or admin has the member muted at `now`."""
    return member.silenced and (member.silenced_until is None or member.silenced_until > now)


def refusal_of(conversation: Conversation, member: Member, now: datetime) -> tuple[str | None, datetime | None]:
    """The send rules, as the PostgreSQL statement applies them: the refusal and when it ends, or (None, None)."""
    if conversation.frozen_at is not None:
        return Refusal.FROZEN, None
    if silenced_now(member, now):
        return Refusal.SILENCED, member.silenced_until
    if conversation.only_admins_send and member.role not in MANAGERS:
        return Refusal.ADMINS_ONLY, None
    if paced(conversation, member) and member.last_sent_at is not None:
        assert conversation.slow_mode_seconds is not None
        next_slot = min(member.last_sent_at.timestamp(), now.timestamp()) + conversation.slow_mode_seconds
        if next_slot > now.timestamp():
            return Refusal.SLOW_MODE, datetime.fromtimestamp(next_slot, tz=now.tzinfo)
    return None, None


def paced(conversation: Conversation, member: Member) -> bool:
    """Whether slow mode applies to this member's sends (owners and admins are exempt)."""
    return conversation.slow_mode_seconds is not None and member.role is MemberRole.MEMBER


def _until_text(until: datetime | None) -> str:
    return "until unmuted" if until is None else f"until {until.isoformat(timespec='seconds')}"


def refusal_error(refusal: str, until: datetime | None, now: datetime) -> Forbidden | RateLimited:
    """The client error of a refused send (FORBIDDEN naming the reason, or RATE_LIMITED with the wait)."""
    if refusal == Refusal.FROZEN:
        return Forbidden(FROZEN_MESSAGE)
    if refusal == Refusal.SILENCED:
        return Forbidden(f"You are muted in this conversation {_until_text(until)}.")
    if refusal == Refusal.ADMINS_ONLY:
        return Forbidden("Only the group's owners and admins can send messages here.")
    wait = 1 if until is None else max(1, math.ceil((until - now).total_seconds()))
    return SlowModeLimited(wait)


async def require_voice(session: AsyncSession, conversation_id: int, user_id: int, now: datetime) -> None:
    """`Forbidden` when the conversation is frozen or the member is muted there (reactions, typing)."""
    row = (
        await session.execute(
            select(col(Conversation.frozen_at), col(Member.silenced), col(Member.silenced_until))
            .join(Member, col(Member.conversation_id) == col(Conversation.id))
            .where(col(Conversation.id) == conversation_id, col(Member.user_id) == user_id)
        )
    ).one_or_none()
    if row is None:
        return  # not a member: the caller answers NOT_FOUND
    frozen_at, silenced, until = row
    if frozen_at is not None:
        raise Forbidden(FROZEN_MESSAGE)
    if silenced and (until is None or until > now):
        raise Forbidden(f"You are muted in this conversation {_until_text(until)}.")


def check_until(services: Services, until: datetime | None, *, what: str) -> datetime | None:
    """A ban's or mute's end: in the future and at most `moderation_max_seconds` ahead, or None (until lifted)."""
    if until is None:
        return None
    if until.tzinfo is None:
        raise BadUserInput(f"{what} needs a time zone (an ISO 8601 time with an offset).")
    ahead = (until - services.clock()).total_seconds()
    limit = services.limits.moderation_max_seconds
    if not 0 < ahead <= limit:
        raise BadUserInput(f"{what} is a time in the future, at most {limit} seconds ahead, or null.")
    return until


async def spend_moderation(services: Services, viewer: Viewer) -> None:
    """Counts one moderation action of the viewer against the hourly limit (`RateLimited` past it)."""
    limit = services.limits.moderation_actions_per_hour
    await spend(
        services,
        f"moderation:{viewer.user_id}",
        limit=limit,
        window_seconds=HOUR,
        refusal=f"At most {limit} moderation actions an hour; try again later.",
    )


async def _target(session: AsyncSession, conversation_id: int, me: Member, user_id: int) -> Member:
    target = await session.get(Member, (conversation_id, user_id))
    if target is None:
        raise NotFound("That user is not a member of this conversation.")
    if target.role is MemberRole.OWNER and me.role is not MemberRole.OWNER:
        raise Forbidden("Only an owner can mute an owner.")
    return target


def _require_manager(me: Member) -> None:
    if me.role not in MANAGERS:
        raise Forbidden("Only the group's owner or an admin can do that.")


async def mute_member(
    services: Services, viewer: Viewer, *, conversation_id: int, user_id: int, until: datetime | None
) -> None:
    """Mutes a member (OWNER or ADMIN; only an owner mutes an owner) until `until` or unmuteMember.

    They keep receiving but cannot send, react or type there; members get MEMBER_MUTED.
    """
    if user_id == viewer.user_id:
        raise BadUserInput("You cannot mute yourself in a group.")
    end = check_until(services, until, what="until")

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        target = await _target(session, conversation_id, me, user_id)
        if target.silenced and target.silenced_until == end:
            return None, []
        await spend_moderation(services, viewer)
        target.silenced = True
        target.silenced_until = end
        session.add(target)
        until = end.isoformat() if end is not None else None
        stage(
            session,
            "member.muted",
            {"conversation_id": conversation_id, "user_id": user_id, "actor_id": viewer.user_id, "until": until},
        )
        await session.flush()
        appended = await announce(
            session, conversation_id, ModerationChange.MEMBER_MUTED, actor_id=viewer.user_id, users=[user_id]
        )
        return None, appended

    await commit_then_publish(services, work)
    log.info("user %s muted user %s in group %s until %s", viewer.user_id, user_id, conversation_id, end)


async def unmute_member(services: Services, viewer: Viewer, *, conversation_id: int, user_id: int) -> None:
    """Lifts a member's mute (OWNER or ADMIN); members get MEMBER_UNMUTED. Idempotent."""

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        target = await session.get(Member, (conversation_id, user_id))
        if target is None:
            raise NotFound("That user is not a member of this conversation.")
        if not target.silenced:
            return None, []
        await spend_moderation(services, viewer)
        target.silenced = False
        target.silenced_until = None
        session.add(target)
        await session.flush()
        appended = await announce(
            session, conversation_id, ModerationChange.MEMBER_UNMUTED, actor_id=viewer.user_id, users=[user_id]
        )
        return None, appended

    await commit_then_publish(services, work)
    log.info("user %s unmuted user %s in group %s", viewer.user_id, user_id, conversation_id)


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What updateConversationSettings changes: None leaves a field as it is (`slow_mode` has its own flag)."""

    only_admins_send: bool | None = None
    only_admins_edit: bool | None = None
    set_slow_mode: bool = False
    slow_mode_seconds: int | None = None


def _check_slow_mode(services: Services, seconds: int | None) -> int | None:
    if seconds is None:
        return None
    limit = services.limits.slow_mode_max_seconds
    if not 1 <= seconds <= limit:
        raise BadUserInput(f"slowModeSeconds is 1 to {limit} seconds, or null to turn slow mode off.")
    return seconds


async def update_conversation_settings(
    services: Services, viewer: Viewer, *, conversation_id: int, change: SettingsChange
) -> ConversationHeader:
    """Changes a group's send and edit rules (OWNER or ADMIN); members get SETTINGS_CHANGED when anything changed."""
    slow = _check_slow_mode(services, change.slow_mode_seconds) if change.set_slow_mode else None

    async def work(session: AsyncSession) -> tuple[ConversationHeader, list[Appended]]:
        conversation, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        before = ConversationSettingsView.of(conversation)
        if change.only_admins_send is not None:
            conversation.only_admins_send = change.only_admins_send
        if change.only_admins_edit is not None:
            conversation.only_admins_edit = change.only_admins_edit
        if change.set_slow_mode:
            conversation.slow_mode_seconds = slow
        state = MemberState.of(me, services.clock())
        header = ConversationHeader(conversation, muted=state.muted, is_member=True, state=state)
        if ConversationSettingsView.of(conversation) == before:
            return header, []
        await spend_moderation(services, viewer)
        session.add(conversation)
        await session.flush()
        appended = await announce(session, conversation_id, ModerationChange.SETTINGS_CHANGED, actor_id=viewer.user_id)
        return header, appended

    header = await commit_then_publish(services, work)
    log.info(
        "user %s set the settings of group %s to %s",
        viewer.user_id,
        conversation_id,
        ConversationSettingsView.of(header.conversation),
    )
    return header


async def freeze_conversation(services: Services, conversation_id: int, frozen: bool) -> datetime | None:
    """The operator freezes (or unfreezes) a conversation: nobody sends, reacts or types there meanwhile.

    Members get FROZEN or UNFROZEN when it changes (the actor is no user); returns when it was
    frozen (None when not). `NotFound` for no such conversation.
    """

    async def work(session: AsyncSession) -> tuple[datetime | None, list[Appended]]:
        # The conversation row first, as every send and change takes it: sends in flight finish first.
        conversation = await session.get(Conversation, conversation_id, with_for_update={"key_share": True})
        if conversation is None:
            raise NotFound(f"No such conversation: {conversation_id}.")
        if (conversation.frozen_at is not None) == frozen:
            return conversation.frozen_at, []
        conversation.frozen_at = services.clock() if frozen else None
        session.add(conversation)
        await session.flush()
        payload = {
            "change": ModerationChange.FROZEN if frozen else ModerationChange.UNFROZEN,
            "conversation_id": conversation_id,
            "user_ids": [],
            "actor_id": OPERATOR_ACTOR,
            "at": utcnow().isoformat(),
        }
        recipients = await member_ids(session, conversation_id)
        appended = await append_events(session, recipients, EventKind.CONVERSATION, payload=payload)
        return conversation.frozen_at, appended

    frozen_at = await commit_then_publish(services, work)
    log.info("operator %s conversation %s", "froze" if frozen else "unfroze", conversation_id)
    return frozen_at
