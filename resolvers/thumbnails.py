"""Thumbnails of image attachments, made off the request path by a worker.

Checking an image marks it (PENDING); once a send has attached it, the send wakes the
workers over the bus. Each worker takes `thumbnail_concurrency` (one by default: decoding
an image takes a lot of memory) with `SKIP LOCKED`, so any number of them share the work.
A worker that dies leaves its claims WORKING; they are taken over once stale. Until a
thumbnail exists, `Attachment.thumbnailUrl` is null.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from models import Attachment, ThumbnailState
from models.columns import utcnow
from resolvers import file_store
from resolvers.files import THUMBNAIL_CHANNEL
from resolvers.ports import ImageError
from resolvers.services import Services

log = logging.getLogger("parley.thumbnails")

# Claims older than this belong to a worker that died (a thumbnail takes well under a second).
STALE_CLAIM = timedelta(minutes=5)


async def make_pending_thumbnails(services: Services) -> int:
    """Makes the thumbnails waiting now, a few at a time; returns how many it handled."""
    if services.files is None or services.thumbnailer is None:
        return 0
    config = services.file_config
    handled = 0

    async def claim(session: AsyncSession) -> list[Attachment]:
        now = utcnow()
        return await file_store.claim_thumbnail_work(
            session,
            now=now,
            stale_before=now - STALE_CLAIM,
            max_attempts=config.thumbnail_max_attempts,
            limit=config.thumbnail_concurrency,
        )

    while True:
        claimed = await services.db.transaction(claim)
        if not claimed:
            return handled
        await asyncio.gather(*(_thumbnail(services, upload) for upload in claimed))
        handled += len(claimed)


async def _thumbnail(services: Services, upload: Attachment) -> None:
    assert upload.id is not None
    assert services.files is not None
    assert services.thumbnailer is not None
    config = services.file_config
    key = f"{upload.storage_key}.preview"
    # The checked copy recipients download (uploads attached before copies were made have none).
    source = upload.checked_key or upload.storage_key
    state, stored_key = ThumbnailState.FAILED, None
    try:
        data = await services.files.read(source, limit=config.thumbnail_max_source_bytes + 1)
        if len(data) > config.thumbnail_max_source_bytes:
            log.info("upload %s: too large for a thumbnail (%d bytes or more)", upload.id, len(data))
        else:
            preview = await services.thumbnailer.thumbnail(data)
            await services.files.write(key, preview, content_type=services.thumbnailer.content_type)
            state, stored_key = ThumbnailState.DONE, key
    except ImageError as error:
        log.info("upload %s: no thumbnail (%s)", upload.id, error)
    except FileNotFoundError:
        log.info("upload %s: gone before its thumbnail was made", upload.id)
    except Exception:
        # Storage trouble: try again later, a few times.
        retry = upload.thumbnail_attempts < config.thumbnail_max_attempts
        state = ThumbnailState.PENDING if retry else ThumbnailState.FAILED
        log.warning("upload %s: thumbnail failed%s", upload.id, ", will retry" if retry else "", exc_info=True)

    async def finish(session: AsyncSession) -> None:
        assert upload.id is not None
        await file_store.finish_thumbnail(session, upload.id, state=state, key=stored_key)

    await services.db.transaction(finish)


async def run_thumbnail_worker(services: Services, stop: asyncio.Event, *, poll_seconds: float) -> None:
    """Makes thumbnails until `stop`: woken by sends over the bus, and every `poll_seconds` regardless."""
    wake = asyncio.Event()

    async def listen() -> None:
        while not stop.is_set():
            try:
                async with services.bus.subscribe(THUMBNAIL_CHANNEL) as notices:
                    wake.set()  # (re)subscribed: look for what was announced meanwhile
                    async for _notice in notices:
                        wake.set()
            except Exception:
                log.warning("thumbnail wake-ups lost; polling every %.0f s", poll_seconds, exc_info=True)
                await asyncio.sleep(min(poll_seconds, 5))

    listener = asyncio.create_task(listen())
    try:
        while not stop.is_set():
            wake.clear()  # before the pass: a wake-up during it means another pass
            try:
                await make_pending_thumbnails(services)
            except Exception:
                log.exception("thumbnail pass failed; trying again in %.0f s", poll_seconds)
            stopping = asyncio.create_task(stop.wait())
            woken = asyncio.create_task(wake.wait())
            await asyncio.wait({stopping, woken}, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopping, woken):
                task.cancel()
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
