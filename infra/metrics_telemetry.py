"""`PrometheusTelemetry`: the `Telemetry` port on prometheus-client, with labels from bounded sets only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from infra.metrics import OTHER, metrics
from resolvers.services import NullTelemetry

if TYPE_CHECKING:
    from infra.settings import Settings
    from resolvers.ports import Telemetry

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
# Root fields per operation type that get a label of their own: the schema has about 50;
# the graph layer already maps names outside the schema to "other" (this is a backstop).
MAX_FIELDS_PER_TYPE = 200


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
