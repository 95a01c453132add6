"""Fan-out of small notices between server processes, on `broadcaster` with its known traps fixed.

The traps are those of broadcaster 0.3.1 with redis-py 8 (docs/upstream-notes.md): (1) a first subscriber
that never hears a message, (2) two first subscribers of one channel racing, (3) a Redis outage
that silences every subscription for good, (4) per-subscriber queues without a bound.
Messages are wake-up notices; a `Resync` tells a subscriber to re-read the database instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar
from urllib.parse import urlparse

from broadcaster import Broadcast, BroadcastBackend, Event
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from infra.coalesce import Coalescer
from infra.metrics import bus_reconnected, bus_resync, notices_dropped
from infra.redis_clients import RedisEndpoint, server_client
from resolvers.errors import Unavailable

logger = logging.getLogger("parley.bus")

# redis-py's own defaults are 5 s; a publish in a request should fail faster than that.
# A URL query (`?socket_timeout=...`) still overrides them: redis-py lets the URL win.
_CONNECT_TIMEOUT = 2.0
_COMMAND_TIMEOUT = 2.0
_FIRST_RECONNECT_DELAY = 0.1
# With Sentinels a failover's new master is there within seconds, and an attempt costs one Sentinel
# query: the subscriber tries at least this often, so notices resume soon after the promotion.
_SENTINEL_RECONNECT_MAX_DELAY = 1.0


@dataclass(frozen=True)
class Resync:
    """Told to a subscriber when it may have missed messages: re-read state from the database."""

    reason: str


class BusUnavailable(Unavailable):
    """The bus could not reach its broker (or is not connected): the ports' `Unavailable`."""


class Bus(Protocol):
    """Fan-out of small `str` notices between server processes."""

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str | Resync]]: ...

    async def ping(self) -> None: ...


class _Closed(enum.Enum):
    TOKEN = enum.auto()


T = TypeVar("T")


class Subscription(Generic[T]):
    """A bounded feed of items and `Resync` notices, in order (what `BroadcastBus.subscribe` yields)."""

    def __init__(self, max_queue: int) -> None:
        self._queue: asyncio.Queue[T | Resync | _Closed] = asyncio.Queue(maxsize=max_queue)
        self._closed = False

    @property
    def pending(self) -> int:
        """How many notices are waiting to be read (never more than `max_queue`)."""
        return self._queue.qsize()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T | Resync:
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # so that every later read ends too
            raise StopAsyncIteration
        return item

    def _offer(self, item: T | Resync) -> bool:
        """Queues `item` without waiting; True if the queue was full (overflow)."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Trap 4: a reader that fell behind must neither hold up the others nor grow without
            # bound. One Resync makes it re-read everything the dropped notices pointed at.
            notices_dropped(self._queue.qsize())
            bus_resync("overflow")
            self._drain()
            self._queue.put_nowait(item if isinstance(item, Resync) else Resync("overflow"))
            return True
        return False

    def _close(self) -> None:
        """Ends the iteration (the bus is shutting down)."""
        if not self._closed:
            self._closed = True
            self._drain()
            self._queue.put_nowait(_Closed.TOKEN)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


class _ResyncEvent(Event):
    """A Resync travelling the same path as messages, so it lands after what came before it."""


class _EventSource(Protocol):
    """The part of broadcaster's `Subscriber` we use."""

    async def get(self) -> Event: ...


class RedisBroadcastBackend(BroadcastBackend):
    """A Redis backend of `BroadcastBus`: broadcaster's interface plus batched publishing and a health check."""

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Publishes every (channel, message) pair, in order."""
        raise NotImplementedError

    async def ping(self) -> None:
        """Raises BusUnavailable unless the broker answers."""
        raise NotImplementedError


class _RedisBackend(RedisBroadcastBackend):
    """Redis pub/sub for `Broadcast`, with a supervised listener.

    Written against broadcaster's backend interface rather than as a subclass of its
    `RedisBackend`: that class sets its ready flag before SUBSCRIBE completes (trap 1), its listener
    dies on the first connection error (trap 3), and it builds its client without our timeouts;
    fixing those would override everything but its one-line publish.
    """

    # The pub/sub dialect: a subclass speaks sharded pub/sub (infra/redis_cluster.py).
    _MESSAGE = "message"
    _SUBSCRIBED = "subscribe"

    def __init__(self, url: str, *, reconnect_max_delay: float, endpoint: RedisEndpoint | None = None) -> None:
        # No super().__init__(): broadcaster's base class raises NotImplementedError there.
        # `endpoint` names Sentinels when there are any: each reconnect then asks them for the master.
        endpoint = endpoint or RedisEndpoint(url)
        # One retry for commands: the first one after a Redis restart meets a dead pooled
        # connection, and the retry reconnects. (A retried pipeline may publish twice; notices
        # are idempotent wake-ups.) When Redis is down the reconnect fails at once.
        self._client = server_client(endpoint, retries=1, connect_timeout=_CONNECT_TIMEOUT, timeout=_COMMAND_TIMEOUT)
        # No retries on the pub/sub connection (from_url's default, Redis()'s is 10; explicit so a
        # URL option cannot turn them on): with retries redis-py reconnects and resubscribes on
        # its own, and subscribers would never learn that messages were lost in between.
        self._sub_client = server_client(
            endpoint, retries=0, connect_timeout=_CONNECT_TIMEOUT, timeout=_COMMAND_TIMEOUT, decode_responses=True
        )
        self._reconnect_max_delay = reconnect_max_delay
        self._pubsub: PubSub | None = None  # None while Redis is unreachable
        self._channels: set[str] = set()  # wanted, whether or not Redis is reachable now
        # Per channel, what to do on each awaited SUBSCRIBE reply, in order: wake a subscriber
        # (a future) or, after a reconnect, send Resync (None).
        self._replies: dict[str, deque[asyncio.Future[None] | None]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        # Every send publishes: group-commit them into shared pipelines (infra/coalesce.py).
        self._publishes: Coalescer[Sequence[tuple[str, str]], None] = Coalescer(self._publish_batches, max_batch=200)
        # Serialises SUBSCRIBE/UNSUBSCRIBE with reconnecting, so no channel is missed by either.
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self._down_since: float | None = None

    async def connect(self) -> None:
        async with self._lock:
            try:
                await self._open()
            except (RedisError, OSError) as exc:
                # Not fatal: the supervisor keeps trying, and ping() tells /readyz meanwhile.
                logger.warning("Redis pub/sub unreachable (%s); retrying in the background", exc)
                self._down_since = time.monotonic()
        self._supervisor = asyncio.create_task(self._supervise(), name="parley.bus.redis")

    async def disconnect(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        pubsub, self._pubsub = self._pubsub, None
        self._release_waiters()
        if pubsub is not None:
            await _close_quietly(pubsub)
        await self._sub_client.aclose()
        await self._client.aclose()

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.add(channel)
            pubsub = self._pubsub
            if pubsub is None:
                return  # Redis is down: the supervisor subscribes on reconnect and sends Resync.
            reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._replies.setdefault(channel, deque()).append(reply)
            try:
                await self._send_subscribe(pubsub, [channel])
            except Exception as exc:  # any failure means the connection is gone
                await self._abandon(pubsub, exc)
                return
        # Trap 1: return only once Redis has confirmed, so that a message published right after
        # this returns is delivered (broadcaster returns once the command is merely sent).
        try:
            async with asyncio.timeout(_COMMAND_TIMEOUT):
                await reply
        except TimeoutError:
            async with self._lock:
                await self._abandon(pubsub, "no reply to SUBSCRIBE")

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.discard(channel)
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                await self._send_unsubscribe(pubsub, channel)
            except Exception as exc:  # any failure means the connection is gone
                await self._abandon(pubsub, exc)

    async def publish(self, channel: str, message: Any) -> None:
        await self.publish_many([(channel, message)])

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Publishes every item; concurrent callers share one round trip, each keeping its order."""
        await self._publishes.submit(items)

    async def _publish_batches(self, batches: list[Sequence[tuple[str, str]]]) -> list[None]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for items in batches:
                    for channel, message in items:
                        pipe.publish(channel, message)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"cannot publish to Redis: {exc}") from exc
        return [None] * len(batches)

    async def ping(self) -> None:
        """Raises BusUnavailable unless Redis answers."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"Redis does not answer: {exc}") from exc

    async def next_published(self) -> Event:
        return await self._events.get()

    async def _open(self) -> None:
        """Connects a fresh pub/sub connection and subscribes every wanted channel; lock held."""
        pubsub = self._sub_client.pubsub()
        channels = sorted(self._channels)
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            if channels:
                await self._send_subscribe(pubsub, channels)
        except BaseException:
            await _close_quietly(pubsub)
            raise
        # Each channel's Resync waits for its SUBSCRIBE reply: from then on nothing is missed.
        for channel in channels:
            self._replies.setdefault(channel, deque()).append(None)
        self._pubsub = pubsub
        if self._down_since is not None:
            bus_reconnected()
            logger.warning(
                "Redis pub/sub reconnected after %.1f s; resubscribed %d channel(s), their subscribers get Resync",
                time.monotonic() - self._down_since,
                len(channels),
            )
            self._down_since = None

    async def _send_subscribe(self, pubsub: PubSub, channels: Sequence[str]) -> None:
        await pubsub.subscribe(*channels)

    async def _send_unsubscribe(self, pubsub: PubSub, channel: str) -> None:
        await pubsub.unsubscribe(channel)

    async def _supervise(self) -> None:
        """Reads the pub/sub connection; when it drops, reconnects with backoff (trap 3)."""
        delay = _FIRST_RECONNECT_DELAY
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                try:
                    async with self._lock:
                        await self._open()
                except Exception as exc:  # keep trying whatever went wrong
                    logger.info("Redis still unreachable (%s); next attempt in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_max_delay)
                else:
                    delay = _FIRST_RECONNECT_DELAY
                continue
            try:
                # Blocking read, unlike redis-py's listen(), which returns while no channel is
                # subscribed (the root of trap 1 in broadcaster).
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
            except Exception as exc:  # this task must never die (trap 3)
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("unexpected error in the Redis pub/sub listener")
                self._connection_lost(pubsub, exc)
                await _close_quietly(pubsub)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == self._MESSAGE:
            self._events.put_nowait(Event(message["channel"], message["data"]))
        elif kind == self._SUBSCRIBED:
            channel: str = message["channel"]
            replies = self._replies.get(channel)
            if not replies:
                return
            reply = replies.popleft()
            if not replies:
                del self._replies[channel]
            if reply is None:
                bus_resync("reconnected")
                self._events.put_nowait(_ResyncEvent(channel, "reconnected"))
            elif not reply.done():
                reply.set_result(None)

    def _connection_lost(self, pubsub: PubSub, reason: object) -> None:
        if self._pubsub is not pubsub:
            return  # already handled
        self._pubsub = None
        self._down_since = time.monotonic()
        logger.warning("Redis pub/sub connection lost (%s); reconnecting, subscribers will get Resync", reason)
        self._release_waiters()

    def _release_waiters(self) -> None:
        # Subscribers waiting for a reply return now; their channels get Resync after reconnecting.
        for replies in self._replies.values():
            for reply in replies:
                if reply is not None and not reply.done():
                    reply.set_result(None)
        self._replies.clear()

    async def _abandon(self, pubsub: PubSub, reason: object) -> None:
        """Gives up a connection a command failed on; the supervisor's read then fails too."""
        self._connection_lost(pubsub, reason)
        connection = pubsub.connection
        if connection is not None:
            await connection.disconnect(nowait=True)


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py


class _Channel:
    """Our state for one channel: its subscribers and its single broadcaster subscription."""

    def __init__(self) -> None:
        # Trap 2: held while the broadcaster subscription is opened or closed, so concurrent
        # first subscribers share one instead of replacing each other's.
        self.lock = asyncio.Lock()
        self.refs = 0  # subscribers plus those still joining; the state goes away at 0
        self.subscribers: set[Subscription[str]] = set()
        self.stack: AsyncExitStack | None = None
        self.pump: asyncio.Task[None] | None = None


class BroadcastBus:
    """`Bus` on broadcaster: `memory://` within one process, `redis://host:port/db` (or a `RedisEndpoint`) across them.

    Each channel holds one `Broadcast` subscription, whose events a task copies into every
    subscriber's bounded queue. Broadcast's own per-subscriber queues are unbounded and its
    listener awaits each put (trap 4), and its bookkeeping breaks with concurrent first
    subscribers (trap 2); with a single subscription per channel neither applies.
    """

    def __init__(
        self,
        url: str | RedisEndpoint,
        *,
        channel_prefix: str = "",
        max_queue: int = 1000,
        reconnect_max_delay: float = 5.0,
    ) -> None:
        # An endpoint (infra/redis_clients.py) may name Sentinels; a URL is one server's (or memory://).
        self._endpoint = url if isinstance(url, RedisEndpoint) else None
        url = url.url if isinstance(url, RedisEndpoint) else url
        scheme = urlparse(url).scheme
        if scheme not in {"memory", "redis", "rediss"}:
            raise ValueError(f"unsupported bus URL {url!r}: use memory:// or redis://")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if reconnect_max_delay <= 0:
            raise ValueError("reconnect_max_delay must be positive")
        self._url = url
        self._is_redis = scheme != "memory"
        self._prefix = channel_prefix
        self._max_queue = max_queue
        if self._endpoint is not None and self._endpoint.sentinels:
            reconnect_max_delay = min(reconnect_max_delay, _SENTINEL_RECONNECT_MAX_DELAY)
        self._reconnect_max_delay = reconnect_max_delay
        # Built in connect(): asyncio objects belong to the event loop that uses them.
        self._broadcast: Broadcast | None = None
        self._redis: RedisBroadcastBackend | None = None
        self._channels: dict[str, _Channel] = {}

    async def connect(self) -> None:
        """Starts listening; with Redis down it retries in the background instead of failing."""
        if self._broadcast is not None:
            raise RuntimeError("the bus is already connected")
        if self._is_redis:
            redis = self._redis_backend(self._url, reconnect_max_delay=self._reconnect_max_delay)
            broadcast = Broadcast(backend=redis)
        else:
            redis, broadcast = None, Broadcast(self._url)
        await broadcast.connect()
        self._redis, self._broadcast = redis, broadcast

    def _redis_backend(self, url: str, *, reconnect_max_delay: float) -> RedisBroadcastBackend:
        """The backend for a redis:// URL (a subclass serves Redis Cluster)."""
        return _RedisBackend(url, reconnect_max_delay=reconnect_max_delay, endpoint=self._endpoint)

    async def disconnect(self) -> None:
        """Ends every subscriber's iteration and closes the connections."""
        broadcast, self._broadcast = self._broadcast, None
        if broadcast is None:
            return
        states = list(self._channels.values())
        self._channels.clear()
        for state in states:
            async with state.lock:
                await self._close(state)
                for subscription in state.subscribers:
                    subscription._close()
        await broadcast.disconnect()
        self._redis = None

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Publishes (channel, message) pairs in order; one round trip on Redis."""
        if not items:
            return
        broadcast = self._broadcast
        if broadcast is None:
            raise BusUnavailable("the bus is not connected")
        wire = [(self._prefix + channel, message) for channel, message in items]
        if self._redis is not None:
            await self._redis.publish_many(wire)
        else:
            for channel, message in wire:
                await broadcast.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription[str]]:
        """Subscribes to `channel`; what is published once this has entered is delivered."""
        subscription: Subscription[str] = Subscription(self._max_queue)
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.refs += 1
        try:
            # Shielded: a cancelled subscriber must not leave a subscription half opened or closed.
            await asyncio.shield(self._join(channel, state, subscription))
            yield subscription
        finally:
            await asyncio.shield(self._leave(channel, state, subscription))

    async def ping(self) -> None:
        """Raises BusUnavailable if the broker does not answer."""
        if self._broadcast is None:
            raise BusUnavailable("the bus is not connected")
        if self._redis is not None:
            await self._redis.ping()

    async def _join(self, channel: str, state: _Channel, subscription: Subscription[str]) -> None:
        async with state.lock:
            broadcast = self._broadcast
            if broadcast is None:
                raise BusUnavailable("the bus is not connected")
            if state.pump is None:
                stack = AsyncExitStack()
                source = await stack.enter_async_context(broadcast.subscribe(self._prefix + channel))
                state.stack = stack
                state.pump = asyncio.create_task(self._pump(channel, state, source), name=f"parley.bus.pump:{channel}")
            state.subscribers.add(subscription)

    async def _leave(self, channel: str, state: _Channel, subscription: Subscription[str]) -> None:
        async with state.lock:
            state.subscribers.discard(subscription)  # trap 2: discard, it may never have joined
            subscription._close()  # reading it after leaving ends instead of waiting forever
            state.refs -= 1
            if state.refs > 0:
                return
            await self._close(state)
            # Whoever started joining while it closed keeps this state and reopens it.
            if state.refs == 0 and self._channels.get(channel) is state:
                del self._channels[channel]

    async def _close(self, state: _Channel) -> None:
        pump, stack = state.pump, state.stack
        state.pump, state.stack = None, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        if stack is not None:
            await stack.aclose()

    async def _pump(self, channel: str, state: _Channel, source: _EventSource) -> None:
        while True:
            event = await source.get()
            item: str | Resync = Resync(event.message) if isinstance(event, _ResyncEvent) else event.message
            for subscription in state.subscribers:
                if subscription._offer(item):
                    logger.warning(
                        "a subscriber of %r fell %d notices behind: dropped them, sent Resync",
                        channel,
                        self._max_queue,
                    )
