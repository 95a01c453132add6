"""Who is online, cluster-wide, and when each user was last seen: Redis in production, a dict in the embedded mode.

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
idempotent and the latest one wins; when a write fails, or its liveness key had
expired (a long pause, a Redis restart, a sweep), it registers its whole local
state again.

Transitions are published on the bus (`presence` channel) with the user's
transition number, and each process hands them to its local watchers
(`PresenceHub`): a watcher drops what its first read of the state already showed
and anything that arrives out of order.

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
from typing import Any, Self

import orjson
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.bus import Resync
from infra.redis_batch import RedisBatch
from infra.shared_subscription import SharedSubscription
from resolvers.ports import Bus, PresenceChange, PresenceState

log = logging.getLogger("parley.presence")

CHANNEL = "presence"
DEFAULT_NODE_TTL = 30.0
DEFAULT_LAST_SEEN_TTL = 90 * 86400


def _now() -> datetime:
    return datetime.now(UTC)


def _when(epoch: float | str | bytes | None) -> datetime | None:
    return datetime.fromtimestamp(float(epoch), UTC) if epoch is not None else None


# What a watcher is told when someone it watches became visible (or hidden) without a transition.
_REVEALED = Resync("visibility changed")


class _Feed:
    """One watcher's queue: batches of changes, or a Resync when changes were lost (overflow, bus outage)."""

    def __init__(self, user_ids: Sequence[int], max_queue: int) -> None:
        self.user_ids = frozenset(user_ids)
        self._max = max_queue
        self._items: list[PresenceChange] = []
        self._resync: Resync | None = None
        self._closed = False
        self._wake = asyncio.Event()

    def offer(self, change: PresenceChange) -> None:
        if len(self._items) >= self._max:
            # Ephemeral state: a watcher that fell behind re-reads it instead of growing without bound.
            self.resync(Resync("overflow"))
            return
        self._items.append(change)
        self._wake.set()

    def resync(self, notice: Resync) -> None:
        self._items.clear()  # the re-read covers them
        self._resync = notice
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Sequence[PresenceChange] | Resync:
        while True:
            if self._resync is not None:
                notice, self._resync = self._resync, None
                return notice
            if self._items:
                batch, self._items = self._items, []
                return batch
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class PresenceHub:
    """Transitions over the bus, dispatched to this process's watchers by user.

    One subscription to the `presence` channel per process while it has any watcher
    (as infra/fanout.py does for inboxes): one decode per transition and process.
    """

    def __init__(self, bus: Bus, *, max_queue: int = 1000) -> None:
        self._bus = bus
        self._max_queue = max_queue
        self._watchers: dict[int, set[_Feed]] = {}
        self._subscription = SharedSubscription(bus, CHANNEL, self._run, name="parley.presence.hub")

    async def publish(self, changes: Sequence[PresenceChange]) -> None:
        """Announces transitions to every process's watchers; best effort (logs instead of raising)."""
        if not changes:
            return
        wire = [[c.user_id, int(c.online), c.last_seen.timestamp() if c.last_seen else None, c.seq] for c in changes]
        try:
            await self._bus.publish_many([(CHANNEL, orjson.dumps(wire).decode())])
        except Exception:
            log.warning("could not announce %d presence transitions", len(changes), exc_info=True)

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Makes every process's watchers of these users read their state again; best effort."""
        if not user_ids:
            return
        try:
            await self._bus.publish_many([(CHANNEL, orjson.dumps({"reveal": list(user_ids)}).decode())])
        except Exception:
            log.warning("could not announce a presence visibility change", exc_info=True)

    @asynccontextmanager
    async def watch(self, user_ids: Sequence[int]) -> AsyncIterator[_Feed]:
        """A feed of these users' transitions, subscribed before it is yielded."""
        feed = _Feed(user_ids, self._max_queue)
        self._subscription.hold()
        try:
            # Shielded: a cancelled watcher must not leave the subscription half opened.
            await asyncio.shield(self._subscription.open())
            for user_id in feed.user_ids:
                self._watchers.setdefault(user_id, set()).add(feed)
            yield feed
        finally:
            for user_id in feed.user_ids:
                watchers = self._watchers.get(user_id)
                if watchers is not None:
                    watchers.discard(feed)
                    if not watchers:
                        del self._watchers[user_id]
            feed.close()
            await asyncio.shield(self._subscription.release())

    async def _run(self, source: AsyncIterator[str | Any]) -> None:
        async for item in source:
            if not isinstance(item, str):  # the bus may have lost transitions: every watcher re-reads
                for feed in {f for feeds in self._watchers.values() for f in feeds}:
                    feed.resync(item)
                continue
            try:
                self._dispatch(orjson.loads(item))
            except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
                log.warning("dropped a malformed presence notice", exc_info=True)
        # The bus has shut down: watchers end.
        for feed in {f for feeds in self._watchers.values() for f in feeds}:
            feed.close()

    def _dispatch(self, wire: list[list[Any]] | dict[str, list[int]]) -> None:
        if isinstance(wire, dict):  # who may see these users changed: their watchers read again
            revealed = {f for user_id in wire.get("reveal", ()) for f in self._watchers.get(int(user_id), ())}
            for feed in revealed:
                feed.resync(_REVEALED)
            return
        for user_id, online, seen, seq in wire:
            feeds = self._watchers.get(int(user_id))
            if feeds:
                change = PresenceChange(int(user_id), bool(online), _when(seen), int(seq))
                for feed in feeds:
                    feed.offer(change)


class MemoryPresence:
    """Presence for a single process (the embedded mode): the same transitions, through the in-process bus."""

    def __init__(self, hub: PresenceHub | None = None) -> None:
        self._hub = hub
        self._last_seen: dict[int, datetime] = {}
        self._connections: Counter[int] = Counter()
        self._seq: Counter[int] = Counter()

    async def touch(self, user_id: int) -> datetime:
        """Records activity now and returns the stored time."""
        now = _now()
        self._last_seen[user_id] = now
        return now

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        """Last-seen times of those users that were ever seen."""
        return {uid: self._last_seen[uid] for uid in user_ids if uid in self._last_seen}

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with at least one live connection."""
        return {uid for uid in user_ids if self._connections[uid] > 0}

    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        """Online, last seen and transition count of each user."""
        return {
            uid: PresenceState(self._connections[uid] > 0, self._last_seen.get(uid), self._seq[uid]) for uid in user_ids
        }

    async def connected(self, user_id: int) -> None:
        """A WebSocket of `user_id` opened on this process."""
        self._connections[user_id] += 1
        self._last_seen[user_id] = now = _now()
        if self._connections[user_id] == 1:
            await self._announce(user_id, True, now)

    async def disconnected(self, user_id: int) -> None:
        """A WebSocket of `user_id` closed on this process."""
        if self._connections[user_id] <= 0:
            return
        self._connections[user_id] -= 1
        self._last_seen[user_id] = now = _now()
        if self._connections[user_id] == 0:
            del self._connections[user_id]
            await self._announce(user_id, False, now)

    def watch(self, user_ids: Sequence[int]) -> contextlib.AbstractAsyncContextManager[_Feed]:
        """This process's feed of those users' transitions."""
        if self._hub is None:
            raise RuntimeError("presence was built without a hub")
        return self._hub.watch(user_ids)

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Makes the watchers of these users read again what they may see (best effort)."""
        if self._hub is not None:
            await self._hub.reveal(user_ids)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Nothing to keep alive in one process."""
        yield

    async def _announce(self, user_id: int, online: bool, at: datetime) -> None:
        self._seq[user_id] += 1
        if self._hub is not None:
            # Shielded: a socket cancelled mid-handshake still announces what it counted.
            await asyncio.shield(self._hub.publish([PresenceChange(user_id, online, at, self._seq[user_id])]))


# Sets this node's count of one user's sockets (0 removes it) and stores last seen.
# KEYS: conn:<user>, node-users:<node>, seen:<user>, pseq:<user>, nodes
# ARGV: node, user, count, now, last-seen TTL. Returns the user's new transition number, 0 if none.
_SET_COUNT = """
local before = redis.call('EXISTS', KEYS[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 0 then redis.call('HSET', KEYS[5], ARGV[1], ARGV[4]) end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
if redis.call('EXISTS', KEYS[1]) == before then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return seq
"""

# Refreshes the liveness key. KEYS: node:<node>, nodes. ARGV: node, TTL ms, now.
# Returns 0 when the key had expired: the node's entries may have been swept.
_REFRESH = """
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return alive
"""

# Registers the node's whole local state (absolute counts), removing entries it no longer has.
# KEYS: node:<node>, nodes, node-users:<node>. ARGV: node, prefix, now, last-seen TTL, TTL ms, user, count, ...
# Returns {user, online (0/1), transition number} per transition.
_REGISTER = """
local node, prefix, now, seen_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SET', KEYS[1], '1', 'PX', ARGV[5])
redis.call('HSET', KEYS[2], node, now)
local want = {}
for i = 6, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local changes = {}
local function changed(user, online)
  local seq = redis.call('INCR', prefix .. 'pseq:' .. user)
  redis.call('EXPIRE', prefix .. 'pseq:' .. user, seen_ttl)
  redis.call('SET', prefix .. 'seen:' .. user, now, 'EX', seen_ttl)
  changes[#changes + 1] = {user, online, seq}
end
for _, user in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not want[user] then
    local conn = prefix .. 'conn:' .. user
    redis.call('HDEL', conn, node)
    redis.call('HDEL', KEYS[3], user)
    if redis.call('EXISTS', conn) == 0 then changed(user, 0) end
  end
end
for user, count in pairs(want) do
  local conn = prefix .. 'conn:' .. user
  local before = redis.call('EXISTS', conn)
  redis.call('HSET', conn, node, count)
  redis.call('HSET', KEYS[3], user, count)
  if before == 0 then changed(user, 1) end
end
return changes
"""

# Nodes whose liveness key has expired. KEYS: nodes. ARGV: prefix.
_DEAD = """
local dead = {}
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then dead[#dead + 1] = node end
end
return dead
"""

# Removes a node's entries: a dead one's (unless it came back meanwhile), or, forced, this node's at shutdown.
# KEYS: node:<node>, nodes, node-users:<node>. ARGV: node, prefix, last-seen TTL, now, forced (1/0).
# Returns {user, transition number, last seen} per user left offline.
_REMOVE = """
local node, prefix, seen_ttl = ARGV[1], ARGV[2], ARGV[3]
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local last = ARGV[4]
if ARGV[5] ~= '1' then last = redis.call('HGET', KEYS[2], node) or ARGV[4] end
local changes = {}
for _, user in ipairs(redis.call('HKEYS', KEYS[3])) do
  local conn = prefix .. 'conn:' .. user
  redis.call('HDEL', conn, node)
  if redis.call('EXISTS', conn) == 0 then
    local seen_key = prefix .. 'seen:' .. user
    local seen = redis.call('GET', seen_key)
    if not seen or tonumber(seen) < tonumber(last) then
      seen = last
      redis.call('SET', seen_key, seen, 'EX', seen_ttl)
    end
    local seq = redis.call('INCR', prefix .. 'pseq:' .. user)
    redis.call('EXPIRE', prefix .. 'pseq:' .. user, seen_ttl)
    changes[#changes + 1] = {user, seq, seen}
  end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[2], node)
if ARGV[5] == '1' then redis.call('DEL', KEYS[1]) end
return changes
"""

# One instant's state of many users. KEYS: conn, seen, pseq of each user.
_STATES = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('EXISTS', KEYS[i])
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
  out[#out + 1] = redis.call('GET', KEYS[i + 2])
end
return out
"""

# Which of these users are online. KEYS: conn of each user.
_ONLINE = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
return out
"""


class RedisPresence:
    """Presence shared by every process through Redis (the layout is in the module docstring).

    Scripts go through `RedisBatch` as EVAL (not redis-py's Script, which asks SCRIPT EXISTS
    first: a second round trip per batch); its batches run one after another in submission
    order, which is what makes "the latest absolute count wins" hold.
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
        self._closed = False
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> str:
        """This process's name in the registry."""
        return self._node

    def _key(self, kind: str, name: object) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def touch(self, user_id: int) -> datetime:
        """Records activity now and returns the stored time."""
        stored = f"{time.time():.3f}"
        await self._batch.call("SET", self._key("seen", user_id), stored, "EX", self._ttl)
        return datetime.fromtimestamp(float(stored), UTC)  # as `last_seen` will read it back

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

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with at least one live connection on any node: one command however many."""
        if not user_ids:
            return set()
        keys = [self._key("conn", uid) for uid in user_ids]
        found = await self._batch.call("EVAL", _ONLINE, len(keys), *keys)
        return {uid for uid, exists in zip(user_ids, found, strict=True) if exists}

    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        """Online, last seen and transition number of each user, read atomically."""
        if not user_ids:
            return {}
        keys = [self._key(kind, uid) for uid in user_ids for kind in ("conn", "seen", "pseq")]
        values = await self._batch.call("EVAL", _STATES, len(keys), *keys)
        return {
            uid: PresenceState(bool(values[3 * i]), _when(values[3 * i + 1]), int(values[3 * i + 2] or 0))
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

    def watch(self, user_ids: Sequence[int]) -> contextlib.AbstractAsyncContextManager[_Feed]:
        """This process's feed of those users' transitions."""
        if self._hub is None:
            raise RuntimeError("presence was built without a hub")
        return self._hub.watch(user_ids)

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Makes the watchers of these users read again what they may see (best effort)."""
        if self._hub is not None:
            await self._hub.reveal(user_ids)

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
                    "EVAL", _SET_COUNT, len(keys), *keys, self._node, user_id, count, f"{now:.3f}", self._ttl
                )
            )
        except Exception:
            self._dirty = True
            log.warning("could not record a connection of user %s; registering again shortly", user_id, exc_info=True)
            return
        if seq and self._hub is not None:
            await self._hub.publish([PresenceChange(user_id, count > 0, _when(now), seq)])

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
        """Refreshes the liveness key; registers the whole local state again if it had expired or a write failed."""
        alive = await self._batch.call(
            "EVAL",
            _REFRESH,
            2,
            self._key("node", self._node),
            f"{self._prefix}nodes",
            self._node,
            int(self._node_ttl * 1000),
            f"{time.time():.3f}",
        )
        if not int(alive) or self._dirty:
            if not int(alive):
                log.warning("node %s had dropped out of the presence registry; registering again", self._node)
            await self._register()

    async def _register(self) -> None:
        # The snapshot is taken as the script is submitted: writes queued before it land first, later ones after.
        self._dirty = False
        pairs = [str(v) for user_id, count in self._local.items() for v in (user_id, count)]
        now = time.time()
        try:
            rows = await self._batch.call(
                "EVAL",
                _REGISTER,
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
            when = _when(now)
            await self._hub.publish(
                [PresenceChange(int(user), bool(online), when, int(seq)) for user, online, seq in rows]
            )

    async def sweep(self) -> list[PresenceChange]:
        """Removes the entries of nodes whose liveness key expired and announces who went offline."""
        dead = await self._batch.call("EVAL", _DEAD, 1, f"{self._prefix}nodes", self._prefix)
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
            _REMOVE,
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
        changes = [PresenceChange(int(user), False, _when(seen), int(seq)) for user, seq, seen in rows]
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
