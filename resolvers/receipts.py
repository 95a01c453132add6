"""Acknowledgements and receipts: DELIVERED on a device's acknowledge, READ on markRead.

Receipts are watermarks per (conversation, sender, reader): one receipt covers
every earlier message of that sender there. Each is a durable event in the
sender's inbox, so a sender who is offline gets it later; it is routed by the
sender inside the message id, never by the message row, which may be gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, EventKind, InboxEntry, Message, ReceiptWatermark
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.conversations import membership
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ids import MessageIds, MessageRef, parse_cursor
from resolvers.inbox import Appended, append_events, head_position, prune_inbox
from resolvers.notify import commit_then_publish
from resolvers.ports import Services

log = logging.getLogger("parley.receipts")

Status = Literal["DELIVERED", "READ"]
MAX_MARK_READ = 100


async def acknowledge(services: Services, viewer: Viewer, ids: MessageIds, cursor: str) -> None:
    """Moves the device past `cursor` (and everything before it), prunes, emits DELIVERED.

    Acknowledging a position at or below the current one changes nothing.
    """
    seq = parse_cursor(cursor)

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        device = await session.get(Device, viewer.device_id, with_for_update=True)
        if device is None:
            raise Unauthenticated("This device has logged out.")
        if seq <= device.acked_seq:
            return None, []
        if seq > await head_position(session, viewer.user_id):
            raise BadUserInput("That cursor is ahead of every event of this device.")
        covered = (
            await session.execute(
                select(col(Message.conversation_id), col(Message.sender_id), func.max(col(Message.id)))
                .join(InboxEntry, col(InboxEntry.message_id) == col(Message.id))
                .where(
                    col(InboxEntry.user_id) == viewer.user_id,
                    col(InboxEntry.seq) > device.acked_seq,
                    col(InboxEntry.seq) <= seq,
                    col(Message.sender_id) != viewer.user_id,
                )
                .group_by(col(Message.conversation_id), col(Message.sender_id))
            )
        ).all()
        device.acked_seq = seq
        session.add(device)
        await session.flush()
        refs = [MessageRef(mid, cid, sid) for cid, sid, mid in covered if mid is not None]
        appended = await _advance(session, ids, viewer.user_id, refs, "DELIVERED")
        await prune_inbox(session, [viewer.user_id])
        return None, appended

    await commit_then_publish(services, work)


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

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        await membership(session, conversation_id, viewer.user_id)
        return None, await _advance(session, ids, viewer.user_id, list(newest.values()), "READ")

    await commit_then_publish(services, work)


async def _advance(
    session: AsyncSession,
    ids: MessageIds,
    reader_id: int,
    refs: Sequence[MessageRef],
    status: Status,
) -> list[Appended]:
    """Raises each (conversation, sender, reader) watermark to `ref`, and tells the sender when it moved."""
    appended: list[Appended] = []
    column = col(ReceiptWatermark.delivered_upto) if status == "DELIVERED" else col(ReceiptWatermark.read_upto)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for ref in sorted(refs, key=lambda r: (r.sender_id, r.conversation_id)):
        await session.execute(
            insert(ReceiptWatermark)
            .values(conversation_id=ref.conversation_id, sender_id=ref.sender_id, reader_id=reader_id)
            .on_conflict_do_nothing()
        )
        # A conditional update: only the first acknowledgement that moves the mark emits a receipt.
        moved = await session.execute(
            update(ReceiptWatermark)
            .where(
                col(ReceiptWatermark.conversation_id) == ref.conversation_id,
                col(ReceiptWatermark.sender_id) == ref.sender_id,
                col(ReceiptWatermark.reader_id) == reader_id,
                column < ref.message_id,
            )
            .values({column: ref.message_id})
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            continue
        payload = {
            "conversation_id": ref.conversation_id,
            "message_id": ids.encode(ref),
            "reader_id": reader_id,
            "status": status,
            "at": utcnow().isoformat(),
        }
        appended += await append_events(session, [ref.sender_id], EventKind.RECEIPT, payload=payload)
        log.info(
            "%s receipt: user %s up to message %s of user %s",
            status,
            reader_id,
            ref.message_id,
            ref.sender_id,
        )
    return appended
