"""How big each scenario is: the full scale the targets are judged at, and a seconds-long smoke scale."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("direct", "fanout", "idle", "storm", "memory")
# The issue numbers them; the CLI accepts either.
SCENARIO_NUMBERS = {str(n): name for n, name in enumerate(SCENARIOS, start=1)}


@dataclass(frozen=True)
class Targets:
    """What the numbers are judged against (issue 6)."""

    direct_rate: float = 1000  # messages/s with p99 ≤ direct_p99_ms
    direct_p99_ms: float = 50
    fanout_rate: float = 10_000  # deliveries/s with p99 to the last member ≤ fanout_p99_ms
    fanout_p99_ms: float = 100
    idle_kib_per_socket: float = 30
    idle_sockets: int = 10_000
    storm_seconds: float = 5
    memory_kib_per_event: float = 0.3


@dataclass(frozen=True)
class Config:
    """Every knob of a run."""

    scenarios: tuple[str, ...] = SCENARIOS
    bare: bool = True  # also run scenarios 1, 2, 3 and 5 against the bare echo server
    servers: int = 1  # `parley serve` processes (connections are spread round-robin)
    # A fresh server per scenario, so that each scenario's memory and caches start alike;
    # the smoke scale shares one of each to stay fast.
    fresh_servers: bool = True
    # Ramps (scenarios 1 and 2): each step offers `rate` messages/s for `step_seconds` (longer at
    # low rates, up to `max_step_seconds`, so that a step has `min_step_messages`), then drains.
    step_seconds: float = 5.0
    max_step_seconds: float = 15.0
    min_step_messages: int = 50
    grace_seconds: float = 5.0  # a drain gives up after this long without an arrival
    saturation_share: float = 0.9  # achieved below this share of offered: saturated
    explode_factor: float = 10.0  # p99 above this many times the target: saturated
    ack_interval: float = 0.05
    direct_pairs: int = 50
    direct_rates: tuple[float, ...] = (25, 50, 100, 200, 400, 700, 1000, 1500, 2000, 3000)
    groups: int = 1
    group_size: int = 100
    group_senders: int = 4
    group_rates: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 150, 200)
    idle_sockets: int = 10_000
    idle_hold_seconds: float = 5.0
    connect_concurrency: int = 200
    storm_devices: int = 1000
    storm_events: int = 10
    storm_timeout: float = 60.0
    max_group_members: int = 100  # Parley's PARLEY_MAX_GROUP_MEMBERS default, owner included
    memory_sockets: int = 5
    memory_events: int = 10_000  # events carried in all (messages x sockets)
    memory_warmup_events: int = 1000
    targets: Targets = Targets()


def tiny(base: Config) -> Config:
    """A seconds-long run of every scenario: proves the harness works, measures nothing."""
    return Config(
        scenarios=base.scenarios,
        bare=base.bare,
        servers=base.servers,
        fresh_servers=False,
        step_seconds=1.0,
        max_step_seconds=1.0,
        min_step_messages=0,
        grace_seconds=3.0,
        ack_interval=base.ack_interval,
        direct_pairs=3,
        direct_rates=(5, 10),
        groups=1,
        group_size=5,
        group_senders=2,
        group_rates=(2, 4),
        idle_sockets=20,
        idle_hold_seconds=0.5,
        connect_concurrency=20,
        storm_devices=12,
        storm_events=3,
        storm_timeout=20.0,
        max_group_members=6,  # several groups even at this scale
        memory_sockets=2,
        memory_events=100,
        memory_warmup_events=20,
        targets=base.targets,
    )
