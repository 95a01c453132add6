"""A device's durable events: pending ones for pull sync, and the live stream.

The stream starts listening for the user's entry notices first, then replays the
inbox after the cursor, then follows notices. A notice for exactly the next position
that carries its entry's event is yielded as it is; anything else (a gap, a notice
without the event, a `Resync` after a broker outage) makes the stream read the
database from its last position. So a lost, late or duplicated notice can delay
an event but never skip or repeat it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from resolvers.accounts import Viewer, get_users
from resolvers.conversations import conversation_headers
from resolvers.device_keys import KEYS_LOW, KeysLowEventView, keys_low_event_of
from resolvers.device_lists import DEVICE_LIST, DeviceListEventView, device_list_event_of
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.expiry import is_expired
from resolvers.ids import MessageRef, format_cursor, parse_cursor
from resolvers.lifecycle import LIFECYCLE_KINDS, LifecycleChange, change_of
from resolvers.messages import MessageView
from resolvers.notice_codec import (
    MESSAGE_KIND,
    RECEIPT_KIND,
    decode_message,
    decode_receipt,
    decode_to_device,
    decode_typing,
    device_of,
    revokes,
)
from resolvers.records import (
    DELETED_DISPLAY_NAME,
    DELETED_USERNAME,
    EntryNotice,
    SharedEvent,
    Signal,
    StoredEntry,
    ToDeviceMessage,
)
from resolvers.reports import ReportEventView, report_event_of
from resolvers.services import Services
from resolvers.to_device import ToDeviceEventView, to_device_of
from resolvers.unread import READ_STATE, ReadPosition, read_state_at, read_state_of

log = logging.getLogger("parley.events")

MAX_PENDING_PAGE = 500
REPLAY_BATCH = 200
# How long a stream holds entries that arrived ahead of a missing one before reading the database.
GAP_WAIT_SECONDS = 0.05
MAX_EARLY = 100


@dataclass(frozen=True, slots=True)
class MessageEventView:
    cursor: str
    message: MessageView


@dataclass(frozen=True, slots=True)
class ReceiptView:
    """A receipt; `message` is a reference to sign, or an id signed when it was stored (older entries)."""

    conversation_id: int
    message: MessageRef | str
    reader_id: int
    reader_username: str | None
    reader_display_name: str | None
    status: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ReceiptEventView:
    cursor: str
    receipt: ReceiptView


@dataclass(frozen=True, slots=True)
class ConversationEventView:
    cursor: str
    change: str
    conversation_id: int
    user_ids: list[int]
    actor_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class TypingEventView:
    conversation_id: int
    user_id: int
    typing: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class LifecycleEventView:
    """An edit, delete or reaction (`kind` is its EventKind value) of a message the clients hold."""

    cursor: str
    kind: str
    change: LifecycleChange


@dataclass(frozen=True, slots=True)
class ReadStateEventView:
    """The reader's own read position in a conversation and what is left unread there (resolvers/unread.py)."""

    cursor: str
    position: ReadPosition
    at: datetime


DurableEvent = (
    MessageEventView
    | ReceiptEventView
    | ConversationEventView
    | LifecycleEventView
    | ReadStateEventView
    | ReportEventView
    | DeviceListEventView
    | KeysLowEventView
    | ToDeviceEventView
)
Event = DurableEvent | TypingEventView


def _receipt(data: dict[str, Any]) -> ReceiptView:
    conversation_id = int(data["conversation_id"])
    signed = data.get("message_id")
    message = (
        signed if isinstance(signed, str) else MessageRef(int(data["message"]), conversation_id, int(data["sender_id"]))
    )
    return ReceiptView(
        conversation_id=conversation_id,
        message=message,
        reader_id=int(data["reader_id"]),
        reader_username=data.get("reader_username"),
        reader_display_name=data.get("reader_display_name"),
        status=data["status"],
        at=datetime.fromisoformat(data["at"]),
    )


# Entries whose JSON payload is the whole event.
_PAYLOAD_EVENTS: dict[str, Callable[[str, dict[str, Any]], DurableEvent]] = {
    "REPORT": report_event_of,
    DEVICE_LIST: device_list_event_of,
    KEYS_LOW: keys_low_event_of,
}


def _render_entry(entry: StoredEntry) -> DurableEvent | None:
    if entry.kind == "TO_DEVICE" and entry.device_id is not None:
        return ToDeviceEventView(format_cursor(entry.seq), to_device_of(entry.payload or "{}", entry.device_id))
    return _render_user_entry(entry)


def _render_user_entry(entry: StoredEntry) -> DurableEvent | None:
    cursor = format_cursor(entry.seq)
    if entry.kind == "MESSAGE":
        return MessageEventView(cursor, MessageView.from_stored(entry.message)) if entry.message is not None else None
    if entry.kind in LIFECYCLE_KINDS:
        return LifecycleEventView(cursor, entry.kind, change_of(entry.payload or "{}"))
    if entry.kind == READ_STATE:
        return ReadStateEventView(cursor, read_state_of(entry.payload or "{}"), read_state_at(entry.payload or "{}"))
    data: dict[str, Any] = json.loads(entry.payload or "{}")
    if entry.kind == "RECEIPT":
        return ReceiptEventView(cursor, _receipt(data))
    if (render := _PAYLOAD_EVENTS.get(entry.kind)) is not None:
        return render(cursor, data)
    return ConversationEventView(
        cursor,
        data["change"],
        data["conversation_id"],
        data["user_ids"],
        data["actor_id"],
        datetime.fromisoformat(data["at"]),
    )


@dataclass(frozen=True, slots=True)
class _ForDevice:
    """A notice's entry meant for one device of the user; `message` when the notice carried it whole."""

    device_id: int
    message: ToDeviceMessage | None


Carried = MessageView | ReceiptView | ToDeviceMessage
# What a stream holds for a position a notice announced: an event, or `_SKIP` (another device's entry).
_SKIP = object()


def _render_carried(encoded: dict[str, Any]) -> MessageView | ReceiptView | _ForDevice | None:
    """The event a notice carries, rendered; None for anything this version does not know."""
    kind = encoded.get("k")
    if kind == MESSAGE_KIND:
        return MessageView.from_stored(decode_message(encoded))
    if kind == RECEIPT_KIND:
        return _receipt(decode_receipt(encoded))
    if (device_id := device_of(encoded)) is not None:
        return _ForDevice(device_id, decode_to_device(encoded))
    return None


def _shared_body(event: SharedEvent, device_id: int) -> Carried | object | None:
    """The event a notice carries for this device (`_SKIP`: none, the entry is another device's), or None
    when the database must be read; rendered once per process however many streams it reaches."""
    if event.rendered is None:
        try:
            event.rendered = _render_carried(event.encoded) or False
        except (KeyError, TypeError, ValueError):
            log.warning("could not render a notice's event; reading it from the database", exc_info=True)
            event.rendered = False
    body = event.rendered
    if isinstance(body, _ForDevice):
        return _SKIP if body.device_id != device_id else body.message
    return body if isinstance(body, MessageView | ReceiptView) else None


async def _with_reader_names(services: Services, events: list[DurableEvent]) -> list[DurableEvent]:
    """Receipts stored before reader names were kept with them get the names now, in one query."""
    missing = {
        e.receipt.reader_id for e in events if isinstance(e, ReceiptEventView) and e.receipt.reader_username is None
    }
    if not missing:
        return events
    users = await get_users(services, list(missing))
    named: list[DurableEvent] = []
    for event in events:
        if isinstance(event, ReceiptEventView) and event.receipt.reader_username is None:
            user = users.get(event.receipt.reader_id)
            receipt = event.receipt
            named.append(
                ReceiptEventView(
                    event.cursor,
                    ReceiptView(
                        receipt.conversation_id,
                        receipt.message,
                        receipt.reader_id,
                        user.username if user else DELETED_USERNAME,
                        user.display_name if user else DELETED_DISPLAY_NAME,
                        receipt.status,
                        receipt.at,
                    ),
                )
            )
        else:
            named.append(event)
    return named


async def _read_after(
    services: Services, viewer: Viewer, after: int, limit: int
) -> tuple[list[DurableEvent], int, int]:
    """Events after `after`, the last position read and the rows read; `Unauthenticated` once the device is gone."""
    entries = await services.inbox_store.read_after(
        user_id=viewer.user_id, device_id=viewer.device_id, after=after, limit=limit
    )
    if entries is None:
        raise Unauthenticated("This device has logged out.")
    events = _unexpired(services, [event for entry in entries if (event := _render_entry(entry)) is not None])
    events = await _without_foreign_files(services, viewer, events)
    return await _with_reader_names(services, events), (entries[-1].seq if entries else after), len(entries)


def _unexpired(services: Services, events: list[DurableEvent]) -> list[DurableEvent]:
    """Drops disappearing messages past their expiry: no device gets one after it (resolvers/expiry.py)."""
    if not any(isinstance(e, MessageEventView) and e.message.expires_at is not None for e in events):
        return events
    now = services.clock()
    return [e for e in events if not (isinstance(e, MessageEventView) and is_expired(e.message.expires_at, now))]


async def _without_foreign_files(services: Services, viewer: Viewer, events: list[DurableEvent]) -> list[DurableEvent]:
    """Hides the attachments of conversations the viewer has left or been removed from.

    Their devices still hold the messages from before; only members get URLs of a
    conversation's files, and a replay must not fail on the ones it may not have.
    """
    with_files = {
        e.message.ref.conversation_id for e in events if isinstance(e, MessageEventView) and e.message.attachments
    }
    if not with_files:
        return events
    headers = await conversation_headers(services, viewer, list(with_files))
    foreign = {cid for cid in with_files if (header := headers.get(cid)) is None or not header.is_member}
    if not foreign:
        return events
    return [
        replace(e, message=replace(e.message, attachments=()))
        if isinstance(e, MessageEventView) and e.message.ref.conversation_id in foreign
        else e
        for e in events
    ]


async def _start_position(services: Services, viewer: Viewer, after: str | None) -> int:
    positions = await services.inbox_store.positions(viewer.device_id)
    if positions is None:
        raise Unauthenticated("This device has logged out.")
    acked, head = positions
    if after is None:
        return acked
    position = parse_cursor(after)
    if position > head:
        raise BadUserInput("That cursor is ahead of every event of this device.")
    return position


async def pending_events(services: Services, viewer: Viewer, *, after: str | None, first: int) -> list[DurableEvent]:
    """This device's pending durable events after `after` (default: its acknowledged cursor)."""
    if not 1 <= first <= MAX_PENDING_PAGE:
        raise BadUserInput(f"first is between 1 and {MAX_PENDING_PAGE}.")
    position = await _start_position(services, viewer, after)
    events, _, _ = await _read_after(services, viewer, position, first)
    return events


async def stream_events(services: Services, viewer: Viewer, *, after: str | None) -> AsyncIterator[Event]:
    """Replays pending events, then follows live ones: no gap, no duplicate, in order."""
    position = _Position(await _start_position(services, viewer, after), viewer.device_id)
    async with services.fanout.listen(viewer.user_id) as notices:
        # Listening before reading: whatever commits from here on also sends a notice.
        async for event in _replay(services, viewer, position):
            yield event
        feed = aiter(notices)
        while True:
            try:
                item = await (asyncio.wait_for(anext(feed), GAP_WAIT_SECONDS) if position.early else anext(feed))
            except StopAsyncIteration:
                return
            except TimeoutError:
                item = None  # the missing notice is lost, or slow: read the database
            if isinstance(item, EntryNotice):
                ready = position.accept(item)
                if ready is not None:
                    # The position still moves past an expired message: a replay would skip it too.
                    ready = _unexpired(services, ready)
                    services.telemetry.events_delivered(len(ready))
                    for event in ready:
                        yield event
                    continue
            elif isinstance(item, Signal):
                if revokes(item.data, viewer.device_id):
                    raise Unauthenticated("This device has logged out.")
                if (typing := decode_typing(item.data)) is not None:
                    yield TypingEventView(*typing)
                continue
            elif item is not None:
                log.info("user %s stream resyncing (%s)", viewer.user_id, item.reason)
            # Published after commit, every entry held early is in the database by now.
            position.early.clear()
            async for event in _replay(services, viewer, position):
                yield event


def _with_cursor(seq: int, body: Carried | object, ready: list[DurableEvent]) -> None:
    """Adds the event at `seq` to `ready`: nothing for another device's entry."""
    if isinstance(body, MessageView):
        ready.append(MessageEventView(format_cursor(seq), body))
    elif isinstance(body, ReceiptView):
        ready.append(ReceiptEventView(format_cursor(seq), body))
    elif isinstance(body, ToDeviceMessage):
        ready.append(ToDeviceEventView(format_cursor(seq), body))


@dataclass
class _Position:
    """The last inbox position a stream has yielded, and entries that arrived ahead of a missing one.

    Concurrent senders commit one user's entries in position order but may publish
    them in another; an entry that overtook its predecessor waits here briefly.
    """

    value: int
    # The stream's device: entries for the user's other devices pass without an event.
    device_id: int
    early: dict[int, Carried | object] = field(default_factory=dict)

    def accept(self, item: EntryNotice) -> list[DurableEvent] | None:
        """The events now in order (maybe none); None when the database must be read instead."""
        if item.seq <= self.value:
            return []  # already read with an earlier batch
        body = _shared_body(item.event, self.device_id) if item.event is not None else None
        if body is None:
            return None
        if item.seq != self.value + 1:
            if len(self.early) >= MAX_EARLY:
                return None
            self.early[item.seq] = body
            return []
        self.value = item.seq
        ready: list[DurableEvent] = []
        _with_cursor(item.seq, body, ready)
        while (body := self.early.pop(self.value + 1, None)) is not None:
            self.value += 1
            _with_cursor(self.value, body, ready)
        return ready


async def _replay(services: Services, viewer: Viewer, position: _Position) -> AsyncIterator[DurableEvent]:
    """Yields every event after `position`, in batches, advancing it."""
    while True:
        events, position.value, rows = await _read_after(services, viewer, position.value, REPLAY_BATCH)
        if events:
            services.telemetry.events_delivered(len(events))
        for event in events:
            yield event
        if rows < REPLAY_BATCH:
            return
