"""Acknowledgements and receipts: DELIVERED on a device's acknowledge, READ on markRead.

Receipts are watermarks per (conversation, sender, reader): one receipt covers
every earlier message of that sender there (`resolvers/watermarks.py`). Each is a
durable event in the sender's inbox, so a sender who is offline gets it later.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.conversations import membership
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ids import MessageIds, MessageRef, parse_cursor
from resolvers.inbox import Appended
from resolvers.notice_codec import encode_receipt
from resolvers.publish import publish_entries_best_effort
from resolvers.services import Services
from resolvers.watermarks import advance_watermarks

MAX_MARK_READ = 100


async def acknowledge(services: Services, viewer: Viewer, cursor: str) -> None:
    """Moves the device past `cursor` (and everything before it), prunes, emits DELIVERED.

    Acknowledging a position at or below the current one changes nothing. The
    receipts are committed with the acknowledgement and announced after it; the
    messages every device now has are deleted before this returns.
    """
    seq = parse_cursor(cursor)
    outcome = await services.inbox_store.acknowledge(
        user_id=viewer.user_id, device_id=viewer.device_id, seq=seq, at=utcnow()
    )
    if outcome.acked_before is None:
        raise Unauthenticated("This device has logged out.")
    if seq > outcome.acked_before and seq > outcome.head:
        raise BadUserInput("That cursor is ahead of every event of this device.")
    await _publish_receipts(services, outcome.receipts)
    await services.inbox_store.delete_orphans(outcome.pruned_messages)


async def mark_read(
    services: Services,
    viewer: Viewer,
    ids: MessageIds,
    *,
    conversation_id: int,
    message_ids: Sequence[str],
) -> None:
    """Emits READ watermarks to the senders of these messages (the newest per sender counts)."""
    if not 1 <= len(message_ids) <= MAX_MARK_READ:
        raise BadUserInput(f"markRead takes 1 to {MAX_MARK_READ} message ids.")
    refs = [ids.decode(value) for value in message_ids]
    if any(ref.conversation_id != conversation_id for ref in refs):
        raise BadUserInput("Every message must belong to the conversation named.")
    newest: dict[int, MessageRef] = {}
    for ref in refs:
        best = newest.get(ref.sender_id)
        if ref.sender_id != viewer.user_id and (best is None or ref.message_id > best.message_id):
            newest[ref.sender_id] = ref

    async def work(session: AsyncSession) -> list[tuple[Appended, str]]:
        await membership(session, conversation_id, viewer.user_id)
        return await advance_watermarks(session, viewer.user_id, list(newest.values()), "READ", at=utcnow())

    appended = await services.db.transaction(work)
    await _publish_receipts(services, [(entry.user_id, entry.seq, payload) for entry, payload in appended])


async def _publish_receipts(services: Services, receipts: Sequence[tuple[int, int, str]]) -> None:
    """Publishes committed receipts, each carrying its payload."""
    await publish_entries_best_effort(
        services,
        [(user_id, seq, index) for index, (user_id, seq, _) in enumerate(receipts)],
        [encode_receipt(payload) for _, _, payload in receipts],
    )
