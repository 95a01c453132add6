"""Typing indicators: ephemeral, published to the other members and never stored."""

from __future__ import annotations

from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.conversations import member_ids, membership
from resolvers.notify import notify_best_effort
from resolvers.ports import Services


async def set_typing(services: Services, viewer: Viewer, *, conversation_id: int, typing: bool) -> None:
    """Tells the other members the viewer is (or stopped) typing; best effort."""
    async with services.db.session() as session:
        await membership(session, conversation_id, viewer.user_id)
        others = [uid for uid in await member_ids(session, conversation_id) if uid != viewer.user_id]
    event = {
        "conversation_id": conversation_id,
        "user_id": viewer.user_id,
        "typing": typing,
        "at": utcnow().isoformat(),
    }
    await notify_best_effort(services, others, {"typing": event})
