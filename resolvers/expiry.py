"""Expiry of disappearing messages: never delivered after `expires_at`, and removed from the server then.

Delivery checks the time itself (`is_expired`, against the services' clock): a replay and
a live stream drop an expired message (resolvers/events.py), and the push worker skips it
(resolvers/push.py). `sweep_expired` then removes what is left, in bounded batches: the
message row (its body and attachments' metadata) with every inbox entry naming it, the
pending edits, reactions and deletes about it (their payloads may carry its text), and its
attachments' stored objects and records. An inbox that loses entries this way has a gap
in its positions, which every reader tolerates: replays read "the entries after N" and
acknowledgements move past positions whether or not an entry is still there.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Attachment, EventKind, InboxEntry, Mention, Message, SentKey, UploadState
from resolvers import file_store
from resolvers.services import Services

log = logging.getLogger("parley.expiry")

# Messages removed per transaction (and per storage round trip of their files).
EXPIRY_BATCH = 200
_LIFECYCLE_KINDS = (EventKind.EDIT, EventKind.DELETE, EventKind.REACTION)


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Whether a message with this expiry may no longer be delivered."""
    return expires_at is not None and expires_at <= now


async def _expire_batch(session: AsyncSession, now: datetime) -> tuple[int, list[tuple[int, list[str]]]]:
    """Removes up to a batch of expired messages; returns how many, and their uploads' (id, object keys)."""
    ids: list[int] = [
        message_id
        for message_id in (
            await session.execute(
                select(col(Message.id))
                .where(col(Message.expires_at) <= now)
                .order_by(col(Message.expires_at))
                .limit(EXPIRY_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        if message_id is not None
    ]
    if not ids:
        return 0, []
    # Marked as the retention job marks files past retention: no URL is minted for them any more,
    # and should deleting the objects fail below, that job deletes them later.
    await session.execute(
        update(Attachment)
        .where(col(Attachment.message_id).in_(ids))
        .values(state=UploadState.DELETING)
        .execution_options(synchronize_session=False)
    )
    uploads = await file_store.being_deleted(session, message_ids=ids)
    # Lifecycle payloads start with their message's id (resolvers/lifecycle.py): an edit carries the text.
    prefixes = [col(InboxEntry.payload).startswith(f'{{"m":{message_id},', autoescape=True) for message_id in ids]
    await session.execute(
        delete(InboxEntry)
        .where(col(InboxEntry.kind).in_(_LIFECYCLE_KINDS), or_(*prefixes))
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(InboxEntry).where(col(InboxEntry.message_id).in_(ids)).execution_options(synchronize_session=False)
    )
    await session.execute(delete(Message).where(col(Message.id).in_(ids)).execution_options(synchronize_session=False))
    # Remembered on the send's record as a delete is: an edit or reaction after this is NOT_FOUND,
    # and markRead's recount of unread messages and mentions leaves it out.
    await session.execute(
        update(SentKey)
        .where(col(SentKey.message_id).in_(ids), col(SentKey.deleted_at).is_(None))
        .values(deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(Mention).where(col(Mention.message_id).in_(ids)).execution_options(synchronize_session=False)
    )
    return len(ids), uploads


async def sweep_expired(services: Services, *, now: datetime) -> int:
    """Removes every message expired by `now`, its entries and its files; returns how many messages."""
    removed = 0
    while True:
        count, uploads = await services.db.transaction(functools.partial(_expire_batch, now=now))
        if uploads and services.files is not None:
            await services.files.delete([key for _, keys in uploads for key in keys])
            ids = [upload_id for upload_id, _ in uploads]
            await services.db.transaction(functools.partial(file_store.forget, ids=ids))
        removed += count
        if count < EXPIRY_BATCH:
            break
    if removed:
        log.info("expiry removed %d disappearing messages", removed)
    return removed
