"""The `attachments` table: upload records, their claims by messages, thumbnails and retention.

Queries only; resolvers/files.py decides what they mean for the API. Claims keep the
lock order of sends (conversation, members, then uploads): `claim_uploads` runs inside
a send's transaction after its membership check.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Attachment, Message, ThumbnailState, UploadState
from resolvers.batches import chunks


async def claim_uploads(
    session: AsyncSession,
    ids: Sequence[int],
    *,
    uploader_id: int,
    conversation_id: int,
    message_id: int,
    opaque: bool = False,
) -> bool:
    """Attaches these checked uploads of `uploader_id` to a message; False (nothing changed) unless all could be.

    Only opaque uploads go to an encrypted conversation (`opaque`), and only there.
    """
    claimable = (
        col(Attachment.id).in_(ids),
        col(Attachment.opaque) == opaque,
        col(Attachment.uploader_id) == uploader_id,
        col(Attachment.state) == UploadState.READY,
        col(Attachment.message_id).is_(None),
    )
    found = (await session.execute(select(col(Attachment.id)).where(*claimable).with_for_update())).scalars().all()
    if len(found) != len(ids):
        return False
    await session.execute(
        update(Attachment)
        .where(*claimable)
        .values(message_id=message_id, conversation_id=conversation_id)
        .execution_options(synchronize_session=False)
    )
    return True


async def uploads_of(session: AsyncSession, uploader_id: int, ids: Sequence[int]) -> dict[int, Attachment]:
    """Those of these uploads that `uploader_id` made, by id."""
    rows = (
        await session.execute(
            select(Attachment).where(col(Attachment.id).in_(ids), col(Attachment.uploader_id) == uploader_id)
        )
    ).scalars()
    return {row.id: row for row in rows if row.id is not None}


async def mark_ready(session: AsyncSession, upload_id: int, *, checked_key: str, size: int, thumbnail: bool) -> bool:
    """Records the checked copy of an upload; False when another check came first or retention took it."""
    result = await session.execute(
        update(Attachment)
        .where(
            col(Attachment.id) == upload_id,
            col(Attachment.checked_key).is_(None),
            # READY without a copy: checked before copies were made, so checked again.
            col(Attachment.state).in_([UploadState.PENDING, UploadState.READY]),
        )
        .values(
            state=UploadState.READY,
            checked_key=checked_key,
            size=size,
            thumbnail_state=ThumbnailState.PENDING if thumbnail else None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0) == 1  # type: ignore[attr-defined]


async def thumbnail_keys(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    """The thumbnails that exist for these uploads (of live uploads only), by upload id."""
    found: dict[int, str] = {}
    for part in chunks(list(ids)):
        rows = await session.execute(
            select(col(Attachment.id), col(Attachment.thumbnail_key)).where(
                col(Attachment.id).in_(part),
                col(Attachment.thumbnail_state) == ThumbnailState.DONE,
                col(Attachment.state) != UploadState.DELETING,
            )
        )
        found.update({upload_id: key for upload_id, key in rows if upload_id is not None and key is not None})
    return found


async def claim_thumbnail_work(
    session: AsyncSession, *, now: datetime, stale_before: datetime, max_attempts: int, limit: int
) -> list[Attachment]:
    """Takes up to `limit` uploads waiting for a thumbnail (or abandoned by a worker that died).

    Only uploads in a message: a checked upload whose send was refused gets no preview.
    `SKIP LOCKED` lets workers on many processes share the work without waiting on each other.
    """
    waiting = (
        select(col(Attachment.id))
        .where(
            col(Attachment.state) == UploadState.READY,
            col(Attachment.message_id).is_not(None),
            col(Attachment.thumbnail_attempts) < max_attempts,
            or_(
                col(Attachment.thumbnail_state) == ThumbnailState.PENDING,
                (col(Attachment.thumbnail_state) == ThumbnailState.WORKING)
                & (col(Attachment.thumbnail_claimed_at) < stale_before),
            ),
        )
        .order_by(col(Attachment.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.execute(waiting)).scalars())
    if not ids:
        return []
    rows = (
        await session.execute(
            update(Attachment)
            .where(col(Attachment.id).in_(ids))
            .values(
                thumbnail_state=ThumbnailState.WORKING,
                thumbnail_claimed_at=now,
                thumbnail_attempts=col(Attachment.thumbnail_attempts) + 1,
            )
            .returning(Attachment)
            .execution_options(synchronize_session=False)
        )
    ).scalars()
    return list(rows)


async def finish_thumbnail(session: AsyncSession, upload_id: int, *, state: ThumbnailState, key: str | None) -> None:
    """Records the outcome of a thumbnail attempt (DONE with its key, PENDING to retry, FAILED)."""
    await session.execute(
        update(Attachment)
        .where(col(Attachment.id) == upload_id)
        .values(thumbnail_state=state, thumbnail_key=key)
        .execution_options(synchronize_session=False)
    )


async def release_delivered(session: AsyncSession, now: datetime) -> int:
    """Starts the retention clock of uploads whose message is gone (delivered everywhere, or deleted)."""
    result = await session.execute(
        update(Attachment)
        .where(
            col(Attachment.message_id).is_not(None),
            col(Attachment.released_at).is_(None),
            ~exists().where(col(Message.id) == col(Attachment.message_id)),
        )
        .values(released_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def mark_expired(session: AsyncSession, *, released_before: datetime, created_before: datetime) -> int:
    """Marks for deletion the uploads past retention, and those never attached past their grace."""
    result = await session.execute(
        update(Attachment)
        .where(
            col(Attachment.state) != UploadState.DELETING,
            or_(
                col(Attachment.released_at) < released_before,
                col(Attachment.message_id).is_(None) & (col(Attachment.created_at) < created_before),
            ),
        )
        .values(state=UploadState.DELETING)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def being_deleted(
    session: AsyncSession,
    *,
    limit: int | None = None,
    uploader_id: int | None = None,
    message_ids: Sequence[int] | None = None,
) -> list[tuple[int, list[str]]]:
    """Uploads marked for deletion (of one uploader, or of these messages, when given): (id, the keys of
    its objects: upload, checked copy, thumbnail)."""
    query = (
        select(
            col(Attachment.id), col(Attachment.storage_key), col(Attachment.checked_key), col(Attachment.thumbnail_key)
        )
        .where(col(Attachment.state) == UploadState.DELETING)
        .order_by(col(Attachment.id))
        .limit(limit)
    )
    if uploader_id is not None:
        query = query.where(col(Attachment.uploader_id) == uploader_id)
    if message_ids is not None:
        query = query.where(col(Attachment.message_id).in_(list(message_ids)))
    rows = await session.execute(query)
    return [(upload_id, [key for key in keys if key is not None]) for upload_id, *keys in rows if upload_id is not None]


async def forget(session: AsyncSession, ids: Sequence[int]) -> None:
    """Deletes the records of uploads whose objects are gone."""
    for part in chunks(list(ids)):
        await session.execute(
            delete(Attachment)
            .where(col(Attachment.id).in_(part), col(Attachment.state) == UploadState.DELETING)
            .execution_options(synchronize_session=False)
        )
