"""Typing indicators: ephemeral, published to the other members and never stored.

Throttled per (user, conversation, state): within `typing_interval_seconds` one
`typing: true` and one `typing: false` are passed on; repeats are accepted but
dropped (clients resend `true` while the user keeps typing). So alternating
true/false in a loop reaches the other members at most twice per interval. In a
direct conversation, a member who blocked the viewer gets nothing.
"""

from __future__ import annotations

import logging
import math

from sqlalchemy import exists, select
from sqlmodel import col

from models import Block, Conversation, ConversationKind, Member
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.errors import NotFound
from resolvers.moderation import require_voice
from resolvers.notice_codec import typing_signal
from resolvers.publish import publish_signal_best_effort
from resolvers.services import Services

log = logging.getLogger("parley.typing")


async def set_typing(services: Services, viewer: Viewer, *, conversation_id: int, typing: bool) -> None:
    """Tells the other members the viewer is (or stopped) typing; best effort, throttled."""
    blocked_direct = (
        exists()
        .where(
            col(Block.blocker_id) == col(Member.user_id),
            col(Block.blocked_id) == viewer.user_id,
            col(Conversation.kind) == ConversationKind.DIRECT,
        )
        .label("blocked")
    )
    async with services.db.session() as session:
        rows = (
            await session.execute(
                select(col(Member.user_id), blocked_direct)
                .join(Conversation, col(Conversation.id) == col(Member.conversation_id))
                .where(col(Member.conversation_id) == conversation_id)
            )
        ).all()
        # Nobody types in a frozen conversation, nor a member muted there (resolvers/moderation.py).
        await require_voice(session, conversation_id, viewer.user_id, services.clock())
    if all(user_id != viewer.user_id for user_id, _ in rows):
        raise NotFound("No such conversation.")
    if not await _first_in_interval(services, viewer, conversation_id, typing):
        return
    others = [user_id for user_id, blocked in rows if user_id != viewer.user_id and not blocked]
    signal = typing_signal(conversation_id=conversation_id, user_id=viewer.user_id, typing=typing, at=utcnow())
    await publish_signal_best_effort(services, others, signal)


async def _first_in_interval(services: Services, viewer: Viewer, conversation_id: int, typing: bool) -> bool:
    interval = services.limits.typing_interval_seconds
    if interval <= 0:
        return True
    key = f"typing:{viewer.user_id}:{conversation_id}:{int(typing)}"
    try:
        hits = await services.rate_limiter.hit(key, window_seconds=math.ceil(interval))
    except Exception:
        log.warning("typing throttle unchecked for user %s", viewer.user_id, exc_info=True)
        return True
    return hits == 1
