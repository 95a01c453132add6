"""Fixed-window rate limits: Redis in production, a dict in the embedded mode."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.outages import outage_boundary
from infra.redis_batch import RedisBatch


class MemoryRateLimiter:
    """Fixed-window counters for a single process; a window ends as a Redis key expires."""

    # Expired windows are dropped when this many keys are held (random usernames and
    # addresses would otherwise grow the dict without bound).
    PRUNE_AT = 100_000

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}  # key -> (window's end, count)

    async def hit(self, key: str, *, window_seconds: int, amount: int = 1) -> int:
        """Counts `amount` events for `key` and returns the window's count."""
        now = time.monotonic()
        ends, count = self._counts.get(key, (now, 0))
        if now >= ends:
            ends, count = now + window_seconds, 0
            if len(self._counts) >= self.PRUNE_AT:
                self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
        self._counts[key] = (ends, count + amount)
        return count + amount

    async def count(self, key: str) -> int:
        """Events counted for `key` in its current window (0 once the window has ended)."""
        ends, count = self._counts.get(key, (0.0, 0))
        return count if time.monotonic() < ends else 0

    async def reset(self, key: str) -> None:
        """Forgets `key`."""
        self._counts.pop(key, None)


# One round trip, atomic: the first hit of a window sets its expiry, so a key can never
# be left without one (INCR then EXPIRE as two commands could, if the process died between).
_HIT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RedisRateLimiter:
    """Fixed-window counters in Redis, shared by every process; concurrent hits share a pipeline.

    One key per counter and script: on a Redis Cluster the counters spread over the slots as they are.
    A Redis outage raises `Unavailable`: sends fail open on it (resolvers/rate_limits.py), logins do not.
    """

    def __init__(self, redis: Redis | RedisCluster, *, prefix: str, batch: RedisBatch | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._batch = batch or RedisBatch(redis)

    @outage_boundary("Redis")
    async def hit(self, key: str, *, window_seconds: int, amount: int = 1) -> int:
        """Counts `amount` events for `key` and returns the window's count."""
        # EVAL, not redis-py's Script: in a pipeline that one asks SCRIPT EXISTS first, a
        # second round trip per batch; Redis caches the compiled script either way.
        return int(await self._batch.call("EVAL", _HIT, 1, f"{self._prefix}rate:{key}", window_seconds, amount))

    @outage_boundary("Redis")
    async def count(self, key: str) -> int:
        """Events counted for `key` in its current window."""
        value = await self._redis.get(f"{self._prefix}rate:{key}")
        return int(value) if value is not None else 0

    @outage_boundary("Redis")
    async def reset(self, key: str) -> None:
        """Forgets `key`."""
        await self._redis.delete(f"{self._prefix}rate:{key}")
