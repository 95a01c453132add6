"""The open-loop load generator: many graphql-transport-ws connections in one asyncio process.

Each device is one `Session`: a WebSocket that subscribes to `events` and sends
its mutations (`sendMessage`, `acknowledge`) over the same socket as further
`subscribe` operations, as an app does. Sends are scheduled at fixed times
(`offer`), never "when the previous one returned", so a slow server cannot slow
the offered load down and hide its queueing; the ledger counts latency from the
scheduled time.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from bench.ledger import Ledger, Phase

Json = dict[str, Any]

# What an app subscribes to; the server work per event depends on this shape, so it is one constant.
EVENTS_SUBSCRIPTION = (
    "subscription { events { __typename "
    "... on MessageEvent { cursor message { id clientId conversationId body sentAt sender { id username displayName } } } "
    "... on ReceiptEvent { cursor receipt { conversationId messageId status at } } } }"
)
SEND_MESSAGE = "mutation SendMessage($input: SendMessageInput!) { sendMessage(input: $input) { id clientId sentAt } }"
ACKNOWLEDGE = "mutation Acknowledge($cursor: String!) { acknowledge(cursor: $cursor) }"

EVENTS_ID = "events"
# Parley allows 20 operations in flight per connection by default (PARLEY_MAX_SUBSCRIPTIONS_PER_CONNECTION),
# mutations over the socket included: the events subscription takes one and one stays spare, so a busy
# sender queues its sends here, on the client, and the wait shows in the latency.
MAX_MUTATIONS_IN_FLIGHT = 18
FILLER = "the quick brown fox jumps over the lazy dog"
_PONG = orjson.dumps({"type": "pong"})


def body_of(sender: int, seq: int) -> str:
    """A message body that says who sent it and its sequence number (for loss and duplicate checks)."""
    return f"{sender} {seq} {FILLER}"


def key_of(body: str) -> tuple[int, int]:
    """(sender, sequence number) from a body made by `body_of`."""
    sender, seq, _ = body.split(" ", 2)
    return int(sender), int(seq)


class SessionClosed(RuntimeError):
    """The connection closed before the operation finished."""


EventHandler = Callable[["Session", Json, float], None]


class Session:
    """One device's graphql-transport-ws connection: an events subscription plus mutations."""

    def __init__(self, index: int, ws: ClientConnection, on_event: EventHandler) -> None:
        self.index = index
        self._ws = ws
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._ops: dict[str, asyncio.Future[tuple[Json, float]]] = {}
        self._slots = asyncio.Semaphore(MAX_MUTATIONS_IN_FLIGHT)
        self._reader: asyncio.Task[None] | None = None
        self.closed = False
        self.stream_ended = False
        self.errors: list[str] = []
        # Acknowledgement state, kept by `Acknowledger`.
        self.newest_cursor: str | None = None
        self.newest_message_id: str | None = None
        self.ack_pending = False
        self.last_ack_at = -math.inf

    @classmethod
    async def open(cls, url: str, token: str, index: int, on_event: EventHandler, *, within: float = 60) -> Session:
        """Connects, authenticates with `token` and waits for connection_ack."""
        ws = await connect(
            url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
            # Offers per-message deflate as browsers do: a server that accepted it would pay for it here.
            compression="deflate",
            proxy=None,
            open_timeout=within,
            ping_interval=None,  # the server pings; the client answers
            close_timeout=2,
            max_size=4 * 1024 * 1024,
        )
        try:
            init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            await ws.send(orjson.dumps(init), text=True)
            reply = orjson.loads(await asyncio.wait_for(ws.recv(decode=False), within))
        except BaseException:
            ws.transport.abort()
            raise
        if reply.get("type") != "connection_ack":
            ws.transport.abort()
            raise ConnectionError(f"device {index}: expected connection_ack, got {reply}")
        session = cls(index, ws, on_event)
        session._reader = asyncio.create_task(session._read())
        return session

    async def subscribe_events(self) -> None:
        """Starts the `events` subscription (from the device's acknowledged cursor)."""
        frame = {"id": EVENTS_ID, "type": "subscribe", "payload": {"query": EVENTS_SUBSCRIPTION}}
        await self._ws.send(orjson.dumps(frame), text=True)

    async def mutate(self, query: str, variables: Json) -> tuple[Json, float]:
        """Runs a mutation over the socket: its result payload and the monotonic time it arrived."""
        await self._slots.acquire()
        op = str(next(self._ids))
        future: asyncio.Future[tuple[Json, float]] = asyncio.get_running_loop().create_future()
        self._ops[op] = future
        if self.closed:
            self._finish(op)
            raise SessionClosed(f"device {self.index} is disconnected")
        frame = {"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        try:
            await self._ws.send(orjson.dumps(frame), text=True)
        except ConnectionClosed as closed:
            self._finish(op)
            raise SessionClosed(f"device {self.index} is disconnected") from closed
        return await future

    async def ping(self, within: float) -> bool:
        """True when the connection answers a WebSocket ping within `within` seconds."""
        try:
            pong = await self._ws.ping()
            await asyncio.wait_for(pong, within)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    @property
    def healthy(self) -> bool:
        """Open, and the events stream neither ended nor failed."""
        return not self.closed and not self.stream_ended and not self.errors

    async def close(self) -> None:
        """Closes the connection (aborting it when the close handshake takes too long)."""
        try:
            await asyncio.wait_for(self._ws.close(), 3)
        except (TimeoutError, ConnectionClosed, OSError):
            self._ws.transport.abort()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def abort(self) -> None:
        """Drops the connection at once (no close handshake)."""
        self._ws.transport.abort()

    def _finish(self, op: str) -> None:
        if self._ops.pop(op, None) is not None:
            self._slots.release()

    def _next(self, op: str, payload: Json, at: float) -> None:
        if op == EVENTS_ID:
            if payload.get("errors"):
                self.errors.append(str(payload["errors"])[:300])
            if payload.get("data"):
                self._on_event(self, payload["data"]["events"], at)
        elif (future := self._ops.get(op)) is not None and not future.done():
            future.set_result((payload, at))

    def _error(self, op: str, payload: object, at: float) -> None:
        # An `error` message ends its operation: no `complete` follows.
        if op == EVENTS_ID:
            self.stream_ended = True
            self.errors.append(str(payload)[:300])
            return
        if (future := self._ops.get(op)) is not None and not future.done():
            future.set_result(({"errors": payload}, at))
        self._finish(op)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._ws.recv(decode=False)
                at = time.monotonic()  # before parsing: parsing is the client's cost, not the server's
                message = orjson.loads(frame)
                kind = message.get("type")
                if kind == "next":
                    self._next(message["id"], message["payload"], at)
                elif kind == "complete":
                    if message["id"] == EVENTS_ID:
                        self.stream_ended = True
                    else:
                        self._finish(message["id"])
                elif kind == "error":
                    self._error(message["id"], message.get("payload"), at)
                elif kind == "ping":
                    await self._ws.send(_PONG, text=True)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            for op, future in list(self._ops.items()):
                if not future.done():
                    future.set_exception(SessionClosed(f"device {self.index} was disconnected"))
                    # Marked as seen: at the end of a run nobody may be waiting for it any more.
                    future.exception()
                self._finish(op)


@dataclass
class Tasks:
    """Fire-and-forget tasks that must not be garbage-collected and are cancelled at the end."""

    running: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs the coroutine in the background."""
        task = asyncio.create_task(coroutine)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def cancel(self) -> None:
        """Cancels whatever still runs and waits for it."""
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Acknowledger:
    """Acknowledges each device's newest cursor every `interval` while events come in, like an app.

    The first event after a quiet spell is acknowledged `interval` later (with
    whatever arrived meanwhile), then every `interval` while there is more, one
    acknowledgement in flight at a time: acknowledgements are batched, never one
    per event under load.
    """

    def __init__(
        self, tasks: Tasks, interval: float, on_sent: Callable[[Session, str | None, float], None] | None = None
    ) -> None:
        self._tasks = tasks
        self._interval = interval
        self._on_sent = on_sent
        self.sent = 0
        self.errors = 0
        self.first_error: str | None = None

    def note(self, session: Session, cursor: str, message_id: str | None) -> None:
        """The device has an event up to `cursor` to acknowledge."""
        session.newest_cursor = cursor
        session.newest_message_id = message_id
        if not session.ack_pending:
            session.ack_pending = True
            self._tasks.spawn(self._acknowledge(session))

    async def _acknowledge(self, session: Session) -> None:
        try:
            await asyncio.sleep(self._interval)
            while True:
                wait = session.last_ack_at + self._interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                cursor = session.newest_cursor
                session.last_ack_at = time.monotonic()
                if self._on_sent is not None:
                    self._on_sent(session, session.newest_message_id, session.last_ack_at)
                payload, _ = await session.mutate(ACKNOWLEDGE, {"cursor": cursor})
                self.sent += 1
                if payload.get("errors"):
                    self.errors += 1
                    self.first_error = self.first_error or str(payload["errors"])[:300]
                if session.newest_cursor == cursor:
                    return
        except SessionClosed:
            return
        finally:
            session.ack_pending = False


class ReceiptClock:
    """acknowledge sent (by the recipient) → DELIVERED receipt for that message (at the sender)."""

    def __init__(self) -> None:
        self._acked: dict[str, tuple[float, Phase]] = {}
        self.phase: Phase | None = None

    def ack_sent(self, _session: Session, message_id: str | None, at: float) -> None:
        """A device acknowledged up to `message_id` at `at`."""
        if message_id is not None and self.phase is not None:
            self._acked[message_id] = (at, self.phase)

    def receipt(self, message_id: str, at: float) -> None:
        """The sender got a receipt for `message_id` at `at`."""
        acked = self._acked.pop(message_id, None)
        if acked is not None:
            acked[1].receipt_latencies.append(at - acked[0])


class Traffic:
    """The event handler of every session: arrivals to the ledger, cursors to the acknowledger."""

    def __init__(self, ledger: Ledger, acks: Acknowledger | None, receipts: ReceiptClock | None = None) -> None:
        self.ledger = ledger
        self.acks = acks
        self.receipts = receipts
        self.other_events = 0

    def on_event(self, session: Session, event: Json, at: float) -> None:
        """Handles one `events` payload."""
        kind = event.get("__typename")
        if kind == "MessageEvent":
            message = event["message"]
            self.ledger.arrive(key_of(message["body"]), session.index, at)
            if self.acks is not None:
                self.acks.note(session, event["cursor"], message["id"])
        elif kind == "ReceiptEvent":
            if self.receipts is not None:
                self.receipts.receipt(event["receipt"]["messageId"], at)
            if self.acks is not None:
                self.acks.note(session, event["cursor"], None)
        else:
            # ConversationEvent (CREATED) and the like: the next acknowledged cursor covers them.
            self.other_events += 1


@dataclass
class Sender:
    """A sending device, the conversation it writes to and who must receive what it sends."""

    session: Session
    conversation_id: str
    recipients: frozenset[int]
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def index(self) -> int:
        """The sending device's index."""
        return self.session.index


@dataclass
class SendStats:
    """Sends still waiting for their result, and those the server refused, with the first reason."""

    in_flight: int = 0
    errors: int = 0
    first_error: str | None = None


async def _send(ledger: Ledger, stats: SendStats, sender: Sender, key: tuple[int, int]) -> None:
    variables = {
        "input": {
            "conversationId": sender.conversation_id,
            "clientId": f"bench-{key[0]}-{key[1]}",
            "body": body_of(*key),
        }
    }
    try:
        payload, at = await sender.session.mutate(SEND_MESSAGE, variables)
    except SessionClosed as closed:
        ledger.failed(key)
        stats.errors += 1
        stats.first_error = stats.first_error or str(closed)
        return
    finally:
        stats.in_flight -= 1
    if payload.get("errors"):
        ledger.failed(key)
        stats.errors += 1
        stats.first_error = stats.first_error or str(payload["errors"])[:300]
    else:
        ledger.sent(key, at)


def send_now(ledger: Ledger, stats: SendStats, tasks: Tasks, sender: Sender, *, phase: Phase, scheduled: float) -> None:
    """Registers the sender's next message (due at `scheduled`) and sends it in the background."""
    key = (sender.index, next(sender.seq))
    ledger.expect(key, scheduled, sender.recipients, phase)
    stats.in_flight += 1
    tasks.spawn(_send(ledger, stats, sender, key))


async def offer(
    ledger: Ledger,
    stats: SendStats,
    tasks: Tasks,
    senders: Sequence[Sender],
    phase: Phase,
    *,
    rate: float,
    duration: float,
) -> None:
    """Open loop: message j is due at start + j/rate, round-robin over the senders, whatever the server does."""
    count = max(1, round(rate * duration))
    start = time.monotonic() + 0.01
    for j in range(count):
        due = start + j / rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        send_now(ledger, stats, tasks, senders[j % len(senders)], phase=phase, scheduled=due)


async def drain(phase: Phase, stats: SendStats, *, grace: float, cap: float) -> None:
    """Waits until every delivery of the phase arrived, or nothing arrived for `grace` s, or `cap` s passed."""
    started = last_progress = time.monotonic()
    seen = -1
    while time.monotonic() - started < cap:
        if phase.delivered >= phase.expected_deliveries and stats.in_flight == 0:
            return
        if phase.delivered != seen:
            seen, last_progress = phase.delivered, time.monotonic()
        elif time.monotonic() - last_progress > grace:
            return
        await asyncio.sleep(0.02)


async def open_sessions(
    urls: Sequence[str],
    tokens: Sequence[str],
    on_event: EventHandler,
    *,
    first_index: int = 0,
    concurrency: int | None = None,
    subscribe: bool = True,
) -> list[Session]:
    """Connects one session per token (round-robin over `urls`) and subscribes each to `events`."""
    gate = asyncio.Semaphore(concurrency or len(tokens) or 1)

    async def one(position: int, token: str) -> Session:
        async with gate:
            index = first_index + position
            session = await Session.open(urls[index % len(urls)], token, index, on_event)
            if subscribe:
                await session.subscribe_events()
            return session

    results = await asyncio.gather(*(one(n, token) for n, token in enumerate(tokens)), return_exceptions=True)
    sessions = [result for result in results if isinstance(result, Session)]
    failures = [result for result in results if not isinstance(result, Session)]
    if failures:
        await close_sessions(sessions)
        raise RuntimeError(f"{len(failures)} of {len(tokens)} connections failed; first: {failures[0]!r}")
    return sessions


async def close_sessions(sessions: Sequence[Session]) -> None:
    """Closes every session, a few hundred at a time."""
    for start in range(0, len(sessions), 500):
        await asyncio.gather(*(session.close() for session in sessions[start : start + 500]))
