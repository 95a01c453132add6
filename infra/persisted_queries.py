"""Apollo persisted queries shared by every process: query texts by hash in Redis, bounded and with a TTL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from graph.persisted_queries import MemoryPersistedQueries
from infra.outages import outage_boundary
from infra.redis_clients import redis_client, redis_endpoint
from infra.redis_cluster import hash_tagged
from infra.settings import Settings
from resolvers.ports import PersistedQueryStore

# Persisted queries are a cache the clients refill (PersistedQueryNotFound): a week in Redis
# after their last use.
PERSISTED_QUERY_TTL_SECONDS = 7 * 86400
# A lookup refreshes an entry's place in the eviction order (and its TTL) at most this often,
# so the hash-only requests of a busy app do not each write to Redis.
TOUCH_INTERVAL_MS = 3_600_000

# KEYS: the text's key, the index (a sorted set of hashes by last use).
# ARGV: text, hash, now (ms), TTL (s), most entries kept, key prefix of the texts.
# Stores the text, then evicts the least recently used entries beyond the bound. Evicted keys
# are built from the prefix: on a Redis Cluster all of them share the index's slot.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local evicted = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #evicted, 2 do
    redis.call('DEL', ARGV[6] .. evicted[i])
  end
end
return 1
"""

# KEYS: the text's key, the index. ARGV: hash, now (ms), TTL (s), touch interval (ms).
# The stored text, its last use moved to now when it is older than the touch interval.
_GET = """
local text = redis.call('GET', KEYS[1])
if text then
  local used = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not used or tonumber(ARGV[2]) - tonumber(used) > tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    redis.call('EXPIRE', KEYS[2], ARGV[3])
  end
end
return text
"""


class RedisPersistedQueries:
    """Apollo persisted queries in Redis, shared by every process: at most `max_entries`, least recently used out first.

    One key per text (`<prefix><sha256>`, with a TTL) and an index of the hashes by last use
    (`<prefix>lru`), both changed by one script so the bound holds under concurrent writers.
    """

    def __init__(
        self, redis: Redis | RedisCluster, prefix: str, *, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._index = f"{prefix}lru"
        self._max_entries = max_entries
        # Wall clock, not monotonic: processes on different hosts order their uses in one index.
        self._clock = clock

    @outage_boundary("Redis")
    async def get(self, sha256: str) -> str | None:
        """The query stored under this hash, or None; a hit counts as a use."""
        value = await self._redis.eval(
            _GET,
            2,
            self._prefix + sha256,
            self._index,
            sha256,
            self._now_ms(),
            PERSISTED_QUERY_TTL_SECONDS,
            TOUCH_INTERVAL_MS,
        )
        return value.decode() if isinstance(value, bytes) else value

    @outage_boundary("Redis")
    async def put(self, sha256: str, query: str) -> None:
        """Stores a verified query for a week, evicting the least recently used beyond the bound."""
        await self._redis.eval(
            _PUT,
            2,
            self._prefix + sha256,
            self._index,
            query,
            sha256,
            self._now_ms(),
            PERSISTED_QUERY_TTL_SECONDS,
            self._max_entries,
            self._prefix,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


@contextlib.asynccontextmanager
async def persisted_query_store(settings: Settings) -> AsyncIterator[PersistedQueryStore]:
    """Redis when configured (every process shares what clients registered), else an in-process LRU."""
    endpoint = redis_endpoint(settings)
    if endpoint is None or settings.persisted_queries == "off":
        yield MemoryPersistedQueries(max_entries=settings.persisted_query_max_entries)
        return
    # A small pool of its own: a lookup waits briefly for a connection rather than failing.
    redis = redis_client(endpoint, max_connections=16, timeout=2, pool_wait=2)
    # On a Redis Cluster the texts and their index share one slot (the script changes both).
    prefix = hash_tagged(settings.redis_prefix, "apq") if settings.redis_cluster else f"{settings.redis_prefix}apq:"
    try:
        yield RedisPersistedQueries(redis, prefix, max_entries=settings.persisted_query_max_entries)
    finally:
        await redis.aclose()
