"""Prometheus metrics: the definitions, `PrometheusTelemetry` (the `Telemetry` port) and the exposition server.

Exposed on a port of their own (`PARLEY_METRICS_PORT`, on `PARLEY_METRICS_HOST`,
127.0.0.1 by default), never on the API's: unset, nothing listens and the use cases
get `NullTelemetry`. Every label comes from a bounded set: operation types, the
schema's root fields (anything else is "other"), "ok" or an error code, pool names,
push platforms and outcomes. Never a user id or an operation name a client chose.

The exposition is prometheus-client's own threaded HTTP server (`start_http_server`):
rendering the text (and, with several processes, merging their files) runs on its
thread, not on the event loop, and it answers content negotiation (OpenMetrics) and
gzip. A second uvicorn server inside the app's lifespan would install its own signal
handlers over the graceful shutdown's (infra/server.py), and a home-made asyncio
server would be HTTP parsing of our own.

Several processes (`parley serve --workers N`) use prometheus-client's multiprocess
mode: `prepare_multiprocess` (called by the supervisor, infra/server.py, before it starts the
workers) gives them a fresh directory in `PROMETHEUS_MULTIPROC_DIR`, which they
inherit, and serves the merged view of every worker's files from the supervisor, so
one scrape of the one metrics port sees the whole machine. Gauges of processes that
have died are dropped at each scrape; their counters stay in the sums.

Values read from pools and queues (connections in use, waiters, the push queue's
depth) are sampled on the event loop every `SAMPLE_SECONDS` into gauges: collectors
run on the exposition's thread (or in another process), where asyncio objects and
Redis cannot be touched.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy.pool import QueuePool

from resolvers.ports import NullTelemetry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import asyncpg
    from prometheus_client.metrics_core import Metric
    from sqlalchemy.ext.asyncio import AsyncEngine

    from infra.settings import Settings
    from resolvers.ports import Services, Telemetry

log = logging.getLogger("parley.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_SECONDS = 2.0
OPERATION_TYPES = frozenset({"query", "mutation", "subscription"})
# "ok", the contract's error codes, and what unexpected failures answer.
OUTCOMES = frozenset(
    {
        "ok",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "NOT_FOUND",
        "BAD_USER_INPUT",
        "CONFLICT",
        "RATE_LIMITED",
        "UNAVAILABLE",
        "INTERNAL_SERVER_ERROR",
    }
)
OTHER = "other"
# Root fields per operation type that get a label of their own: the schema has about 50;
# the graph layer already maps names outside the schema to "other" (this is a backstop).
MAX_FIELDS_PER_TYPE = 200
PUSH_FAILURE_REASONS = frozenset({"retry", "gone", "failed", "unconfigured"})
RESYNC_REASONS = frozenset({"reconnected", "overflow", "moved"})

# Latency buckets: operations from 1 ms to 10 s; the send's two halves finer at the low end.
OPERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class _Metrics:
    """Every metric of a Parley process, registered once in prometheus-client's default registry.

    Gauges say how to combine processes in multiprocess mode: "livesum" (sockets,
    connections: the machine's total over live processes) or "livemostrecent" (the push
    queue's depth: the same Redis stream whichever process read it).
    """

    def __init__(self) -> None:
        self.sockets = Gauge("parley_websockets_open", "WebSocket connections open.", multiprocess_mode="livesum")
        self.subscriptions = Gauge(
            "parley_subscriptions_open", "Subscriptions running, by root field.", ["field"], multiprocess_mode="livesum"
        )
        self.operations = Counter(
            "parley_operations",
            "GraphQL operations ended, by type, root field and outcome (ok or the error code).",
            ["type", "field", "outcome"],
        )
        self.operation_seconds = Histogram(
            "parley_operation_duration_seconds",
            "Time of queries and mutations from parsing to the result, by type and root field.",
            ["type", "field"],
            buckets=OPERATION_BUCKETS,
        )
        self.send_commit_seconds = Histogram(
            "parley_send_commit_seconds",
            "sendMessage: time from the request to the message's commit.",
            buckets=COMMIT_BUCKETS,
        )
        self.commit_publish_seconds = Histogram(
            "parley_commit_publish_seconds",
            "sendMessage: time from the commit to its notices being published.",
            buckets=PUBLISH_BUCKETS,
        )
        self.events_delivered = Counter(
            "parley_events_delivered", "Durable events handed to subscribers, live or replayed."
        )
        self.bus_reconnects = Counter("parley_bus_reconnects", "Times the bus reconnected to Redis after losing it.")
        self.bus_resyncs = Counter(
            "parley_bus_resyncs",
            "Resync notices raised: subscribers told to re-read the database (reconnected, moved, overflow).",
            ["reason"],
        )
        self.bus_dropped = Counter(
            "parley_bus_dropped_notices", "Notices dropped from the queue of a subscriber that fell behind."
        )
        self.pool_connections = Gauge(
            "parley_db_pool_connections",
            "Database pool connections by pool (sqlalchemy, asyncpg) and state (in_use, idle).",
            ["pool", "state"],
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "parley_db_pool_max_connections",
            "Connections a database pool may open.",
            ["pool"],
            multiprocess_mode="livesum",
        )
        self.pool_waiting = Gauge(
            "parley_db_pool_waiting",
            "Operations waiting for a database pool connection (sampled).",
            ["pool"],
            multiprocess_mode="livesum",
        )
        self.push_queue_depth = Gauge(
            "parley_push_queue_depth",
            "Push jobs queued and not yet done (sampled).",
            multiprocess_mode="livemostrecent",
        )
        self.push_failures = Counter(
            "parley_push_failures",
            "Push deliveries that did not succeed, by platform and reason (retry, gone, failed, unconfigured).",
            ["platform", "reason"],
        )


_metrics: _Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> _Metrics:
    """This process's metrics, built on first use.

    Lazily, not at import: a supervisor that imports this module and then starts
    workers (`prepare_multiprocess`) must not have made them with the wrong value class.
    """
    found = _metrics
    if found is not None:
        return found
    return _build_metrics()


def _build_metrics() -> _Metrics:
    global _metrics  # noqa: PLW0603 - the process-wide singleton, built once under the lock
    with _metrics_lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


# Events of infrastructure adapters (rare: reconnects, overflows, failed pushes), counted
# whether or not metrics are exposed; a counter increment is well under a microsecond.


def bus_reconnected() -> None:
    """The bus's pub/sub connection to Redis came back after it was lost."""
    metrics().bus_reconnects.inc()


def bus_resync(reason: str) -> None:
    """A Resync was raised: "reconnected" or "moved" (a cluster slot), per channel, or "overflow", per subscriber."""
    metrics().bus_resyncs.labels(reason if reason in RESYNC_REASONS else OTHER).inc()


def notices_dropped(count: int) -> None:
    """A subscriber that fell behind had `count` notices dropped (it re-reads instead)."""
    metrics().bus_dropped.inc(count)


def push_failed(platform: str, reason: str) -> None:
    """A push delivery attempt did not succeed; `reason` is retry, gone, failed or unconfigured."""
    metrics().push_failures.labels(platform, reason if reason in PUSH_FAILURE_REASONS else OTHER).inc()


class PrometheusTelemetry:
    """The `Telemetry` port on prometheus-client.

    Labelled children are bound on first use and kept in plain nested dicts, so a
    recorded operation costs two or three dict lookups and the metric's own update,
    with no allocation. Subscriptions are counted when they end, but their lifetime is
    not put into the latency histogram (a client decides how long they last).
    """

    def __init__(self) -> None:
        m = metrics()
        self._m = m
        self._sockets = m.sockets
        self._send_commit = m.send_commit_seconds
        self._commit_publish = m.commit_publish_seconds
        self._events = m.events_delivered
        self._operations: dict[str, dict[str, dict[str, Counter]]] = {}
        self._durations: dict[str, dict[str, Histogram]] = {}
        self._subscriptions: dict[str, Gauge] = {}
        self._fields: dict[str, set[str]] = {}

    def operation(self, *, kind: str, field: str, outcome: str, seconds: float) -> None:
        """Counts one ended operation, and times it unless it was a subscription."""
        try:
            counter = self._operations[kind][field][outcome]
        except KeyError:
            counter = self._bind_operation(kind, field, outcome)
        counter.inc()
        if kind == "subscription":
            return
        try:
            histogram = self._durations[kind][field]
        except KeyError:
            histogram = self._bind_duration(kind, field)
        histogram.observe(seconds)

    def socket_opened(self) -> None:
        """One more WebSocket open."""
        self._sockets.inc()

    def socket_closed(self) -> None:
        """One WebSocket fewer."""
        self._sockets.dec()

    def subscription_started(self, field: str) -> None:
        """One more subscription of this root field running."""
        self._subscription(field).inc()

    def subscription_ended(self, field: str) -> None:
        """One subscription of this root field fewer."""
        self._subscription(field).dec()

    def send_committed(self, seconds: float) -> None:
        """A send's time from the request to its commit."""
        self._send_commit.observe(seconds)

    def notices_published(self, seconds: float) -> None:
        """A send's time from its commit to its notices being published."""
        self._commit_publish.observe(seconds)

    def events_delivered(self, count: int) -> None:
        """Durable events handed to subscribers."""
        self._events.inc(count)

    def _subscription(self, field: str) -> Gauge:
        gauge = self._subscriptions.get(field)
        if gauge is None:
            label = self._field("subscription", field)
            gauge = self._m.subscriptions.labels(label)
            if label == field:
                self._subscriptions[field] = gauge
        return gauge

    def _field(self, kind: str, field: str) -> str:
        """`field` if it may be a label of its own (first come, up to the bound), else "other"."""
        known = self._fields.setdefault(kind, set())
        if field in known:
            return field
        if len(known) >= MAX_FIELDS_PER_TYPE:
            return OTHER
        known.add(field)
        return field

    def _bind_operation(self, kind: str, field: str, outcome: str) -> Counter:
        kind_label = kind if kind in OPERATION_TYPES else OTHER
        field_label = self._field(kind_label, field)
        outcome_label = outcome if outcome in OUTCOMES else OTHER
        counter = self._m.operations.labels(kind_label, field_label, outcome_label)
        # Cached under the given names only when they are their own labels: unbounded
        # names must not grow the dicts.
        if (kind_label, field_label, outcome_label) == (kind, field, outcome):
            self._operations.setdefault(kind, {}).setdefault(field, {})[outcome] = counter
        return counter

    def _bind_duration(self, kind: str, field: str) -> Histogram:
        kind_label = kind if kind in OPERATION_TYPES else OTHER
        field_label = self._field(kind_label, field)
        histogram = self._m.operation_seconds.labels(kind_label, field_label)
        if (kind_label, field_label) == (kind, field):
            self._durations.setdefault(kind, {})[field] = histogram
        return histogram


def telemetry_for(settings: Settings) -> Telemetry:
    """`PrometheusTelemetry` when metrics are exposed, else the no-op `NullTelemetry`."""
    return PrometheusTelemetry() if settings.metrics_port is not None else NullTelemetry()


# Pools and queues, sampled on the event loop.


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
    """The asyncpg pool of the hot path (infra/pg_delivery.py)."""
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


def _record_pool(m: _Metrics, name: str, stats: PoolStats | None) -> None:
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
    if isinstance(services.delivery, _HasPool):
        _record_pool(m, "asyncpg", asyncpg_pool_stats(services.delivery.pool))
    queue = services.push_queue
    if isinstance(queue, _HasDepth):
        try:
            async with asyncio.timeout(SAMPLE_SECONDS):
                m.push_queue_depth.set(await queue.depth())
        except Exception as error:  # Redis down: the gauge keeps its last value; /readyz tells the rest
            log.debug("could not read the push queue's depth: %r", error)


async def _sample_forever(services: Services, interval: float) -> None:
    while True:
        try:
            await sample_once(services)
        except Exception:  # a sampler bug must not end the sampling (or the app)
            log.exception("metrics sampling failed")
        await asyncio.sleep(interval)


# The exposition.


def in_multiprocess_mode() -> bool:
    """Whether prometheus-client was imported with PROMETHEUS_MULTIPROC_DIR set (`parley serve --workers N`)."""
    return values.ValueClass is not values.MutexValue


class _DeadProcessSweeper(Collector):
    """Before each multiprocess scrape, drops the live gauges of worker processes that have exited.

    Registered ahead of the MultiProcessCollector. Without it the sockets of a crashed
    worker would stay counted until the whole service restarts.
    """

    _PID = re.compile(r"gauge_live\w*?_(\d+)\.db$")

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        pids = {
            int(match.group(1))
            for path in glob.glob(os.path.join(self._directory, "gauge_live*.db"))
            if (match := self._PID.search(path))
        }
        for pid in pids:
            if not _alive(pid):
                mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]  # unannotated
        return ()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but another user's (a reused pid)
        return True
    return True


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry merging the metric files every process writes to `directory`."""
    registry = CollectorRegistry()
    registry.register(_DeadProcessSweeper(directory))
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated
    return registry


@dataclass
class MetricsServer:
    """The exposition's HTTP server (prometheus-client's, on a daemon thread)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stops serving and closes the socket (blocks up to half a second: call off the event loop)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serves `registry` as Prometheus text at http://host:port/metrics (any path answers); raises OSError if taken."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


def prepare_multiprocess(settings: Settings, workers: int) -> MetricsServer | None:
    """For `parley serve --workers N`: the supervisor's one call, before it starts any worker.

    With metrics on and more than one worker, makes a fresh directory for the workers'
    metric files, puts it in PROMETHEUS_MULTIPROC_DIR (the workers inherit the
    environment and import prometheus-client after it is set), removes it at exit, and
    serves the merged metrics of every worker on the metrics port from this process.
    The workers then see the port taken and leave it to the supervisor. Otherwise
    (one process, or metrics off) it does nothing: the process serves its own.
    """
    if workers <= 1 or settings.metrics_port is None:
        return None
    directory = tempfile.mkdtemp(prefix="parley-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = directory
    # Metrics made in this process from now on (none are, normally) write files too, and a
    # worker forked rather than spawned inherits the right value class.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # unannotated
    server = serve_metrics(settings.metrics_host, settings.metrics_port, multiprocess_registry(directory))
    log.info("metrics of %d workers at http://%s:%d/metrics", workers, settings.metrics_host, settings.metrics_port)
    return server


@contextlib.asynccontextmanager
async def metrics_exposed(settings: Settings, services: Services) -> AsyncIterator[None]:
    """While the app runs: serves /metrics on the metrics port (if set) and samples pools and queues.

    In multiprocess mode the port is usually the supervisor's already (`prepare_multiprocess`):
    a worker that cannot bind it only samples.
    """
    port = settings.metrics_port
    if port is None:
        yield
        return
    server: MetricsServer | None = None
    multiprocess = in_multiprocess_mode()
    # prometheus-client's own variable, which the library itself reads (not a Parley setting).
    registry = multiprocess_registry(os.environ[MULTIPROC_ENV]) if multiprocess else REGISTRY
    try:
        # Off the loop: binding may resolve a host name.
        server = await asyncio.to_thread(serve_metrics, settings.metrics_host, port, registry)
        log.info("metrics at http://%s:%d/metrics", settings.metrics_host, server.port)
    except OSError as error:
        if not multiprocess:
            raise RuntimeError(
                f"cannot serve metrics on {settings.metrics_host}:{port} (PARLEY_METRICS_PORT): {error.strerror}"
            ) from error
        log.debug("metrics port %d is served by another process of this machine", port)
    sampler = asyncio.create_task(_sample_forever(services, SAMPLE_SECONDS), name="parley.metrics.sampler")
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        if server is not None:
            await asyncio.to_thread(server.close)
