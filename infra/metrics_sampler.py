"""Database pools and the push queue, sampled on the event loop into gauges.

Values read from pools and queues (connections in use, waiters, the push queue's
depth) are sampled on the event loop every `SAMPLE_SECONDS` into gauges: collectors
run on the exposition's thread (or in another process), where asyncio objects and
Redis cannot be touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sqlalchemy.pool import QueuePool

from infra.metrics import ParleyMetrics, metrics

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.ext.asyncio import AsyncEngine

    from resolvers.services import Services

log = logging.getLogger("parley.metrics")

SAMPLE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One database pool at one instant."""

    in_use: int
    idle: int
    max_size: int
    waiting: int


def _waiting_on(queue: object) -> int:
    """Tasks blocked in `get()` of an asyncio queue.

    asyncio has no public count of them: this reads `Queue._getters` (stable since
    Python 3.4), and says 0 should it ever go.
    """
    getters: Iterable[asyncio.Future[object]] = getattr(queue, "_getters", None) or ()
    return sum(1 for getter in getters if not getter.done())


def sqlalchemy_pool_stats(engine: AsyncEngine) -> PoolStats | None:
    """The engine's queue pool (None for pools without a queue, such as SQLite's in some setups)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    # QueuePool has no public getter for its overflow limit or its waiters: the async queue
    # (`AsyncAdaptedQueue`) keeps its asyncio.Queue in `_queue`, made on first use.
    overflow = max(getattr(pool, "_max_overflow", 0), 0)
    queue = vars(getattr(pool, "_pool", object())).get("_queue")
    return PoolStats(
        in_use=max(pool.checkedout(), 0),
        idle=pool.checkedin(),
        max_size=pool.size() + overflow,
        waiting=_waiting_on(queue),
    )


def asyncpg_pool_stats(pool: asyncpg.Pool) -> PoolStats:
    """The asyncpg pool of the hot path (infra/pg_inbox_store.py)."""
    size = pool.get_size()  # type: ignore[no-untyped-call]  # unannotated in asyncpg
    idle = pool.get_idle_size()  # type: ignore[no-untyped-call]
    # Waiters queue on the pool's holder queue (asyncpg has no public count either).
    return PoolStats(
        in_use=max(size - idle, 0),
        idle=idle,
        max_size=pool.get_max_size(),  # type: ignore[no-untyped-call]
        waiting=_waiting_on(getattr(pool, "_queue", None)),
    )


@runtime_checkable
class _HasPool(Protocol):
    @property
    def pool(self) -> asyncpg.Pool: ...


@runtime_checkable
class _HasDepth(Protocol):
    async def depth(self) -> int: ...


def _record_pool(m: ParleyMetrics, name: str, stats: PoolStats | None) -> None:
    if stats is None:
        return
    m.pool_connections.labels(name, "in_use").set(stats.in_use)
    m.pool_connections.labels(name, "idle").set(stats.idle)
    m.pool_max.labels(name).set(stats.max_size)
    m.pool_waiting.labels(name).set(stats.waiting)


async def sample_once(services: Services) -> None:
    """Reads the pools and the push queue into their gauges (each source on its own: one failing skips only it)."""
    m = metrics()
    engine = getattr(services.db, "engine", None)
    if engine is not None:
        _record_pool(m, "sqlalchemy", sqlalchemy_pool_stats(engine))
    if isinstance(services.inbox_store, _HasPool):
        _record_pool(m, "asyncpg", asyncpg_pool_stats(services.inbox_store.pool))
    queue = services.push_queue
    if isinstance(queue, _HasDepth):
        try:
            async with asyncio.timeout(SAMPLE_SECONDS):
                m.push_queue_depth.set(await queue.depth())
        except Exception as error:  # Redis down: the gauge keeps its last value; /readyz tells the rest
            log.debug("could not read the push queue's depth: %r", error)


async def sample_forever(services: Services, interval: float) -> None:
    """Samples every `interval` seconds until cancelled; a failing round is logged and the next one runs."""
    while True:
        try:
            await sample_once(services)
        except Exception:  # a sampler bug must not end the sampling (or the app)
            log.exception("metrics sampling failed")
        await asyncio.sleep(interval)
