"""Last-seen times and the online registry: Redis in production, a dict in the embedded mode."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from infra.redis_batch import RedisBatch


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryPresence:
    """Presence for a single process."""

    def __init__(self) -> None:
        self._last_seen: dict[int, datetime] = {}
        self._connections: Counter[int] = Counter()

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

    async def connected(self, user_id: int) -> None:
        """A WebSocket of `user_id` opened on this process."""
        self._connections[user_id] += 1

    async def disconnected(self, user_id: int) -> None:
        """A WebSocket of `user_id` closed on this process."""
        self._connections[user_id] -= 1
        if self._connections[user_id] <= 0:
            del self._connections[user_id]


class RedisPresence:
    """Presence shared by every process through Redis.

    Last seen is one key per user (`seen:<id>`, epoch seconds) with a long TTL;
    the registry is a hash per user of node -> connection count, so a node's
    entries can be swept when it dies (see the presence issue for the sweeper).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        node_id: str,
        last_seen_ttl: int = 90 * 86400,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = redis
        # Connects, disconnects and activity come in bursts (a reconnect storm): share round trips.
        self._batch = batch or RedisBatch(redis)
        self._prefix = prefix
        self._node = node_id
        self._ttl = last_seen_ttl

    async def touch(self, user_id: int) -> datetime:
        """Records activity now and returns the stored time."""
        now = time.time()
        await self._batch.call("SET", f"{self._prefix}seen:{user_id}", f"{now:.3f}", "EX", self._ttl)
        return datetime.fromtimestamp(now, UTC)

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        """Last-seen times of those users that were ever seen."""
        if not user_ids:
            return {}
        values = await self._redis.mget([f"{self._prefix}seen:{uid}" for uid in user_ids])
        return {
            uid: datetime.fromtimestamp(float(value), UTC)
            for uid, value in zip(user_ids, values, strict=True)
            if value is not None
        }

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with at least one live connection on any node."""
        if not user_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.exists(f"{self._prefix}conn:{uid}")
            found = await pipe.execute()
        return {uid for uid, exists in zip(user_ids, found, strict=True) if exists}

    async def connected(self, user_id: int) -> None:
        """A WebSocket of `user_id` opened on this node."""
        await self._batch.call("HINCRBY", f"{self._prefix}conn:{user_id}", self._node, 1)

    async def disconnected(self, user_id: int) -> None:
        """A WebSocket of `user_id` closed on this node."""
        key = f"{self._prefix}conn:{user_id}"
        if int(await self._batch.call("HINCRBY", key, self._node, -1)) <= 0:
            await self._batch.call("HDEL", key, self._node)
