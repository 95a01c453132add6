"""Retention of uploaded files: objects outlive their message for a while, then go.

A message is deleted once every device has it (store and forward), but recipients may
still download its files: the objects stay for the retention period after the message
is gone, counted from when this job first sees it gone. An upload never attached goes
after a grace period. Safe on every process at once: marking and deleting are
idempotent, and a record is forgotten only after its objects are deleted, so a crash in
between leaves work for the next run, never an orphaned object.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers import file_store
from resolvers.services import Services

log = logging.getLogger("parley.files")

# Objects deleted per storage round trip and per loop of the job.
DELETE_BATCH = 500


@dataclass(frozen=True)
class RetentionResult:
    released: int
    deleted: int


async def sweep_files(services: Services, *, now: datetime) -> RetentionResult:
    """Starts the clock for files of delivered messages, and deletes what is past retention."""
    if services.files is None:
        return RetentionResult(0, 0)
    config = services.file_config

    async def mark(session: AsyncSession) -> int:
        released = await file_store.release_delivered(session, now)
        await file_store.mark_expired(
            session,
            released_before=now - timedelta(seconds=config.retention_seconds),
            created_before=now - timedelta(seconds=config.unattached_seconds),
        )
        return released

    released = await services.db.transaction(mark)
    deleted = 0
    while True:
        async with services.db.session() as session:
            batch = await file_store.being_deleted(session, limit=DELETE_BATCH)
        if not batch:
            break
        await services.files.delete([key for _, keys in batch for key in keys])

        ids = [upload_id for upload_id, _ in batch]
        await services.db.transaction(functools.partial(file_store.forget, ids=ids))
        deleted += len(batch)
        if len(batch) < DELETE_BATCH:
            break
    if released or deleted:
        log.info("file retention: %d files of delivered messages now retained, %d deleted", released, deleted)
    return RetentionResult(released, deleted)
