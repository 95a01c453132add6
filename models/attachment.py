"""Uploaded files: who uploaded them, where they are stored, and which message carries them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Column, Enum, false
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class UploadState(enum.StrEnum):
    # A ticket was handed out; the bytes may or may not be in storage yet.
    PENDING = "PENDING"
    # A copy of the stored object was checked (present, size, type, first bytes): it may be attached.
    READY = "READY"
    # The retention job is deleting its objects: it can no longer be attached or downloaded.
    DELETING = "DELETING"


class ThumbnailState(enum.StrEnum):
    PENDING = "PENDING"
    WORKING = "WORKING"
    DONE = "DONE"
    FAILED = "FAILED"


class Attachment(SQLModel, table=True):
    """One uploaded file; outlives its message by the retention period (files stay downloadable a while after delivery).

    `message_id` is no foreign key: the message is deleted once delivered, and the file
    must stay downloadable for a while after; `released_at` records when the retention
    job first saw the message gone.
    """

    __tablename__ = "attachments"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    uploader_id: int = Field(foreign_key="users.id", index=True, sa_type=BigId, ondelete="CASCADE")
    # Made by the server (never the client): unguessable, and unique per upload.
    storage_key: str = Field(max_length=200, unique=True)
    # The copy the check read and recipients download: no upload ticket can write it, so a ticket
    # posted again after the check changes nothing that is served (None until checked).
    checked_key: str | None = Field(default=None, max_length=220)
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=127)
    # What the client declared (the upload's ceiling), and what storage holds once checked.
    declared_size: int = Field(sa_type=BigInteger)
    size: int | None = Field(default=None, sa_type=BigInteger)
    state: UploadState = Field(
        default=UploadState.PENDING,
        sa_column=Column(Enum(UploadState, native_enum=False, length=16), nullable=False, index=True),
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    conversation_id: int | None = Field(default=None, sa_type=BigId)
    message_id: int | None = Field(default=None, sa_type=BigId, index=True)
    released_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    thumbnail_state: ThumbnailState | None = Field(
        default=None,
        sa_column=Column(Enum(ThumbnailState, native_enum=False, length=16), nullable=True, index=True),
    )
    thumbnail_key: str | None = Field(default=None, max_length=220)
    thumbnail_attempts: int = 0
    thumbnail_claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Encrypted by the client for an end-to-end encrypted conversation: stored as an opaque blob,
    # never checked, cleaned or previewed, and attachable only there (resolvers/encryption.py).
    opaque: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
