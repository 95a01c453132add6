"""Redis Cluster support: the client, hash-tagged key prefixes, and the bus on sharded pub/sub.

With `settings.redis_cluster`, `PARLEY_REDIS_URL` names one node of a Redis Cluster
(7.0 or later) and redis-py's `RedisCluster` discovers the others.

- **Bus**: `SSUBSCRIBE`/`SPUBLISH` (sharded pub/sub). A channel lives on the master
  that owns its slot, and a notice travels only within that shard, where plain
  `PUBLISH` is copied to every node of the cluster. The fan-out channels
  (`inbox:0` … `inbox:15`, infra/fanout.py) hash to different slots, so their
  traffic spreads over the masters; `presence` is one channel, so one shard.
- **Multi-key scripts** need all their keys in one slot: the presence registry
  (infra/presence_redis.py) and the push queue's streams (infra/push/queue.py) get a
  prefix with a hash tag (`{parley:presence}:conn:42`), keeping their scripts and
  transactions as they are. Rate-limit counters, last-sent markers and every other
  single-key command keep the plain prefix and spread over the slots.

The single-Redis mode does not go through this module: its keys, scripts and bus
are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from broadcaster import Event
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from infra.bus import (
    _COMMAND_TIMEOUT,
    _CONNECT_TIMEOUT,
    _FIRST_RECONNECT_DELAY,
    BroadcastBus,
    BusUnavailable,
    RedisBroadcastBackend,
    _RedisBackend,
    _ResyncEvent,
)
from infra.coalesce import Coalescer
from infra.metrics import bus_resync

logger = logging.getLogger("parley.bus.cluster")

# What a command against the cluster raises when it cannot be served: RedisClusterException is
# not a RedisError (slot not covered, cluster down, no node reachable at start).
CLUSTER_ERRORS = (RedisError, RedisClusterException, OSError)

# How often the slot map is re-read even when nothing went wrong: a slot moved while no
# connection of ours dropped still reaches its new owner within this bound.
_TOPOLOGY_CHECK_SECONDS = 30.0


def hash_tagged(prefix: str, name: str) -> str:
    """A key prefix whose keys share one slot: `{parley:presence}:` for prefix `parley:` and name `presence`."""
    return f"{{{prefix}{name}}}:"


def cluster_client(url: str, *, max_connections: int = 64, timeout: float = 5.0) -> RedisCluster:
    """A `RedisCluster` from the URL of any node; it connects (and discovers the others) on first use.

    Unlike the single-Redis pool, redis-py's cluster pools do not wait for a free
    connection: past `max_connections` per node a command fails at once. Batching
    (infra/redis_batch.py) keeps a process far below that.
    """
    return RedisCluster.from_url(
        url, max_connections=max_connections, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def _node_url(url: str, node: ClusterNode) -> str:
    """`url` (with its credentials, TLS scheme and options) pointed at one node."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{node.host}:{node.port}" if credentials else f"{node.host}:{node.port}"
    return urlunsplit((parts.scheme, netloc, "/0", parts.query, ""))


class _ShardListener(_RedisBackend):
    """The sharded subscriptions held on one master: infra/bus.py's supervised listener, speaking SSUBSCRIBE.

    It reconnects with backoff and sends Resync for its channels as the single-Redis
    backend does; what it cannot know (its slots went to another master) it reports
    through `on_trouble`, and the cluster backend moves those channels.
    """

    _MESSAGE = "smessage"
    _SUBSCRIBED = "ssubscribe"

    def __init__(
        self,
        url: str,
        *,
        reconnect_max_delay: float,
        events: asyncio.Queue[Event],
        on_trouble: Callable[[], None],
    ) -> None:
        super().__init__(url, reconnect_max_delay=reconnect_max_delay)
        self._events = events  # one queue for every master: the cluster backend's
        self._on_trouble = on_trouble

    @property
    def channels(self) -> set[str]:
        """The channels this listener is asked to hold (subscribed now, or once it reconnects)."""
        return self._channels

    async def _send_subscribe(self, pubsub: PubSub, channels: Sequence[str]) -> None:
        # One SSUBSCRIBE may only name channels of one slot (CROSSSLOT otherwise).
        by_slot: dict[int, list[str]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(channel.encode())].append(channel)
        for group in by_slot.values():
            await pubsub.ssubscribe(*group)

    async def _send_unsubscribe(self, pubsub: PubSub, channel: str) -> None:
        await pubsub.sunsubscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        if channel in self._channels:  # else the server dropped it already: SUNSUBSCRIBE would answer MOVED
            await super().unsubscribe(channel)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "sunsubscribe" and message["channel"] in self._channels:
            # Not asked for: the server dropped the channel because its slot moved to another master.
            logger.warning("Redis dropped shard channel %r (its slot moved); re-routing", message["channel"])
            self._channels.discard(message["channel"])
            self._on_trouble()
        super()._dispatch(message)

    def _connection_lost(self, pubsub: PubSub, reason: object) -> None:
        super()._connection_lost(pubsub, reason)
        self._on_trouble()  # the master may be gone for good (a failover): re-read the slot map


class ClusterBackend(RedisBroadcastBackend):
    """Sharded pub/sub on a Redis Cluster for `Broadcast`.

    redis-py 8.1 has asyncio sharded pub/sub (`RedisCluster.pubsub().ssubscribe`), but its
    reader polls the masters' connections in turn with a timeout, and its per-node
    connections resubscribe on their own after a drop, so subscribers would never learn
    that notices were lost. Instead each master gets a listener of our own
    (`_ShardListener`: a blocking read, reconnect with backoff, Resync), and this class
    routes each channel to the master owning its slot, re-reading the slot map when a
    listener loses its connection or a channel is dropped, and periodically.
    Publishing goes through the cluster client's pipeline, which groups by slot.
    """

    def __init__(self, url: str, *, reconnect_max_delay: float) -> None:
        # No super().__init__(): broadcaster's base class raises NotImplementedError there.
        self._url = url
        self._reconnect_max_delay = reconnect_max_delay
        self._cluster = RedisCluster.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_COMMAND_TIMEOUT
        )
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._shards: dict[str, _ShardListener] = {}  # node name (host:port) -> its listener
        self._owner: dict[str, str] = {}  # channel -> the node it is subscribed on
        self._channels: set[str] = set()  # wanted, whether or not routed yet
        # Serialises subscribing with re-routing, so a channel is never on two masters or none.
        self._lock = asyncio.Lock()
        self._trouble = asyncio.Event()
        self._publishes: Coalescer[Sequence[tuple[str, str]], None] = Coalescer(self._publish_batches, max_batch=200)
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._retiring: set[asyncio.Task[None]] = set()  # listeners of masters left without channels

    async def connect(self) -> None:
        try:
            await self._cluster.initialize()
        except CLUSTER_ERRORS as exc:
            # Not fatal: the watcher keeps trying, and ping() tells /readyz meanwhile.
            logger.warning("Redis Cluster unreachable (%s); retrying in the background", exc)
            self._trouble.set()
        self._watcher = asyncio.create_task(self._watch_topology(), name="parley.bus.cluster")

    async def disconnect(self) -> None:
        # Flag and wake as well as cancel: on Python 3.11 a cancel that lands as redis-py's
        # internal `asyncio.wait_for` completes is lost, and the watcher would sleep on.
        self._closed = True
        self._trouble.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await asyncio.gather(*self._retiring, return_exceptions=True)
        shards = list(self._shards.values())
        self._shards.clear()
        for shard in shards:
            await shard.disconnect()
        await self._cluster.aclose()

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.add(channel)
            node = self._owner_of(channel)
            if node is None:
                self._trouble.set()  # no slot map yet: the watcher subscribes it, with Resync
                return
            await self._subscribe_on(node, channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.discard(channel)
            name = self._owner.pop(channel, None)
            shard = self._shards.get(name) if name else None
            if shard is not None:
                await shard.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self.publish_many([(channel, message)])

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        """SPUBLISHes every item; concurrent callers share one pipeline (one round trip per master)."""
        await self._publishes.submit(items)

    async def _publish_batches(self, batches: list[Sequence[tuple[str, str]]]) -> list[None]:
        try:
            async with self._cluster.pipeline(transaction=False) as pipe:
                for items in batches:
                    for channel, message in items:
                        pipe.execute_command("SPUBLISH", channel, message)
                await pipe.execute()
        except CLUSTER_ERRORS as exc:
            raise BusUnavailable(f"cannot publish to Redis Cluster: {exc}") from exc
        return [None] * len(batches)

    async def ping(self) -> None:
        """Raises BusUnavailable unless every master answers (a missing shard loses its channels' notices)."""
        try:
            await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
        except CLUSTER_ERRORS as exc:
            raise BusUnavailable(f"Redis Cluster does not answer: {exc}") from exc

    async def next_published(self) -> Event:
        return await self._events.get()

    def _owner_of(self, channel: str) -> ClusterNode | None:
        """The master owning `channel`'s slot, per the last slot map read (None before the first)."""
        try:
            return self._cluster.get_node_from_key(channel)
        except CLUSTER_ERRORS:
            return None

    async def _subscribe_on(self, node: ClusterNode, channel: str) -> None:
        """Subscribes `channel` on `node`'s listener (lock held); returns once confirmed or the node is down."""
        shard = self._shards.get(node.name)
        if shard is None:
            shard = _ShardListener(
                _node_url(self._url, node),
                reconnect_max_delay=self._reconnect_max_delay,
                events=self._events,
                on_trouble=self._trouble.set,
            )
            await shard.connect()
            self._shards[node.name] = shard
        self._owner[channel] = node.name
        await shard.subscribe(channel)

    async def _watch_topology(self) -> None:
        """Re-reads the slot map after trouble (and every so often) and moves channels whose master changed."""
        delay = _FIRST_RECONNECT_DELAY
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TOPOLOGY_CHECK_SECONDS):
                    await self._trouble.wait()
            if self._closed:
                return
            self._trouble.clear()
            try:
                await self._reroute()
            except Exception as exc:  # keep trying whatever went wrong
                logger.info("Redis Cluster routing incomplete (%s); next attempt in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max_delay)
                self._trouble.set()
            else:
                delay = _FIRST_RECONNECT_DELAY

    async def _reroute(self) -> None:
        await self._cluster.nodes_manager.initialize()
        async with self._lock:
            moved, stale = 0, 0
            for channel in sorted(self._channels):
                node = self._owner_of(channel)
                if node is None:
                    raise BusUnavailable(f"no master serves the slot of {channel!r}")
                old = self._owner.get(channel)
                shard = self._shards.get(old) if old else None
                if old == node.name:
                    if shard is None or channel not in shard.channels:
                        # Dropped by its master, yet the node we asked still names that master: the
                        # slot map has not spread yet (nodes learn a move by gossip). Ask again soon.
                        stale += 1
                    continue
                if shard is not None:
                    # Best effort: a dead master's listener just forgets the channel.
                    await shard.unsubscribe(channel)
                await self._subscribe_on(node, channel)
                # Whatever was published between losing the old subscription and this one is lost.
                self._events.put_nowait(_ResyncEvent(channel, "moved"))
                bus_resync("moved")  # counted with the reconnects' resyncs
                moved += 1
            for name, shard in list(self._shards.items()):
                if not shard.channels:
                    del self._shards[name]
                    # A task of its own: disconnect() swallows a CancelledError while it awaits its
                    # listener's end, which would swallow this watcher's own cancellation too.
                    closing = asyncio.create_task(shard.disconnect(), name="parley.bus.cluster.retire")
                    self._retiring.add(closing)
                    closing.add_done_callback(self._retiring.discard)
        if moved:
            logger.warning("Redis Cluster slots moved: %d channel(s) re-subscribed on their new masters", moved)
        if stale:
            raise BusUnavailable(f"{stale} channel(s) dropped by a master the slot map still names")


class ClusterBus(BroadcastBus):
    """`BroadcastBus` on a Redis Cluster: the same subscriptions and traps fixed, over sharded pub/sub."""

    def _redis_backend(self, url: str, *, reconnect_max_delay: float) -> RedisBroadcastBackend:
        return ClusterBackend(url, reconnect_max_delay=reconnect_max_delay)
