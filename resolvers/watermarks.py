"""Receipt watermarks: how far each reader has received and read each sender's messages.

A watermark is per (conversation, sender, reader) and only moves forward; each
move appends one RECEIPT entry to the sender's inbox, routed by the sender inside
the message reference, never by the message row (which may be gone).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import EventKind, ReceiptWatermark, User
from resolvers.ids import MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.read_privacy import withheld_reads

log = logging.getLogger("parley.receipts")

Status = Literal["DELIVERED", "READ"]


def receipt_payload(ref: MessageRef, *, reader_id: int, reader: User | None, status: Status, at: datetime) -> str:
    """The stored JSON of a receipt (the PostgreSQL acknowledge statement writes the same keys)."""
    data: dict[str, Any] = {
        "conversation_id": ref.conversation_id,
        "message": ref.message_id,
        "sender_id": ref.sender_id,
        "reader_id": reader_id,
        "reader_username": reader.username if reader else None,
        "reader_display_name": reader.display_name if reader else None,
        "status": status,
        "at": at.isoformat(),
    }
    return json.dumps(data, separators=(",", ":"))


async def advance_watermarks(
    session: AsyncSession,
    reader_id: int,
    refs: Sequence[MessageRef],
    status: Status,
    *,
    at: datetime,
) -> list[tuple[Appended, str]]:
    """Raises each (conversation, sender, reader) watermark to `ref`; returns the receipts appended.

    READ watermarks the reader's or a sender's privacy withholds (resolvers/read_privacy.py)
    neither move nor emit a receipt.
    """
    if status == "READ" and (withheld := await withheld_reads(session, reader_id, refs)):
        refs = [ref for ref in refs if ref not in withheld]
    appended: list[tuple[Appended, str]] = []
    column = col(ReceiptWatermark.delivered_upto) if status == "DELIVERED" else col(ReceiptWatermark.read_upto)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    reader = (
        (await session.execute(select(User).where(col(User.id) == reader_id))).scalar_one_or_none() if refs else None
    )
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
        payload = receipt_payload(ref, reader_id=reader_id, reader=reader, status=status, at=at)
        entries = await append_events(session, [ref.sender_id], EventKind.RECEIPT, payload_text=payload)
        appended += [(entry, payload) for entry in entries]
        log.info("%s receipt: user %s up to message %s of user %s", status, reader_id, ref.message_id, ref.sender_id)
    return appended
