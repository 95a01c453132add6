"""The numbers each scenario produces (written to results.json as they are)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.ledger import Phase, percentile


def ms(seconds: float) -> float | None:
    """Seconds → milliseconds rounded to 0.01; None for "no sample" (JSON has no NaN)."""
    return None if math.isnan(seconds) or math.isinf(seconds) else round(seconds * 1000, 2)


@dataclass
class Latency:
    """Percentiles of one latency series, in ms."""

    samples: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        """Summarizes the samples (seconds)."""
        ordered = sorted(samples)
        return cls(
            samples=len(ordered),
            p50=ms(percentile(ordered, 50)),
            p95=ms(percentile(ordered, 95)),
            p99=ms(percentile(ordered, 99)),
            max=ms(ordered[-1]) if ordered else None,
        )


@dataclass
class Step:
    """One rate of a ramp: offered vs achieved, latencies, accounting, CPU."""

    offered_messages_per_s: float
    offered_deliveries_per_s: float
    seconds: float
    messages: int
    deliveries_expected: int
    delivered: int
    achieved_messages_per_s: float
    achieved_deliveries_per_s: float
    # Scheduled send → event at a recipient, every delivery.
    delivery: Latency
    # Scheduled send → event at the *last* recipient of each message (1:1: the recipient).
    last_member: Latency
    # Scheduled send → sendMessage result at the sender.
    send: Latency
    # acknowledge sent → DELIVERED receipt at the sender (1:1 only).
    receipt: Latency
    losses: int
    duplicates: int
    send_errors: int
    server_cpu: float  # cores busy, all server processes together
    client_cpu: float  # cores busy, the load generator
    saturated: bool
    saturation_reason: str | None

    @classmethod
    def of(
        cls,
        phase: Phase,
        *,
        offered: float,
        recipients: float,
        seconds: float,
        server_cpu: float,
        client_cpu: float,
    ) -> Step:
        """Summarizes a phase; saturation is decided by the caller."""
        span = max(seconds, phase.last_arrival - phase.first_scheduled) if phase.delivered else seconds
        return cls(
            offered_messages_per_s=offered,
            offered_deliveries_per_s=round(offered * recipients, 1),
            seconds=round(seconds, 2),
            messages=phase.messages,
            deliveries_expected=phase.expected_deliveries,
            delivered=phase.delivered,
            achieved_messages_per_s=round(phase.completed_messages / span, 1),
            achieved_deliveries_per_s=round(phase.delivered / span, 1),
            delivery=Latency.of(phase.latencies),
            last_member=Latency.of(phase.last_member_latencies),
            send=Latency.of(phase.send_latencies),
            receipt=Latency.of(phase.receipt_latencies),
            losses=phase.expected_deliveries - phase.delivered,
            duplicates=phase.duplicates,
            send_errors=phase.send_errors,
            server_cpu=round(server_cpu, 2),
            client_cpu=round(client_cpu, 2),
            saturated=False,
            saturation_reason=None,
        )


@dataclass
class Accounting:
    """Loss and duplicate counts over a whole scenario run (all must be zero)."""

    losses: int = 0
    duplicates: int = 0
    misrouted: int = 0
    send_errors: int = 0
    ack_errors: int = 0
    stream_errors: int = 0
    first_error: str | None = None


@dataclass
class RampResult:
    """Scenarios 1 and 2 against one server."""

    target: str
    latency_target_ms: float
    # Highest achieved rate of a step that kept p99 (to the last member) within the target, lost nothing and
    # did not saturate: messages/s for scenario 1, deliveries/s for scenario 2.
    best_rate: float | None
    # Offered rate of the first saturated step (None: never saturated up to the last step).
    saturation_offered: float | None
    saturation_achieved: float | None
    steps: list[Step]
    warmup: Step | None
    sessions: int
    accounting: Accounting = field(default_factory=Accounting)


@dataclass
class IdleResult:
    """Scenario 3 against one server."""

    target: str
    sockets: int
    held: int
    warm_sockets: int
    connect_seconds: float
    connects_per_s: float
    rss_before_kib: int
    rss_after_kib: int
    kib_per_socket: float
    accounting: Accounting = field(default_factory=Accounting)


@dataclass
class StormResult:
    """Scenario 4 (Parley only: the echo server stores nothing to replay)."""

    target: str
    devices: int
    events_per_device: int
    groups: int
    events_expected: int
    delivered: int
    seconds_to_all_connected: float
    seconds_to_first_event: float | None
    seconds_to_all_delivered: float | None
    delivery: Latency
    setup_seconds: float
    accounting: Accounting = field(default_factory=Accounting)


@dataclass
class MemoryResult:
    """Scenario 5 against one server."""

    target: str
    sockets: int
    warmup_events: int
    events: int
    rss_before_kib: int
    rss_after_kib: int
    kib_per_event_per_subscription: float
    accounting: Accounting = field(default_factory=Accounting)


ScenarioResult = RampResult | IdleResult | StormResult | MemoryResult
