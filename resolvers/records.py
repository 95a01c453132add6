"""The records use cases and adapters exchange: what is stored, read back, queued and published."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models import Message, User

# What a message shows of a sender whose account was deleted.
DELETED_USERNAME = "deleted"
DELETED_DISPLAY_NAME = "Deleted user"


@dataclass(slots=True)
class SharedEvent:
    """The event an entry notice carries, shared by every local stream the notice reaches.

    `encoded` is the event as published (resolvers/notice_codec.py); `rendered` caches what
    the first stream made of it, so a group message is rendered once per process, not once
    per member.
    """

    encoded: dict[str, Any]
    rendered: object = None


@dataclass(frozen=True, slots=True)
class EntryNotice:
    """A user's inbox grew to position `seq`; `event` is that entry's event when the notice carried it."""

    seq: int
    event: SharedEvent | None


@dataclass(frozen=True, slots=True)
class Signal:
    """A best-effort message for a user's streams (typing, logout): never stored, never replayed."""

    data: dict[str, Any]


def mention_ids(stored: str | None) -> tuple[int, ...]:
    """The mentioned user ids of a message as stored (`messages.mentions`, a JSON array), or none."""
    return tuple(int(uid) for uid in json.loads(stored)) if stored else ()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A pending message with what its events show of the sender."""

    id: int
    conversation_id: int
    sender_id: int
    sender_username: str
    sender_display_name: str
    client_id: str
    body: str | None
    sent_at: datetime
    # The attachments' metadata as stored with the message (JSON, see resolvers/files.py), or None.
    attachments: str | None = None
    # The message this one replies to (same conversation): its row id and sender, for its signed id.
    reply_to_id: int | None = None
    reply_to_sender_id: int | None = None
    # Disappearing messages: never delivered after this time (resolvers/expiry.py removes it then).
    expires_at: datetime | None = None
    # The mentioned users' ids (stored as JSON with the message, so events need no lookup).
    mentions: tuple[int, ...] = ()
    # An encrypted conversation's message: opaque base64 instead of a body (resolvers/encryption.py).
    ciphertext: str | None = None

    @classmethod
    def from_model(cls, message: Message, sender: User | None) -> StoredMessage:
        """A message row read through SQLAlchemy, with its sender's row (None once that account is deleted)."""
        assert message.id is not None  # a primary key read back
        return cls(
            id=message.id,
            conversation_id=message.conversation_id,
            sender_id=message.sender_id,
            sender_username=sender.username if sender else DELETED_USERNAME,
            sender_display_name=sender.display_name if sender else DELETED_DISPLAY_NAME,
            client_id=message.client_id,
            body=message.body,
            sent_at=message.sent_at,
            attachments=message.attachments,
            reply_to_id=message.reply_to_id,
            reply_to_sender_id=message.reply_to_sender_id,
            expires_at=message.expires_at,
            mentions=mention_ids(message.mentions),
            ciphertext=message.ciphertext,
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, message_id: int, sender_id: int, sent_at: datetime) -> StoredMessage:
        """A message read in one row whose other columns are named as in `messages` and `users` (asyncpg).

        The id, sender and time are passed in: the statements name those columns differently.
        """
        return cls(
            id=message_id,
            conversation_id=row["conversation_id"],
            sender_id=sender_id,
            sender_username=row["username"] or DELETED_USERNAME,
            sender_display_name=row["display_name"] or DELETED_DISPLAY_NAME,
            client_id=row["client_id"],
            body=row["body"],
            sent_at=sent_at,
            attachments=row["attachments"],
            reply_to_id=row["reply_to_id"],
            reply_to_sender_id=row["reply_to_sender_id"],
            expires_at=row["expires_at"],
            mentions=mention_ids(row.get("mentions")),
            ciphertext=row.get("ciphertext"),
        )


@dataclass(frozen=True, slots=True)
class AttachmentClaim:
    """Uploads a send attaches: their ids, and the metadata the message stores (JSON)."""

    ids: list[int]
    metadata: str


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One inbox entry read back: a message (`message` set, or None once deleted) or a JSON payload."""

    seq: int
    kind: str
    message: StoredMessage | None
    payload: str | None
    # The one device of the user the entry is for (to-device messages); None: all of them.
    device_id: int | None = None


@dataclass(frozen=True, slots=True)
class ToDeviceMessage:
    """An opaque message from one device to one device (resolvers/to_device.py), with the sender's names."""

    device_id: int
    sender_id: int
    sender_username: str
    sender_display_name: str
    sender_device_id: int
    type: str
    payload: str


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What storing a message did: `message` is None when the clientId was used before."""

    is_member: bool
    message: StoredMessage | None
    # (user, position) of each inbox entry the send appended, announced after commit.
    appended: list[tuple[int, int]] = field(default_factory=list)
    # False when the sending device no longer exists (logged out between authentication and send).
    device_known: bool = True
    # False when no recipient but the sender has a push registration and the conversation unmuted:
    # then no push job is queued (True when the store cannot tell: the worker decides).
    may_push: bool = True
    # False when an attachment was not the sender's, not checked, or already in a message:
    # then nothing was stored.
    attachments_ok: bool = True
    # The sender's first message in this conversation: their presence now shows to its members.
    newly_engaged: bool = False
    # False when a mentioned user is not a member of the conversation: then nothing was stored.
    mentions_ok: bool = True
    # Why the moderation rules refused the send (resolvers/moderation.py: Refusal), nothing stored;
    # `refused_until` is when that ends (a mute's end, the next slot in slow mode), None if unknown.
    refusal: str | None = None
    refused_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class EarlierSend:
    """The idempotency record of a send; `message` is None once it was delivered and deleted."""

    message_id: int
    conversation_id: int
    sent_at: datetime
    message: StoredMessage | None
    # (user, position) of the message's inbox entries not yet pruned: a retry announces them again.
    appended: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """What an acknowledgement did.

    `acked_before` is None when the device is gone; `receipts` are the DELIVERED entries
    appended to senders' inboxes as (sender, seq, payload JSON); `pruned_messages` are
    messages whose entries were deleted and that may now be unreferenced.
    """

    acked_before: int | None
    head: int
    receipts: list[tuple[int, int, str]]
    pruned_messages: list[int]


@dataclass(frozen=True, slots=True)
class PresenceState:
    """A user's presence as the registry holds it; `seq` counts their online/offline transitions."""

    online: bool
    last_seen: datetime | None
    seq: int


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user went online or offline cluster-wide (`seq` orders one user's changes)."""

    user_id: int
    online: bool
    last_seen: datetime | None
    seq: int


@dataclass(frozen=True, slots=True)
class PushJob:
    """One message that may need push notifications; the worker decides for whom (infra/push/worker.py)."""

    message_id: int
    conversation_id: int
    sender_id: int
    sender_display_name: str
    # Epoch seconds: the worker waits out the coalescing window from here.
    sent_at: float


@dataclass(frozen=True, slots=True)
class QueuedPushJob:
    """A job as a worker received it: `handed_out` counts how often the queue gave it out (1 the first time)."""

    id: str
    job: PushJob
    handed_out: int = 1


@dataclass(frozen=True, slots=True)
class UploadForm:
    """Where and how a client uploads one file: a multipart POST of `fields`, then the file as `file`."""

    url: str
    fields: list[tuple[str, str]]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What storage holds at a key: its size in bytes and the content type it was stored with."""

    size: int
    content_type: str | None
