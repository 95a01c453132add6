"""Loss, duplicate and latency accounting for messages sent by the load generator.

Every message is registered before it is sent, with the time it was *scheduled*
for and the set of devices that must receive it. Each arrival is checked
against that set: a second arrival at the same device is a duplicate, a device
outside the set is misrouted, and whatever has not arrived when the run gives
up waiting is lost. Latency is arrival time minus scheduled time, so a send
that waited in a queue (client-side or server-side) is charged for the wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q ≤ 100) of an ascending list; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Phase:
    """The messages of one measuring phase (a ramp step, the warm-up, a storm) and what became of them."""

    name: str
    messages: int = 0
    send_errors: int = 0
    expected_deliveries: int = 0
    delivered: int = 0
    completed_messages: int = 0
    duplicates: int = 0
    first_scheduled: float = math.inf
    last_arrival: float = -math.inf
    # Arrival minus scheduled time, per delivery and per message at its last recipient.
    latencies: list[float] = field(default_factory=list)
    last_member_latencies: list[float] = field(default_factory=list)
    # Result of sendMessage back at the sender minus scheduled time.
    send_latencies: list[float] = field(default_factory=list)
    # acknowledge sent by the recipient → DELIVERED receipt at the sender.
    receipt_latencies: list[float] = field(default_factory=list)


class _Sent:
    __slots__ = ("arrived", "expected", "failed", "phase", "scheduled")

    def __init__(self, scheduled: float, expected: frozenset[int], phase: Phase) -> None:
        self.scheduled = scheduled
        self.expected = expected
        self.phase = phase
        self.arrived: set[int] = set()
        self.failed = False


class Ledger:
    """Expected deliveries of every message of a scenario, and the arrivals seen."""

    def __init__(self) -> None:
        self._sent: dict[tuple[int, int], _Sent] = {}
        self.duplicates = 0
        self.misrouted = 0
        self.unknown = 0
        # Deliveries owed and not arrived, over all phases (kept up to date: polled while draining).
        self.owed = 0

    def expect(self, key: tuple[int, int], scheduled: float, recipients: frozenset[int], phase: Phase) -> None:
        """Registers message `key` = (sender, sequence number), due at `recipients` (device indices)."""
        self._sent[key] = _Sent(scheduled, recipients, phase)
        phase.messages += 1
        phase.expected_deliveries += len(recipients)
        phase.first_scheduled = min(phase.first_scheduled, scheduled)
        self.owed += len(recipients)

    def sent(self, key: tuple[int, int], at: float) -> None:
        """The server confirmed the send (the SENT moment)."""
        record = self._sent[key]
        record.phase.send_latencies.append(at - record.scheduled)

    def failed(self, key: tuple[int, int]) -> None:
        """The server refused the send (or the connection died): nothing is owed for it."""
        record = self._sent[key]
        if not record.failed:
            record.failed = True
            record.phase.send_errors += 1
            record.phase.expected_deliveries -= len(record.expected) - len(record.arrived)
            self.owed -= len(record.expected) - len(record.arrived)

    def arrive(self, key: tuple[int, int], device: int, at: float) -> None:
        """Device `device` received message `key` at `at` (monotonic seconds)."""
        record = self._sent.get(key)
        if record is None:
            self.unknown += 1
            return
        if device not in record.expected:
            self.misrouted += 1
            return
        if device in record.arrived:
            self.duplicates += 1
            record.phase.duplicates += 1
            return
        record.arrived.add(device)
        phase = record.phase
        latency = at - record.scheduled
        phase.latencies.append(latency)
        phase.last_arrival = max(phase.last_arrival, at)
        if not record.failed:
            phase.delivered += 1
            self.owed -= 1
            if len(record.arrived) == len(record.expected):
                phase.completed_messages += 1
                phase.last_member_latencies.append(latency)

    def lost(self, phase: Phase | None = None) -> int:
        """Deliveries owed (the send succeeded) that have not arrived, in `phase` or in all phases."""
        if phase is None:
            return self.owed
        return sum(
            len(record.expected) - len(record.arrived)
            for record in self._sent.values()
            if not record.failed and record.phase is phase
        )

    def rebase(self, phase: Phase, scheduled: float) -> None:
        """Counts the phase's latencies from `scheduled` (a reconnect storm counts from the reconnect)."""
        for record in self._sent.values():
            if record.phase is phase:
                record.scheduled = scheduled
        phase.first_scheduled = scheduled
