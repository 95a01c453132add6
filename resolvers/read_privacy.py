"""Read-receipt privacy: WhatsApp's reciprocal rule for READ receipts in direct conversations.

A user who turned read receipts off (`setPrivacy(readReceipts: false)`, `users.hide_read_receipts`)
sends no READ receipt in a direct conversation and gets none there either: a READ between
two people is withheld when either of them has it off, judged when the reader marks
messages read. DELIVERED receipts are unaffected, and groups always carry READ receipts.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Conversation, ConversationKind, User
from resolvers.ids import MessageRef


async def withheld_reads(session: AsyncSession, reader_id: int, refs: Sequence[MessageRef]) -> set[MessageRef]:
    """Those of the reader's READ watermarks (`refs`) that the rule withholds."""
    if not refs:
        return set()
    direct = set(
        (
            await session.execute(
                select(col(Conversation.id)).where(
                    col(Conversation.id).in_({ref.conversation_id for ref in refs}),
                    col(Conversation.kind) == ConversationKind.DIRECT,
                )
            )
        ).scalars()
    )
    private = [ref for ref in refs if ref.conversation_id in direct]
    if not private:
        return set()
    hiding = set(
        (
            await session.execute(
                select(col(User.id)).where(
                    col(User.id).in_({reader_id, *(ref.sender_id for ref in private)}),
                    col(User.hide_read_receipts),
                )
            )
        ).scalars()
    )
    if reader_id in hiding:
        return set(private)
    return {ref for ref in private if ref.sender_id in hiding}
