"""The small interfaces use cases need from infrastructure (implemented in `infra/`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


class Resync(Protocol):
    """A bus notice that the subscriber may have missed messages."""

    @property
    def reason(self) -> str: ...


class Bus(Protocol):
    """Fan-out of small notices between server processes."""

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str | Resync]]: ...

    async def ping(self) -> None: ...


@dataclass(slots=True)
class SharedEvent:
    """A durable event as carried by a live notice, shared by every local stream it reaches.

    `wire` is the event as published; `rendered` caches what the first stream made of it,
    so a group message is decoded and rendered once per process, not once per member.
    """

    wire: dict[str, Any]
    rendered: object = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """A user's inbox grew to position `seq`; `event` is that entry when the notice carried it."""

    seq: int
    event: SharedEvent | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A best-effort notice for a user's streams (typing, logout): never stored."""

    data: dict[str, Any]


Inbound = Delivered | Notice | Resync


class Fanout(Protocol):
    """Live notices to users' streams on whichever process holds them."""

    async def deliver(self, entries: Sequence[tuple[int, int, int]], events: Sequence[dict[str, Any] | None]) -> None:
        """Publishes `(user_id, seq, index into events)` triples; raises when the broker fails."""
        ...

    async def notify(self, user_ids: Sequence[int], data: dict[str, Any]) -> None:
        """Publishes a best-effort notice to these users' streams."""
        ...

    def listen(self, user_id: int) -> AbstractAsyncContextManager[AsyncIterator[Inbound]]:
        """This process's feed of one user's notices; whatever is published once it has entered arrives."""
        ...


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


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What storing a message did: `message` is None when the clientId was used before."""

    is_member: bool
    message: StoredMessage | None
    deliveries: list[tuple[int, int]] = field(default_factory=list)
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


@dataclass(frozen=True, slots=True)
class EarlierSend:
    """The idempotency record of a send; `message` is None once it was delivered and deleted."""

    message_id: int
    conversation_id: int
    sent_at: datetime
    message: StoredMessage | None
    # (user, seq) of the message's entries still pending: a retry announces them again.
    deliveries: list[tuple[int, int]] = field(default_factory=list)


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


class DeliveryStore(Protocol):
    """The hot path's storage: authenticate, send, acknowledge, read back. One round trip each where it can."""

    async def device_for_token(
        self, token_hash: str, *, now: datetime, touch_before: datetime
    ) -> tuple[int, int] | None:
        """The (device, user) a token names; records `now` as its activity if last recorded before `touch_before`."""
        ...

    async def send(
        self,
        *,
        sender_id: int,
        device_id: int,
        conversation_id: int,
        client_id: str,
        body: str | None,
        sent_at: datetime,
        attachments: AttachmentClaim | None = None,
        reply_to: tuple[int, int] | None = None,
    ) -> SendOutcome:
        """Stores the message, its idempotency key and one inbox entry per recipient, atomically.

        With `attachments`, it also claims those uploads for the message, or stores nothing.
        `reply_to` is the (message id, sender id) of the message this one replies to.
        """
        ...

    async def earlier_send(self, sender_id: int, client_id: str) -> EarlierSend | None:
        """The first send with this clientId, if any."""
        ...

    async def acknowledge(self, *, user_id: int, device_id: int, seq: int, at: datetime) -> AckOutcome:
        """Advances the device, raises DELIVERED watermarks, prunes what every device has."""
        ...

    async def delete_orphans(self, message_ids: Sequence[int]) -> int:
        """Deletes those messages no entry refers to any more (run after the pruning commit)."""
        ...

    async def positions(self, device_id: int) -> tuple[int, int] | None:
        """The device's acknowledged position and its user's head; None when the device is gone."""
        ...

    async def read_after(self, *, user_id: int, device_id: int, after: int, limit: int) -> list[StoredEntry] | None:
        """Entries after `after`, oldest first; None when the device is gone."""
        ...


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


class Presence(Protocol):
    """Last-seen times and the online registry, kept in the cache rather than the database."""

    async def touch(self, user_id: int) -> datetime: ...

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]: ...

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with a live connection on any process: one round trip however many."""
        ...

    async def connected(self, user_id: int) -> None:
        """Counts a socket of `user_id` on this process before its first await; never raises."""
        ...

    async def disconnected(self, user_id: int) -> None:
        """Uncounts one socket counted by `connected`; never raises."""
        ...

    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        """Online, last seen and transition count of each user, read at one instant."""
        ...

    def watch(
        self, user_ids: Sequence[int]
    ) -> AbstractAsyncContextManager[AsyncIterator[Sequence[PresenceChange] | Resync]]:
        """This process's feed of those users' transitions (in batches), listening once it has entered."""
        ...

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Tells every process's watchers of these users to read again what they may see; never raises.

        For a change of who may see them that is no online/offline transition (a first message).
        """
        ...


class RateLimiter(Protocol):
    """Counts events per key in a fixed window."""

    async def hit(self, key: str, *, window_seconds: int, amount: int = 1) -> int:
        """Counts `amount` events for `key` in its fixed window; returns the window's count."""
        ...

    async def count(self, key: str) -> int: ...

    async def reset(self, key: str) -> None: ...


class PasswordHasher(Protocol):
    """Slow salted password hashing, off the event loop."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str | None, password: str) -> bool: ...


AFTER_COMMIT = "parley_after_commit"


def after_commit(session: AsyncSession, work: Callable[[AsyncSession], Awaitable[object]]) -> None:
    """Has `Database.transaction` run `work` in a transaction of its own once this one has committed.

    For checks that must see every concurrent commit, such as "is this message still referenced":
    inside the transaction, two of them would each still see the other's uncommitted deletions.
    """
    session.info.setdefault(AFTER_COMMIT, []).append(work)


class Database(Protocol):
    """Sessions on the relational database; `transaction` also runs the `after_commit` work."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5) -> T: ...

    async def ping(self) -> None: ...


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
    """A job as a worker received it: `deliveries` counts how often it was handed out (1 the first time)."""

    id: str
    job: PushJob
    deliveries: int = 1


class PushQueue(Protocol):
    """The durable push job queue: at-least-once, acknowledged after success (infra/push/queue.py)."""

    async def enqueue(self, job: PushJob) -> None:
        """Queues one job; raises when the queue is unreachable."""
        ...

    async def receive(self, consumer: str, *, count: int, wait_seconds: float) -> list[QueuedPushJob]:
        """Jobs for this consumer: new ones, and ones a dead consumer held too long."""
        ...

    async def keep(self, consumer: str, job_ids: Sequence[str]) -> None:
        """Tells the queue these jobs are still being worked on (not to be taken over)."""
        ...

    async def ack(self, job_ids: Sequence[str]) -> None:
        """Done with these jobs: they are never handed out again."""
        ...

    async def dead_letter(self, job: QueuedPushJob, reason: str) -> None:
        """Moves a job that kept failing aside, for an operator to inspect (and acknowledges it)."""
        ...

    async def already_sent(self, keys: Sequence[str]) -> set[str]:
        """Those of these (message, device) keys marked sent."""
        ...

    async def mark_sent(self, keys: Sequence[str]) -> None:
        """Remembers (for a day or more) that these (message, device) notifications went out."""
        ...


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


class FileStorage(Protocol):
    """Where attachments' bytes live: an S3 bucket, or a folder the app serves (infra/storage/).

    Keys are made by the server. `base_url` is the scheme and host the client reached the
    API at (`https://chat.example`); a backend whose URLs point elsewhere ignores it.
    """

    async def upload_form(
        self, *, key: str, content_type: str, max_size: int, expires_in: int, base_url: str
    ) -> UploadForm:
        """A POST form that stores 1 to `max_size` bytes of exactly `content_type` at `key`, for `expires_in` s."""
        ...

    async def download_url(self, *, key: str, filename: str, content_type: str, expires_in: int, base_url: str) -> str:
        """A GET URL of the object, valid `expires_in` seconds, served as an attachment named `filename`."""
        ...

    async def stat(self, key: str) -> StoredObject | None:
        """The object at `key`, or None when nothing is stored there."""
        ...

    async def read(self, key: str, *, limit: int) -> bytes:
        """At most the first `limit` bytes of the object; raises FileNotFoundError when it is missing."""
        ...

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        """Stores `data` at `key` (thumbnails and checked copies, made by the server)."""
        ...

    async def copy(self, source: str, target: str) -> None:
        """Copies the object at `source` (bytes and content type) to `target`; FileNotFoundError when missing."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Deletes these objects; a missing one is no error."""
        ...


class ImageError(Exception):
    """Bytes a preview cannot be made of: not an image, damaged, or too many pixels."""


class Thumbnailer(Protocol):
    """Makes small previews of images, off the event loop (infra/thumbnails.py)."""

    content_type: str

    async def thumbnail(self, data: bytes) -> bytes:
        """A small preview of the image `data`, without its metadata; raises `ImageError`."""
        ...


@dataclass(frozen=True)
class FileConfig:
    """What file sharing allows (from settings)."""

    max_upload_bytes: int = 100 * 1024 * 1024
    allowed_content_types: frozenset[str] = frozenset({"image/jpeg", "image/png", "application/pdf", "text/plain"})
    upload_ticket_seconds: int = 600
    download_url_seconds: int = 300
    retention_seconds: float = 30 * 86400
    unattached_seconds: float = 86400
    thumbnail_size: int = 320
    thumbnail_max_pixels: int = 16_000_000
    thumbnail_max_source_bytes: int = 30 * 1024 * 1024
    # The scheme and host of download and upload URLs, when not the request's own.
    public_url: str | None = None
    uploads_per_hour: int = 500
    thumbnail_max_attempts: int = 3
    thumbnail_concurrency: int = 1
    upload_bytes_per_hour: int = 1024 * 1024 * 1024
    # JPEG, PNG and WebP originals lose their EXIF/XMP (GPS positions) but their orientation,
    # unless kept; they are read whole for it, so they are at most `max_image_bytes`.
    keep_image_metadata: bool = False
    max_image_bytes: int = 30 * 1024 * 1024


@dataclass(frozen=True)
class PushConfig:
    """What the API says and checks about push channels (from settings)."""

    web_push_public_key: str | None = None
    allow_private_endpoints: bool = True


class Telemetry(Protocol):
    """Counts and timings for operators (infra/metrics.py). Labels are bounded: no user ids."""

    def operation(self, *, kind: str, field: str, outcome: str, seconds: float) -> None:
        """One GraphQL operation ended: `field` is its root field, `outcome` "ok" or an error code."""
        ...

    def socket_opened(self) -> None: ...

    def socket_closed(self) -> None: ...

    def subscription_started(self, field: str) -> None: ...

    def subscription_ended(self, field: str) -> None: ...

    def send_committed(self, seconds: float) -> None:
        """A send's time from the request to its commit."""
        ...

    def notices_published(self, seconds: float) -> None:
        """A send's time from its commit to its notices being published."""
        ...

    def events_delivered(self, count: int) -> None:
        """Durable events handed to subscribers (live or replayed)."""
        ...


class NullTelemetry:
    """Telemetry that records nothing (metrics off, and tools that wire services by hand)."""

    def operation(self, *, kind: str, field: str, outcome: str, seconds: float) -> None:
        """Records nothing."""

    def socket_opened(self) -> None:
        """Records nothing."""

    def socket_closed(self) -> None:
        """Records nothing."""

    def subscription_started(self, field: str) -> None:
        """Records nothing."""

    def subscription_ended(self, field: str) -> None:
        """Records nothing."""

    def send_committed(self, seconds: float) -> None:
        """Records nothing."""

    def notices_published(self, seconds: float) -> None:
        """Records nothing."""

    def events_delivered(self, count: int) -> None:
        """Records nothing."""


@dataclass(frozen=True)
class Limits:
    """Input limits the use cases enforce (from settings)."""

    max_group_members: int = 100
    max_body_length: int = 4000
    max_attachments: int = 10
    max_presence_watch: int = 100
    login_max_failures: int = 10
    login_failure_window_seconds: int = 300
    device_inactivity_days: float = 30
    send_rate_per_minute: int = 300
    auth_attempts_per_address: int = 30
    conversations_per_hour: int = 60
    member_additions_per_hour: int = 500
    renames_per_hour: int = 30
    typing_interval_seconds: float = 2.0
    edit_window_seconds: float = 900
    delete_window_seconds: float = 86400
    max_reactions_per_user_per_message: int = 5
    push_registrations_per_hour: int = 60


@dataclass(frozen=True)
class Services:
    """Everything a use case may touch, wired once in `infra/app.py`."""

    db: Database
    bus: Bus
    fanout: Fanout
    delivery: DeliveryStore
    presence: Presence
    rate_limiter: RateLimiter
    passwords: PasswordHasher
    limits: Limits
    # None: push notifications are not queued (tests and tools that wire services by hand).
    push_queue: PushQueue | None = None
    push: PushConfig = field(default_factory=PushConfig)
    # None: file sharing is off (tools that wire services by hand); createUpload answers UNAVAILABLE.
    files: FileStorage | None = None
    file_config: FileConfig = field(default_factory=FileConfig)
    thumbnailer: Thumbnailer | None = None
    telemetry: Telemetry = field(default_factory=NullTelemetry)


class PersistedQueryStore(Protocol):
    """Apollo automatic persisted queries: query texts by their SHA-256 (Redis, or a bounded in-process LRU)."""

    async def get(self, sha256: str) -> str | None:
        """The query stored under this hash, or None (unknown, expired or evicted)."""
        ...

    async def put(self, sha256: str, query: str) -> None:
        """Stores a query whose hash the caller has verified."""
        ...
