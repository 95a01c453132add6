"""File sharing: upload tickets, attaching uploads to a send, and download URLs for members.

Bytes never pass through the API: a client uploads straight to storage with a
policy-bound form (`create_upload`) and downloads with a short-lived URL minted when a
member reads `Attachment.url`. Before an upload may be attached it is copied, in storage,
to a key no upload form can write, and the copy is checked (present, size within what was
declared, stored type as declared, first bytes matching the type: an S3 look-alike may not
enforce the form's policy) and is what recipients download: posting the form again after
the check changes nothing that is served. Photos lose their metadata (GPS) in the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import anyio

from models import Attachment, UploadState
from resolvers import encryption, file_checks, file_store, image_metadata
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, NotFound, ParleyError, RateLimited, Unavailable
from resolvers.ids import parse_row_id
from resolvers.ports import FileStorage
from resolvers.rate_limits import spend
from resolvers.records import AttachmentClaim
from resolvers.services import Services

log = logging.getLogger("parley.files")

T = TypeVar("T")

# Bus channel that wakes thumbnail workers when a send attached an image.
THUMBNAIL_CHANNEL = "media:thumbnails"
UNKNOWN_ATTACHMENT = "Unknown attachment: {id}. Attach uploads of your own, once each, after uploading them."


@dataclass(frozen=True, slots=True)
class UploadTicketView:
    """Where and how to upload one file (contract `UploadTicket`)."""

    attachment_id: int
    url: str
    fields: list[tuple[str, str]]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AttachmentView:
    """One attachment of a message, as the message stores it."""

    id: int
    conversation_id: int
    filename: str
    content_type: str
    size: int
    key: str
    # An image: a thumbnail may exist (or appear later).
    previewable: bool


def storage(services: Services) -> FileStorage:
    """The file storage, or `Unavailable` when this deployment has none."""
    if services.files is None:
        raise Unavailable("File sharing is not configured on this server.", shown=True)
    return services.files


async def _storage_call(call: Awaitable[T]) -> T:
    """Awaits a storage call; a storage failure is `Unavailable` (and logged), never a stack trace."""
    try:
        return await call
    except (ParleyError, FileNotFoundError):
        raise
    except Exception as error:
        log.warning("file storage failed: %r", error)
        raise Unavailable("File storage is unavailable; try again shortly.", shown=True) from error


async def create_upload(
    services: Services,
    viewer: Viewer,
    *,
    filename: str,
    content_type: str,
    size: int,
    base_url: str,
    encrypted: bool = False,
) -> UploadTicketView:
    """Records an upload of the viewer and returns the form that stores its bytes (contract `createUpload`).

    `encrypted`: a file the client encrypted for an encrypted conversation, stored as an opaque
    blob (resolvers/encryption.py): whatever `content_type` says, never checked or previewed.
    """
    files = storage(services)
    config = services.file_config
    try:
        name = file_checks.check_filename(filename)
    except ValueError as error:
        raise BadUserInput(str(error)) from None
    kind = encryption.OPAQUE_CONTENT_TYPE if encrypted else file_checks.normalize_content_type(content_type)
    if not encrypted and (kind is None or kind not in config.allowed_content_types):
        allowed = ", ".join(sorted(config.allowed_content_types))
        raise BadUserInput(f"Content type {content_type[:127]!r} is not allowed; allowed: {allowed}.")
    if not 1 <= size <= config.max_upload_bytes:
        raise BadUserInput(f"A file is 1 to {config.max_upload_bytes} bytes.")
    assert kind is not None  # checked above, or opaque
    if not config.keep_image_metadata and kind in image_metadata.cleaned_types() and size > config.max_image_bytes:
        raise BadUserInput(f"A {kind} image is at most {config.max_image_bytes} bytes; share larger ones zipped.")
    limit = config.uploads_per_hour
    await spend(
        services,
        f"uploads:{viewer.user_id}",
        limit=limit,
        window_seconds=3600,
        refusal=f"At most {limit} uploads an hour; try again later.",
    )
    await _spend_upload_bytes(services, viewer, size)
    # Made by the server, never the client: unguessable, and grouped by uploader.
    key = f"{viewer.user_id}/{secrets.token_urlsafe(18)}"
    record = Attachment(
        uploader_id=viewer.user_id,
        storage_key=key,
        filename=name,
        content_type=kind,
        declared_size=size,
        opaque=encrypted,
    )

    async def work(session: Any) -> int:
        session.add(record)
        await session.flush()
        assert record.id is not None
        return record.id

    upload_id = await services.db.transaction(work)
    form = await _storage_call(
        files.upload_form(
            key=key, content_type=kind, max_size=size, expires_in=config.upload_ticket_seconds, base_url=base_url
        )
    )
    log.info("upload %s: user %s, %s, %d bytes declared", upload_id, viewer.user_id, kind, size)
    return UploadTicketView(attachment_id=upload_id, url=form.url, fields=form.fields, expires_at=form.expires_at)


async def _spend_upload_bytes(services: Services, viewer: Viewer, size: int) -> None:
    """Counts the declared size against the uploader's bytes per hour; `RateLimited` past them."""
    limit = services.file_config.upload_bytes_per_hour
    key = f"upload-bytes:{viewer.user_id}"
    try:
        await spend(
            services,
            key,
            limit=limit,
            window_seconds=3600,
            amount=size,
            refusal=f"At most {limit} bytes of uploads an hour, and this file does not fit; try again later.",
        )
    except RateLimited:
        # Nothing is uploaded: its bytes go back, so a smaller file may still fit this hour.
        with contextlib.suppress(Exception):
            await services.rate_limiter.hit(key, window_seconds=3600, amount=-size)
        raise


def _parse_ids(raw_ids: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for raw in raw_ids:
        try:
            upload_id = parse_row_id(raw, what="attachment")
        except NotFound:
            raise BadUserInput(UNKNOWN_ATTACHMENT.format(id=repr(raw[:64]))) from None
        if upload_id in ids:
            raise BadUserInput(f"Attachment {raw[:64]!r} is listed twice.")
        ids.append(upload_id)
    return ids


async def prepare_attachments(services: Services, viewer: Viewer, raw_ids: Sequence[str]) -> AttachmentClaim:
    """Checks the uploads a send names and returns the claim the send stores; `BadUserInput` if one cannot go.

    Checking reads storage, so it happens before the send's transaction; the claim
    itself (still unattached, still the sender's) is made atomically by the send.
    """
    files = storage(services)
    ids = _parse_ids(raw_ids)
    async with services.db.session() as session:
        found = await file_store.uploads_of(session, viewer.user_id, ids)
    metadata: list[dict[str, Any]] = []
    for upload_id in ids:
        upload = found.get(upload_id)
        if upload is None or upload.state is UploadState.DELETING:
            raise BadUserInput(UNKNOWN_ATTACHMENT.format(id=upload_id))
        if upload.message_id is not None:
            raise BadUserInput(f"Attachment {upload_id} is already in a message; upload the file again.")
        checked = _checked(upload)
        if checked is None:
            checked = await _check_stored(services, files, upload)
        key, size = checked
        metadata.append(
            {
                "id": upload_id,
                "n": upload.filename,
                "t": upload.content_type,
                "z": size,
                "k": key,
                "p": not upload.opaque and file_checks.is_image(upload.content_type),
            }
        )
    return AttachmentClaim(ids=ids, metadata=json.dumps(metadata, separators=(",", ":")))


def _checked(upload: Attachment) -> tuple[str, int] | None:
    """The checked copy's key and size, when the upload was checked (uploads checked before copies existed were not)."""
    if upload.state is UploadState.READY and upload.checked_key is not None and upload.size is not None:
        return upload.checked_key, upload.size
    return None


async def _check_stored(services: Services, files: FileStorage, upload: Attachment) -> tuple[str, int]:
    """Copies an upload to a key of its own, checks the copy and records it as attachable; returns its key and size.

    The copy's key is new for every check: of two checks at once, one copy is recorded and the
    other deleted, so what was recorded is what its own check read.
    """
    assert upload.id is not None
    key = f"{upload.storage_key}.checked-{secrets.token_urlsafe(9)}"
    try:
        await _storage_call(files.copy(upload.storage_key, key))
    except FileNotFoundError:
        raise BadUserInput(f"Attachment {upload.id} has not been uploaded (or its ticket expired unused).") from None
    try:
        size = await _check_copy(services, files, upload, key)
    except BaseException:
        await _discard(files, key)
        raise
    previewable = not upload.opaque and file_checks.is_image(upload.content_type)

    async def work(session: Any) -> bool:
        assert upload.id is not None
        return await file_store.mark_ready(session, upload.id, checked_key=key, size=size, thumbnail=previewable)

    # A failure here leaves the copy: the commit may have happened, and then the record needs it.
    recorded = await services.db.transaction(work)
    if recorded:
        return key, size
    # Another send checked it meanwhile (or retention took it): its record stands.
    await _discard(files, key)
    async with services.db.session() as session:
        again = (await file_store.uploads_of(session, upload.uploader_id, [upload.id])).get(upload.id)
    checked = _checked(again) if again is not None else None
    if checked is None:
        raise BadUserInput(UNKNOWN_ATTACHMENT.format(id=upload.id))
    return checked


async def _check_copy(services: Services, files: FileStorage, upload: Attachment, key: str) -> int:
    """Checks the checked copy at `key` (and removes a photo's metadata from it); returns its size."""
    assert upload.id is not None
    config = services.file_config
    stored = await _storage_call(files.stat(key))
    if stored is None:
        raise BadUserInput(f"Attachment {upload.id} has not been uploaded.")
    if not 1 <= stored.size <= min(upload.declared_size, config.max_upload_bytes):
        raise BadUserInput(f"Attachment {upload.id} is {stored.size} bytes, not the {upload.declared_size} declared.")
    if file_checks.normalize_content_type(stored.content_type or "") != upload.content_type:
        raise BadUserInput(f"Attachment {upload.id} was stored as another content type than declared.")
    if upload.opaque:  # encrypted by the client: nothing to check in it, nothing to clean
        return stored.size
    cleaning = not config.keep_image_metadata and upload.content_type in image_metadata.cleaned_types()
    # A photo is read whole (its size was bounded by max_image_bytes when declared); anything else, its start.
    limit = stored.size if cleaning else file_checks.EXTENSION_CHECK_BYTES
    try:
        data = await _storage_call(files.read(key, limit=limit))
    except FileNotFoundError:
        raise BadUserInput(f"Attachment {upload.id} has not been uploaded.") from None
    size = stored.size
    if cleaning:
        cleaned = await asyncio.to_thread(image_metadata.strip_metadata, upload.content_type, data)
        if cleaned is not data:
            data, size = cleaned, len(cleaned)
            await _storage_call(files.write(key, cleaned, content_type=upload.content_type))
    problem = file_checks.content_problem(upload.content_type, data[: file_checks.EXTENSION_CHECK_BYTES])
    if problem is not None:
        log.info("upload %s of user %s refused: %s", upload.id, upload.uploader_id, problem)
        raise BadUserInput(f"Attachment {upload.id} does not look like {upload.content_type}: {problem}")
    return size


async def _discard(files: FileStorage, key: str) -> None:
    """Deletes a checked copy nobody will use (best effort: at worst it is an orphan in storage)."""
    # Shielded: a send cancelled mid-check (client gone) must still not leave its copy behind.
    with anyio.CancelScope(shield=True):
        try:
            await files.delete([key])
        except Exception:
            log.warning("could not delete the unused copy %s", key, exc_info=True)


def attachments_of(conversation_id: int, metadata: str | None) -> tuple[AttachmentView, ...]:
    """The attachments a stored message carries (its `attachments` JSON)."""
    if not metadata:
        return ()
    return tuple(
        AttachmentView(
            id=int(item["id"]),
            conversation_id=conversation_id,
            filename=str(item["n"]),
            content_type=str(item["t"]),
            size=int(item["z"]),
            key=str(item["k"]),
            previewable=bool(item.get("p")),
        )
        for item in json.loads(metadata)
    )


async def download_url(services: Services, attachment: AttachmentView, *, base_url: str) -> str:
    """A short-lived URL of the attachment's bytes; the caller has checked the viewer is a member."""
    config = services.file_config
    return await _storage_call(
        storage(services).download_url(
            key=attachment.key,
            filename=attachment.filename,
            content_type=attachment.content_type,
            expires_in=config.download_url_seconds,
            base_url=base_url,
        )
    )


async def thumbnail_url(services: Services, attachment: AttachmentView, key: str, *, base_url: str) -> str:
    """A short-lived URL of the attachment's preview image (stored at `key`)."""
    thumbnailer = services.thumbnailer
    preview_type = thumbnailer.content_type if thumbnailer is not None else "image/webp"
    stem = attachment.filename.rsplit(".", 1)[0] or "preview"
    return await _storage_call(
        storage(services).download_url(
            key=key,
            filename=f"{stem}-preview.{preview_type.split('/')[-1]}",
            content_type=preview_type,
            expires_in=services.file_config.download_url_seconds,
            base_url=base_url,
        )
    )


async def announce_thumbnail_work(services: Services) -> None:
    """Wakes the thumbnail workers (best effort: they also look for work periodically)."""
    try:
        await services.bus.publish_many([(THUMBNAIL_CHANNEL, "1")])
    except Exception:
        log.warning("could not wake the thumbnail workers", exc_info=True)
