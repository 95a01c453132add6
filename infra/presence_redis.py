"""Who is online, cluster-wide, and when each user was last seen, in Redis (`RedisPresence`).

The registry (Redis), as the design describes it:

- `conn:<user>`: hash node -> that node's live sockets of the user. Online = the hash exists.
- `node-users:<node>`: hash user -> the same count, so a dead node's entries can be found.
- `nodes`: hash node -> when it last refreshed (epoch seconds), the nodes that may hold entries.
- `node:<node>`: the node's liveness key, refreshed every third of its TTL.
- `seen:<user>`: last seen (epoch seconds); `pseq:<user>`: how many transitions the user has had.

Every process sweeps: a node whose liveness key expired loses its entries in one
atomic script (so concurrent sweepers announce each transition once), its users
left with no entry are announced offline, and their last seen becomes the node's
last refresh. A clean shutdown removes the node's entries the same way. A node
counts its sockets locally and writes the *absolute* count, so writes are
idempotent and the latest one wins; when a write fails, its liveness key had
expired (a long pause, a Redis restart, a sweep), or another Redis process
answers its refresh (a Sentinel failover or a restart: replication is
asynchronous, so the new master may lack the last writes), it registers its
whole local state again.

The scripts build keys from the prefix and ids. On a Redis Cluster the registry
gets a prefix with a hash tag (`{parley:presence}:`, infra/redis_cluster.py), so all
its keys lie in one slot and the scripts run unchanged on the master owning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.outages import outage_boundary
from infra.presence_hub import HubWatchers, PresenceHub, from_epoch
from infra.presence_scripts import DEAD_NODES, ONLINE, REFRESH, REGISTER, REMOVE_NODE, SET_COUNT, STATES
from infra.redis_batch import RedisBatch
from resolvers.records import PresenceChange, PresenceState

log = logging.getLogger("parley.presence")

DEFAULT_NODE_TTL = 30.0
DEFAULT_LAST_SEEN_TTL = 90 * 86400


class RedisPresence(HubWatchers):
    """Presence shared by every process through Redis (the layout is in the module docstring).

    Scripts go through `RedisBatch` as EVAL (not redis-py's Script, which asks SCRIPT EXISTS
    first: a second round trip per batch); its batches run one after another in submission
    order, which is what makes "the latest absolute count wins" hold. The reads and `touch`
    raise a Redis outage as `Unavailable`; connecting, disconnecting and revealing never raise.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        prefix: str,
        node_id: str,
        hub: PresenceHub | None = None,
        node_ttl: float = DEFAULT_NODE_TTL,
        last_seen_ttl: int = DEFAULT_LAST_SEEN_TTL,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = redis
        # Connects, disconnects and activity come in bursts (a reconnect storm): share round trips.
        self._batch = batch or RedisBatch(redis)
        self._prefix = prefix
        self._node = node_id
        self._hub = hub
        self._node_ttl = node_ttl
        self._ttl = last_seen_ttl
        self._local: Counter[int] = Counter()  # this node's sockets per user: the truth Redis is repaired from
        self._dirty = False  # a write failed: register the local state again
        self._server = ""  # run id of the Redis process that answered the last refresh
        self._closed = False
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> str:
        """This process's name in the registry."""
        return self._node

    def _key(self, kind: str, name: object) -> str:
        return f"{self._prefix}{kind}:{name}"

    @outage_boundary("Redis")
    async def touch(self, user_id: int) -> datetime:
        """Records activity now and returns the stored time."""
        stored = f"{time.time():.3f}"
        await self._batch.call("SET", self._key("seen", user_id), stored, "EX", self._ttl)
        return datetime.fromtimestamp(float(stored), UTC)  # as `last_seen` will read it back

    @outage_boundary("Redis")
    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        """Last-seen times of those users that were ever seen."""
        if not user_ids:
            return {}
        values = await self._redis.mget([self._key("seen", uid) for uid in user_ids])
        return {
            uid: datetime.fromtimestamp(float(value), UTC)
            for uid, value in zip(user_ids, values, strict=True)
            if value is not None
        }

    @outage_boundary("Redis")
    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with at least one live connection on any node: one command however many."""
        if not user_ids:
            return set()
        keys = [self._key("conn", uid) for uid in user_ids]
        found = await self._batch.call("EVAL", ONLINE, len(keys), *keys)
        return {uid for uid, exists in zip(user_ids, found, strict=True) if exists}

    @outage_boundary("Redis")
    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        """Online, last seen and transition number of each user, read atomically."""
        if not user_ids:
            return {}
        keys = [self._key(kind, uid) for uid in user_ids for kind in ("conn", "seen", "pseq")]
        values = await self._batch.call("EVAL", STATES, len(keys), *keys)
        return {
            uid: PresenceState(bool(values[3 * i]), from_epoch(values[3 * i + 1]), int(values[3 * i + 2] or 0))
            for i, uid in enumerate(user_ids)
        }

    async def connected(self, user_id: int) -> None:
        """A WebSocket of `user_id` opened on this node: counted at once, written and announced (never raises)."""
        if self._closed:
            return
        self._local[user_id] += 1
        await self._write(user_id)

    async def disconnected(self, user_id: int) -> None:
        """A WebSocket of `user_id` closed on this node (never raises)."""
        if self._closed or self._local[user_id] <= 0:
            return
        self._local[user_id] -= 1
        if self._local[user_id] == 0:
            del self._local[user_id]
        await self._write(user_id)

    async def _write(self, user_id: int) -> None:
        # A task of its own: a socket cancelled mid-handshake or at shutdown still writes and announces.
        task = asyncio.create_task(self._store(user_id), name="parley.presence.write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        await asyncio.shield(task)

    async def _store(self, user_id: int) -> None:
        # Read when submitted: writes reach Redis in submission order, so the last one holds the latest count.
        count = self._local[user_id]
        now = time.time()
        keys = (
            self._key("conn", user_id),
            self._key("node-users", self._node),
            self._key("seen", user_id),
            self._key("pseq", user_id),
            f"{self._prefix}nodes",
        )
        try:
            seq = int(
                await self._batch.call(
                    "EVAL", SET_COUNT, len(keys), *keys, self._node, user_id, count, f"{now:.3f}", self._ttl
                )
            )
        except Exception:
            self._dirty = True
            log.warning("could not record a connection of user %s; registering again shortly", user_id, exc_info=True)
            return
        if seq and self._hub is not None:
            await self._hub.publish([PresenceChange(user_id, count > 0, from_epoch(now), seq)])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Registers this node, keeps it alive and sweeps dead nodes; on exit removes this node's entries."""
        try:
            await self._register()
        except Exception:  # Redis down at start: the loop registers once it answers
            self._dirty = True
            log.warning("could not register node %s in the presence registry yet", self._node, exc_info=True)
        keeper = asyncio.create_task(self._keep_alive(), name="parley.presence.node")
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.close()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._node_ttl / 3)
            try:
                await self.refresh()
            except Exception:  # retried next period; never stop the loop
                log.warning("could not refresh node %s in the presence registry", self._node, exc_info=True)
            try:
                await self.sweep()
            except Exception:
                log.warning("presence sweep failed", exc_info=True)

    async def refresh(self) -> None:
        """Refreshes the liveness key; registers the whole local state again if it had expired, a write failed, or
        a Redis process other than last time's answers (a failover or a restart)."""
        alive, server = await self._batch.call(
            "EVAL",
            REFRESH,
            2,
            self._key("node", self._node),
            f"{self._prefix}nodes",
            self._node,
            int(self._node_ttl * 1000),
            f"{time.time():.3f}",
        )
        server = server.decode() if isinstance(server, bytes) else str(server)
        switched = server != self._server
        if not int(alive) or self._dirty or switched:
            if not int(alive):
                log.warning("node %s had dropped out of the presence registry; registering again", self._node)
            elif switched and self._server:
                log.warning("node %s: another Redis answers (a failover?); registering its users again", self._node)
            await self._register()
        self._server = server

    async def _register(self) -> None:
        # The snapshot is taken as the script is submitted: writes queued before it land first, later ones after.
        self._dirty = False
        pairs = [str(v) for user_id, count in self._local.items() for v in (user_id, count)]
        now = time.time()
        try:
            rows = await self._batch.call(
                "EVAL",
                REGISTER,
                3,
                self._key("node", self._node),
                f"{self._prefix}nodes",
                self._key("node-users", self._node),
                self._node,
                self._prefix,
                f"{now:.3f}",
                self._ttl,
                int(self._node_ttl * 1000),
                *pairs,
            )
        except BaseException:
            self._dirty = True
            raise
        if self._hub is not None:
            when = from_epoch(now)
            await self._hub.publish(
                [PresenceChange(int(user), bool(online), when, int(seq)) for user, online, seq in rows]
            )

    async def sweep(self) -> list[PresenceChange]:
        """Removes the entries of nodes whose liveness key expired and announces who went offline."""
        dead = await self._batch.call("EVAL", DEAD_NODES, 1, f"{self._prefix}nodes", self._prefix)
        changes: list[PresenceChange] = []
        for raw in dead:
            node = raw.decode() if isinstance(raw, bytes) else str(raw)
            changes.extend(await self._remove(node, forced=False))
        if changes:
            log.info("swept dead nodes %s: %d users went offline", dead, len(changes))
        return changes

    async def _remove(self, node: str, *, forced: bool) -> list[PresenceChange]:
        rows = await self._batch.call(
            "EVAL",
            REMOVE_NODE,
            3,
            self._key("node", node),
            f"{self._prefix}nodes",
            self._key("node-users", node),
            node,
            self._prefix,
            self._ttl,
            f"{time.time():.3f}",
            "1" if forced else "0",
        )
        changes = [PresenceChange(int(user), False, from_epoch(seen), int(seq)) for user, seq, seen in rows]
        if self._hub is not None:
            await self._hub.publish(changes)
        return changes

    async def close(self) -> None:
        """A clean shutdown: later sockets are not counted, and this node's entries leave the registry."""
        self._closed = True
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        try:
            await self._remove(self._node, forced=True)
        except Exception:  # the sweep of another process removes them once the liveness key expires
            log.warning("could not remove node %s from the presence registry", self._node, exc_info=True)
        self._local.clear()
