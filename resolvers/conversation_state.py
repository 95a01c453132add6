"""A member's own view of a conversation (mute for good or until a time, archive, pin) and notification preferences.

Each change is the viewer's alone: nobody else is told, and only their own member row
(or account row) is written. A mute until a time ends by itself: it is compared with the
time of each read, push decision and send, so no sweeper clears it. A new message brings
a conversation back from the archive (the send statement clears `archived` for its
recipients). Pins are bounded per user (`max_pinned_conversations`); the viewer's account
row is locked while counting them, so concurrent pins cannot pass the bound. Every change
counts against the viewer's hourly `conversation_settings_per_hour`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Member, User
from resolvers.accounts import Viewer, update_own_account
from resolvers.conversations import ConversationView, view_of
from resolvers.errors import BadUserInput, NotFound
from resolvers.rate_limits import spend
from resolvers.services import Services

log = logging.getLogger("parley.conversation_state")

# A mute with an end is for a while; longer than this, mute for good instead.
MAX_MUTE = timedelta(days=366)
HOUR = 3600


async def _spend(services: Services, viewer: Viewer) -> None:
    limit = services.limits.conversation_settings_per_hour
    await spend(
        services,
        f"conversation-settings:{viewer.user_id}",
        limit=limit,
        window_seconds=HOUR,
        refusal=f"At most {limit} changes of conversation settings an hour; try again later.",
    )


async def _write_own(session: AsyncSession, viewer: Viewer, conversation_id: int, **values: Any) -> None:
    """Writes the viewer's member row; `NotFound` for non-members, as for a missing conversation."""
    written = await session.execute(
        update(Member)
        .where(col(Member.conversation_id) == conversation_id, col(Member.user_id) == viewer.user_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not written.rowcount:  # type: ignore[attr-defined]
        raise NotFound("No such conversation.")


async def mute_conversation(
    services: Services, viewer: Viewer, *, conversation_id: int, muted: bool, until: datetime | None = None
) -> ConversationView:
    """Mutes push notifications of a conversation for the viewer: for good, or until `until` (then by itself)."""
    now = services.clock()
    if until is not None:
        if not muted:
            raise BadUserInput("`until` goes with muted: true.")
        if until.tzinfo is None:
            raise BadUserInput("`until` needs a time zone.")
        if not now < until <= now + MAX_MUTE:
            raise BadUserInput(f"`until` is in the future, at most {MAX_MUTE.days} days ahead.")
    await _spend(services, viewer)
    # A mute with an end keeps `muted` false: once the end passes, nothing is left to undo.
    values = {"muted": muted and until is None, "muted_until": until if muted else None}

    async def work(session: AsyncSession) -> ConversationView:
        await _write_own(session, viewer, conversation_id, **values)
        return await view_of(session, conversation_id, viewer.user_id, now=now)

    view = await services.db.transaction(work)
    log.info("user %s muted conversation %s: %s until %s", viewer.user_id, conversation_id, muted, until)
    return view


async def archive_conversation(
    services: Services, viewer: Viewer, *, conversation_id: int, archived: bool
) -> ConversationView:
    """Archives (or brings back) a conversation for the viewer; archiving unpins it. A new message brings it back."""
    await _spend(services, viewer)
    values: dict[str, Any] = {"archived": archived, **({"pinned_at": None} if archived else {})}

    async def work(session: AsyncSession) -> ConversationView:
        await _write_own(session, viewer, conversation_id, **values)
        return await view_of(session, conversation_id, viewer.user_id, now=services.clock())

    return await services.db.transaction(work)


async def pin_conversation(
    services: Services, viewer: Viewer, *, conversation_id: int, pinned: bool
) -> ConversationView:
    """Pins (or unpins) a conversation at the top of the viewer's list; pinning takes it out of the archive.

    At most `max_pinned_conversations` at once (`BadUserInput` beyond); pinning a pinned one changes nothing.
    """
    await _spend(services, viewer)
    limit = services.limits.max_pinned_conversations
    now = services.clock()

    async def work(session: AsyncSession) -> ConversationView:
        if not pinned:
            await _write_own(session, viewer, conversation_id, pinned_at=None)
            return await view_of(session, conversation_id, viewer.user_id, now=now)
        # A write of the account row first (as a send's first statement): on PostgreSQL it locks the
        # row, so one user's pins take turns; on SQLite it takes the write lock. The count then holds.
        await session.execute(
            update(User)
            .where(col(User.id) == viewer.user_id)
            .values(push_mentions_when_muted=col(User.push_mentions_when_muted))
            .execution_options(synchronize_session=False)
        )
        # Columns, not the row as an object: the view below must read the row as written.
        found = (
            await session.execute(
                select(col(Member.user_id), col(Member.pinned_at)).where(
                    col(Member.conversation_id) == conversation_id, col(Member.user_id) == viewer.user_id
                )
            )
        ).one_or_none()
        if found is None:
            raise NotFound("No such conversation.")
        if found.pinned_at is None:
            count = await session.scalar(
                select(func.count()).where(col(Member.user_id) == viewer.user_id, col(Member.pinned_at).is_not(None))
            )
            if (count or 0) >= limit:
                raise BadUserInput(f"At most {limit} conversations can be pinned; unpin one first.")
            await _write_own(session, viewer, conversation_id, pinned_at=now, archived=False)
        return await view_of(session, conversation_id, viewer.user_id, now=now)

    return await services.db.transaction(work)


async def set_notification_preferences(services: Services, viewer: Viewer, *, push_mentions_when_muted: bool) -> User:
    """Stores whether a mention is pushed even in a muted conversation; returns the viewer's account."""
    await _spend(services, viewer)
    return await update_own_account(services, viewer, push_mentions_when_muted=push_mentions_when_muted)
