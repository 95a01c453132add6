"""Disappearing messages: a conversation's timer, which every message sent while it is on carries.

The send reads the timer in its own statement, under the conversation row's lock, so a
message carries exactly the timer that was on when it was stored: a change waits for
sends in flight and the other way round (the lock order of every writer: conversation
row, member rows, inbox heads). Messages sent before a change keep what they had.

Who may change it: either member of a direct conversation, an OWNER or ADMIN of a group (any
member once the group's onlyAdminsEdit is off, resolvers/moderation.py).
The change is a durable `ConversationEvent` (DISAPPEARING_TIMER_CHANGED) for every
member; in a direct conversation a member who blocked the actor is not told (the rule of
every other event there, resolvers/blocks.py). Expiry itself is resolvers/expiry.py.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from models import Conversation, ConversationKind, EventKind
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.blocks import blockers_among
from resolvers.conversations import Change, ConversationHeader, member_ids, membership, require_editor
from resolvers.errors import BadUserInput
from resolvers.inbox import Appended, append_events
from resolvers.member_state import MemberState
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend
from resolvers.services import Services

log = logging.getLogger("parley.disappearing")

HOUR = 3600


def check_timer(services: Services, seconds: int | None) -> int | None:
    """The timer as given, or `BadUserInput` outside the configured bounds (None turns it off)."""
    if seconds is None:
        return None
    low, high = services.limits.disappearing_min_seconds, services.limits.disappearing_max_seconds
    if not low <= seconds <= high:
        raise BadUserInput(f"A disappearing-message timer is {low} to {high} seconds, or null to turn it off.")
    return seconds


async def _recipients(session: AsyncSession, conversation: Conversation, actor_id: int) -> list[int]:
    """Every member, less (in a direct conversation) one who blocked the actor."""
    assert conversation.id is not None
    members = await member_ids(session, conversation.id)
    if conversation.kind is not ConversationKind.DIRECT:
        return members
    blockers = set(await blockers_among(session, actor_id, members))
    return [uid for uid in members if uid not in blockers]


async def set_disappearing_timer(
    services: Services, viewer: Viewer, *, conversation_id: int, seconds: int | None
) -> ConversationHeader:
    """Sets (or, with None, turns off) the conversation's timer for messages sent from now on.

    `NotFound` for non-members, `Forbidden` for a plain member of a group; a change counts
    against an hourly limit, setting the value it already has changes nothing.
    """
    timer = check_timer(services, seconds)

    async def work(session: AsyncSession) -> tuple[ConversationHeader, list[Appended]]:
        # The conversation row first (the lock order of sends), then membership as of that lock.
        conversation = await session.get(Conversation, conversation_id, with_for_update={"key_share": True})
        me = await membership(session, conversation_id, viewer.user_id)
        assert conversation is not None  # a member's conversation exists
        if conversation.kind is ConversationKind.GROUP:
            require_editor(conversation, me)
        state = MemberState.of(me, services.clock())
        header = ConversationHeader(conversation, muted=state.muted, is_member=True, state=state)
        if conversation.disappear_after_seconds == timer:
            return header, []
        limit = services.limits.disappearing_timer_changes_per_hour
        await spend(
            services,
            f"disappearing:{viewer.user_id}",
            limit=limit,
            window_seconds=HOUR,
            refusal=f"At most {limit} timer changes an hour; try again later.",
        )
        conversation.disappear_after_seconds = timer
        session.add(conversation)
        await session.flush()
        payload = {
            "change": Change.DISAPPEARING_TIMER_CHANGED,
            "conversation_id": conversation_id,
            "user_ids": [],
            "actor_id": viewer.user_id,
            "at": utcnow().isoformat(),
        }
        recipients = await _recipients(session, conversation, viewer.user_id)
        appended = await append_events(session, recipients, EventKind.CONVERSATION, payload=payload)
        return header, appended

    header = await commit_then_publish(services, work)
    log.info("user %s set the disappearing timer of conversation %s to %s", viewer.user_id, conversation_id, timer)
    return header
