"""Prometheus metrics of a Parley process: their definitions, and the counters infrastructure adapters bump.

Exposed on a port of their own (`PARLEY_METRICS_PORT`, on `PARLEY_METRICS_HOST`,
127.0.0.1 by default), never on the API's: unset, nothing listens and the use cases
get `NullTelemetry`. Every label comes from a bounded set: operation types, the
schema's root fields (anything else is "other"), "ok" or an error code, pool names,
push platforms and outcomes. Never a user id or an operation name a client chose.

The `Telemetry` port on them is infra/metrics_telemetry.py, the sampling of pools and queues
infra/metrics_sampler.py, and the exposition (the metrics port, several processes) infra/metrics_server.py.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

OTHER = "other"
PUSH_FAILURE_REASONS = frozenset({"retry", "gone", "failed", "unconfigured"})
RESYNC_REASONS = frozenset({"reconnected", "overflow", "moved"})

# Latency buckets: operations from 1 ms to 10 s; the send's two halves finer at the low end.
OPERATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class ParleyMetrics:
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


_metrics: ParleyMetrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> ParleyMetrics:
    """This process's metrics, built on first use.

    Lazily, not at import: a supervisor that imports this module and then starts
    workers (`prepare_multiprocess`) must not have made them with the wrong value class.
    """
    found = _metrics
    if found is not None:
        return found
    return _build_metrics()


def _build_metrics() -> ParleyMetrics:
    global _metrics  # noqa: PLW0603 - the process-wide singleton, built once under the lock
    with _metrics_lock:
        if _metrics is None:
            _metrics = ParleyMetrics()
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
