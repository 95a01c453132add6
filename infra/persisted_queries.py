"""Apollo persisted queries shared by every process: query texts by hash in Redis, with a TTL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from graph.persisted_queries import MemoryPersistedQueries
from infra.redis_cluster import cluster_client
from infra.settings import Settings
from resolvers.ports import PersistedQueryStore

# Persisted queries are a cache the clients refill (PersistedQueryNotFound): a week in Redis.
PERSISTED_QUERY_TTL_SECONDS = 7 * 86400


class RedisPersistedQueries:
    """Apollo persisted queries in Redis, shared by every process: prefixed keys with a TTL."""

    def __init__(self, redis: Redis | RedisCluster, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}apq:"

    async def get(self, sha256: str) -> str | None:
        """The query stored under this hash, or None."""
        value = await self._redis.get(self._prefix + sha256)
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, sha256: str, query: str) -> None:
        """Stores a verified query for a week."""
        await self._redis.set(self._prefix + sha256, query, ex=PERSISTED_QUERY_TTL_SECONDS)


@contextlib.asynccontextmanager
async def persisted_query_store(settings: Settings) -> AsyncIterator[PersistedQueryStore]:
    """Redis when configured (every process shares what clients registered), else an in-process LRU."""
    if not settings.redis_url or settings.persisted_queries == "off":
        yield MemoryPersistedQueries()
        return
    # A small pool of its own: a lookup waits briefly for a connection rather than failing.
    redis: Redis | RedisCluster = (
        cluster_client(settings.redis_url, max_connections=16)
        if settings.redis_cluster
        else Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=16, timeout=2, socket_timeout=2, socket_connect_timeout=2
            )
        )
    )
    try:
        yield RedisPersistedQueries(redis, settings.redis_prefix)
    finally:
        await redis.aclose()
