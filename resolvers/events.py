"""A device's durable events: pending ones for pull sync, and the live stream.

The stream subscribes to the user's bus channel first, then replays the inbox
after the cursor, then follows notices, each time reading from the database
everything after the last position it yielded. A notice is only a wake-up, so a
lost, late or duplicated notice can delay an event but never skip or repeat it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models import Device, EventKind, InboxEntry, Message
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ids import format_cursor, parse_cursor
from resolvers.inbox import head_position, read_entries
from resolvers.messages import MessageView
from resolvers.notify import user_channel
from resolvers.ports import Services

log = logging.getLogger("parley.events")

MAX_PENDING_PAGE = 500
REPLAY_BATCH = 200


@dataclass(frozen=True)
class MessageEventView:
    cursor: str
    message: MessageView


@dataclass(frozen=True)
class ReceiptView:
    conversation_id: int
    message_id: str
    reader_id: int
    status: str
    at: datetime


@dataclass(frozen=True)
class ReceiptEventView:
    cursor: str
    receipt: ReceiptView


@dataclass(frozen=True)
class ConversationEventView:
    cursor: str
    change: str
    conversation_id: int
    user_ids: list[int]
    actor_id: int
    at: datetime


@dataclass(frozen=True)
class TypingEventView:
    conversation_id: int
    user_id: int
    typing: bool
    at: datetime


DurableEvent = MessageEventView | ReceiptEventView | ConversationEventView
Event = DurableEvent | TypingEventView


def _render(entry: InboxEntry, message: Message | None) -> DurableEvent | None:
    cursor = format_cursor(entry.seq)
    if entry.kind is EventKind.MESSAGE:
        return MessageEventView(cursor, MessageView.from_row(message)) if message is not None else None
    data: dict[str, Any] = json.loads(entry.payload or "{}")
    at = datetime.fromisoformat(data["at"])
    if entry.kind is EventKind.RECEIPT:
        receipt = ReceiptView(data["conversation_id"], data["message_id"], data["reader_id"], data["status"], at)
        return ReceiptEventView(cursor, receipt)
    return ConversationEventView(
        cursor, data["change"], data["conversation_id"], data["user_ids"], data["actor_id"], at
    )


async def _read_after(
    services: Services, viewer: Viewer, after: int, limit: int
) -> tuple[list[DurableEvent], int, int]:
    """Events after `after`, the last position read and the rows read; `Unauthenticated` once the device is gone."""
    async with services.db.session() as session:
        if await session.get(Device, viewer.device_id) is None:
            raise Unauthenticated("This device has logged out.")
        rows = await read_entries(session, viewer.user_id, after=after, limit=limit)
    events = [event for entry, message in rows if (event := _render(entry, message)) is not None]
    return events, (rows[-1][0].seq if rows else after), len(rows)


async def _start_position(services: Services, viewer: Viewer, after: str | None) -> int:
    async with services.db.session() as session:
        device = await session.get(Device, viewer.device_id)
        if device is None:
            raise Unauthenticated("This device has logged out.")
        if after is None:
            return device.acked_seq
        position = parse_cursor(after)
        if position > await head_position(session, viewer.user_id):
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
    position = _Position(await _start_position(services, viewer, after))
    async with services.bus.subscribe(user_channel(viewer.user_id)) as notices:
        # Subscribed before reading: whatever commits from here on also sends a notice.
        async for event in _replay(services, viewer, position):
            yield event
        async for notice in notices:
            if isinstance(notice, str):
                data = json.loads(notice)
                if data.get("logout") == viewer.device_id:
                    raise Unauthenticated("This device has logged out.")
                if "ephemeral" in data:
                    if (typing := _typing(data["ephemeral"])) is not None:
                        yield typing
                    continue
                if int(data.get("seq", 0)) <= position.value:
                    continue  # already read with an earlier batch
            else:
                log.info("user %s stream resyncing (%s)", viewer.user_id, notice.reason)
            async for event in _replay(services, viewer, position):
                yield event


@dataclass
class _Position:
    """The last inbox position a stream has read."""

    value: int


async def _replay(services: Services, viewer: Viewer, position: _Position) -> AsyncIterator[DurableEvent]:
    """Yields every event after `position`, in batches, advancing it."""
    while True:
        events, position.value, rows = await _read_after(services, viewer, position.value, REPLAY_BATCH)
        for event in events:
            yield event
        if rows < REPLAY_BATCH:
            return


def _typing(data: dict[str, Any]) -> TypingEventView | None:
    try:
        return TypingEventView(
            int(data["conversation_id"]),
            int(data["user_id"]),
            bool(data["typing"]),
            datetime.fromisoformat(data["at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
