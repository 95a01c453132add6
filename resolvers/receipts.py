"""Acknowledgements and receipts: DELIVERED on a device's acknowledge, READ on markRead.

Receipts are watermarks per (conversation, sender, reader): one receipt covers
every earlier message of that sender there (`resolvers/watermarks.py`). Each is a
durable event in the sender's inbox, so a sender who is offline gets it later.
markRead also moves the reader's own read position and unread badges (`resolvers/unread.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ids import MessageIds, MessageRef, parse_cursor
from resolvers.inbox import Appended
from resolvers.notice_codec import encode_receipt
from resolvers.publish import publish_entries_best_effort
from resolvers.services import Services
from resolvers.unread import ReadPosition, announce_read_state, has_other_device, read_up_to
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
) -> ReadPosition:
    """The viewer has read up to the newest of these messages: READ watermarks, badges, other devices.

    Emits READ watermarks to the senders (the newest per sender counts), moves the viewer's
    read position (never back) and recounts their unread counters (resolvers/unread.py), and,
    when that changed anything and the viewer has another device, appends a READ_STATE event
    to their own inbox: every device of theirs gets it, the reading one included (it carries
    absolute values, so applying it twice changes nothing).
    """
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
    read = max(refs, key=lambda ref: ref.message_id)

    async def work(session: AsyncSession) -> tuple[ReadPosition, list[tuple[Appended, str]], list[Appended]]:
        now = utcnow()
        # The member row first (the lock order: member rows, then inbox heads); NotFound for non-members.
        position = await read_up_to(session, viewer, conversation_id, read)
        tell_devices = position.changed and await has_other_device(session, viewer)
        # Inbox heads in user id order, the reader's among the senders': each receipt's watermark
        # is written before its sender's head, as an acknowledgement writes them.
        lower = [ref for ref in newest.values() if ref.sender_id < viewer.user_id]
        higher = [ref for ref in newest.values() if ref.sender_id > viewer.user_id]
        receipts = await advance_watermarks(session, viewer.user_id, lower, "READ", at=now)
        state = await announce_read_state(session, viewer, position, at=now) if tell_devices else []
        receipts += await advance_watermarks(session, viewer.user_id, higher, "READ", at=now)
        return position, receipts, state

    position, appended, state = await services.db.transaction(work)
    await _publish_receipts(services, [(entry.user_id, entry.seq, payload) for entry, payload in appended])
    await publish_entries_best_effort(services, [(entry.user_id, entry.seq, 0) for entry in state], [None])
    return position


async def _publish_receipts(services: Services, receipts: Sequence[tuple[int, int, str]]) -> None:
    """Publishes committed receipts, each carrying its payload."""
    await publish_entries_best_effort(
        services,
        [(user_id, seq, index) for index, (user_id, seq, _) in enumerate(receipts)],
        [encode_receipt(payload) for _, _, payload in receipts],
    )
