"""Redis commands of many concurrent callers, sent together as one pipeline.

Every send counts a rate limit and every connection updates the presence registry:
one round trip each is most of their cost (redis-py spends ~70 µs per command on
its own). Batched with `infra/coalesce.py`, a busy process pays one round trip per
batch; an idle one sends each command at once. On a Redis Cluster the pipeline
groups the commands by slot: one round trip per master the batch touches.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.coalesce import Coalescer


class RedisBatch:
    """`await call("HINCRBY", key, field, 1)`: the command's reply, sent in a shared pipeline."""

    def __init__(self, redis: Redis | RedisCluster, *, max_batch: int = 500) -> None:
        self._redis = redis
        self._calls: Coalescer[tuple[str, tuple[Any, ...]], Any] = Coalescer(self._run, max_batch=max_batch)

    async def call(self, command: str, *args: Any) -> Any:
        """Runs one command; its own error if it fails (a failed batch is retried command by command)."""
        return await self._calls.submit((command, args))

    async def _run(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for command, args in calls:
                pipe.execute_command(command, *args)
            return list(await pipe.execute())
