"""Fixed-window rate limits: Redis in production, a dict in the embedded mode."""

from __future__ import annotations

import time

from redis.asyncio import Redis


class MemoryRateLimiter:
    """Fixed-window counters for a single process."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}

    async def hit(self, key: str, *, window_seconds: int) -> int:
        """Counts one event for `key` and returns the window's count."""
        now = time.monotonic()
        started, count = self._counts.get(key, (now, 0))
        if now - started >= window_seconds:
            started, count = now, 0
        self._counts[key] = (started, count + 1)
        return count + 1

    async def count(self, key: str) -> int:
        """Events counted for `key` in its current window."""
        return self._counts.get(key, (0.0, 0))[1]

    async def reset(self, key: str) -> None:
        """Forgets `key`."""
        self._counts.pop(key, None)


class RedisRateLimiter:
    """Fixed-window counters in Redis (INCR + EXPIRE), shared by every process."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def hit(self, key: str, *, window_seconds: int) -> int:
        """Counts one event for `key` and returns the window's count."""
        full = f"{self._prefix}rate:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(full)
            pipe.expire(full, window_seconds, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def count(self, key: str) -> int:
        """Events counted for `key` in its current window."""
        value = await self._redis.get(f"{self._prefix}rate:{key}")
        return int(value) if value is not None else 0

    async def reset(self, key: str) -> None:
        """Forgets `key`."""
        await self._redis.delete(f"{self._prefix}rate:{key}")
