"""The small interfaces use cases need from infrastructure (implemented in `infra/`).

The records they exchange are in `resolvers/records.py`; the container that carries
them to the use cases is `resolvers/services.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.ids import MessageRef
from resolvers.records import (
    AckOutcome,
    AttachmentClaim,
    EarlierSend,
    EntryNotice,
    PresenceChange,
    PresenceState,
    PushJob,
    QueuedPushJob,
    SendOutcome,
    Signal,
    StoredEntry,
    StoredObject,
    UploadForm,
)

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


Inbound = EntryNotice | Signal | Resync


class Fanout(Protocol):
    """Live notices to users' streams on whichever process holds them."""

    async def publish_entries(
        self, entries: Sequence[tuple[int, int, int]], events: Sequence[Mapping[str, Any] | None]
    ) -> None:
        """Publishes entry notices `(user_id, seq, index into events)`; raises when the broker fails."""
        ...

    async def publish_signal(self, user_ids: Sequence[int], data: dict[str, Any]) -> None:
        """Publishes a best-effort signal to these users' streams."""
        ...

    def listen(self, user_id: int) -> AbstractAsyncContextManager[AsyncIterator[Inbound]]:
        """This process's feed of one user's notices; whatever is published once it has entered arrives."""
        ...


class InboxStore(Protocol):
    """The hot path's storage: append, acknowledge, prune and read back inbox entries; look up tokens.

    One round trip each where it can. Token lookups live here too because every request
    makes one and they share the hot path's connection pool.
    """

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
        mentions: Sequence[int] = (),
        ciphertext: str | None = None,
    ) -> SendOutcome:
        """Stores the message, its idempotency key and one inbox entry per recipient, atomically.

        With `attachments`, it also claims those uploads for the message, or stores nothing.
        `reply_to` is the (message id, sender id) of the message this one replies to.
        `mentions` (distinct user ids, not the sender) must all be members, or nothing is stored.
        The recipients' unread counters (and mention counters) move in the same transaction.
        `ciphertext` (with no body) is what an encrypted conversation takes, and only it: a
        mismatch stores nothing and is refused (resolvers/encryption.py REFUSALS).
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


class Database(Protocol):
    """Sessions on the relational database; `transaction` also runs the `after_commit` work."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5) -> T: ...

    async def ping(self) -> None: ...


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
class WebhookJob:
    """One event for one endpoint: the endpoint's key, the event's id (`webhook-id`) and its JSON body."""

    endpoint: str
    event_id: str
    event_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class DeadWebhook:
    """A delivery that failed for good, kept for an operator to inspect or replay."""

    id: str
    job: WebhookJob
    reason: str
    at: float


class WebhookQueue(Protocol):
    """Durable webhook deliveries, one job per (event, endpoint), at-least-once (infra/webhooks/queue.py)."""

    async def enqueue(self, jobs: Sequence[WebhookJob]) -> None:
        """Queues the jobs (one round trip); raises when the queue is unreachable."""
        ...

    async def dead_letters(self, limit: int) -> list[DeadWebhook]:
        """The newest dead letters, newest first."""
        ...

    async def replay(self, dead_id: str) -> bool:
        """Queues a dead letter again (its attempts start over) and removes it; False if there is no such one."""
        ...


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


class Telemetry(Protocol):
    """Counts and timings for operators (infra/metrics_telemetry.py). Labels are bounded: no user ids."""

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


class PersistedQueryStore(Protocol):
    """Apollo automatic persisted queries: query texts by their SHA-256 (Redis, or a bounded in-process LRU)."""

    async def get(self, sha256: str) -> str | None:
        """The query stored under this hash, or None (unknown, expired or evicted)."""
        ...

    async def put(self, sha256: str, query: str) -> None:
        """Stores a query whose hash the caller has verified."""
        ...


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message about to be stored, as the before-send hook is asked about it."""

    conversation_id: int
    sender_id: int
    sender_username: str
    client_id: str
    body: str | None
    mentions: tuple[int, ...]
    attachment_count: int
    reply_to: MessageRef | None
    # Set when the message is an edit: the message whose new text this is (`client_id` is then empty).
    edit_of: MessageRef | None = None


class HookFailed(Exception):
    """The before-send hook gave no answer to go by: refused address, timeout, connection error, non-2xx, not JSON."""


class BeforeSendHook(Protocol):
    """The operator's synchronous moderation hook (infra/before_send_hook.py), asked before a send is stored."""

    async def ask(self, message: OutgoingMessage) -> Mapping[str, Any]:
        """The hook's answer, a JSON object (not yet judged); `HookFailed` when there is none within the timeout."""
        ...
