"""`python -m bench`: the benchmark harness of issue 6 (see bench/README.md).

Starts its own PostgreSQL database and Redis DB, `parley serve` and a bare
strawberry echo server, drives them with an open-loop load generator and
writes results.json, summary.md and latency.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.config import SCENARIO_NUMBERS, SCENARIOS, Config, tiny
from bench.runner import Run
from tests.support.services import MissingService

_RESULTS = Path(__file__).resolve().parent / "results"


def _scenario(value: str) -> str:
    name = SCENARIO_NUMBERS.get(value, value)
    if name not in SCENARIOS:
        raise argparse.ArgumentTypeError(f"unknown scenario {value!r}; one of {', '.join(SCENARIOS)} (or 1-5)")
    return name


def _rates(value: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def _default(name: str) -> str:
    """ "(full: X; tiny: Y)" for the help text."""

    def show(value: object) -> str:
        return (
            ",".join(f"{v:g}" for v in value)
            if isinstance(value, tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )

    full, small = getattr(Config(), name), getattr(tiny(Config()), name)
    return f"(full: {show(full)}; tiny: {show(small)})" if full != small else f"(default: {show(full)})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark Parley (PostgreSQL + Redis, `parley serve`) against a bare strawberry echo server "
            "with an open-loop graphql-transport-ws load generator. Scenarios: 1 direct (1:1 with acks, "
            "rate ramp), 2 fanout (100-member groups, rate ramp), 3 idle (memory per subscribed socket), "
            "4 storm (reconnect with pending events; Parley only), 5 memory (growth per event per "
            "subscription). Writes results.json, summary.md and latency.png; exits 1 when anything was "
            "lost, duplicated or crashed."
        ),
    )
    parser.add_argument(
        "--scenario",
        action="append",
        type=_scenario,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)} or 1-5; default: all",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="seconds-long smoke scale: proves it runs, measures nothing"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: bench/results/<UTC timestamp>/)"
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare echo server (no ratios)")
    parser.add_argument("--servers", type=int, metavar="N", help=f"`parley serve` processes {_default('servers')}")
    parser.add_argument("--duration", type=float, metavar="S", help=f"seconds per ramp step {_default('step_seconds')}")
    parser.add_argument(
        "--rates", type=_rates, metavar="R,R,...", help=f"scenario 1 messages/s in all {_default('direct_rates')}"
    )
    parser.add_argument(
        "--pairs", type=int, metavar="N", help=f"scenario 1 conversations, one sender each {_default('direct_pairs')}"
    )
    parser.add_argument(
        "--group-rates", type=_rates, metavar="R,R,...", help=f"scenario 2 messages/s in all {_default('group_rates')}"
    )
    parser.add_argument("--groups", type=int, metavar="N", help=f"scenario 2 groups {_default('groups')}")
    parser.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help=f"scenario 2 members per group, owner included {_default('group_size')}",
    )
    parser.add_argument(
        "--group-senders",
        type=int,
        metavar="N",
        help=f"scenario 2 sending members per group {_default('group_senders')}",
    )
    parser.add_argument("--idle-sockets", type=int, metavar="N", help=f"scenario 3 sockets {_default('idle_sockets')}")
    parser.add_argument(
        "--storm-devices", type=int, metavar="N", help=f"scenario 4 devices {_default('storm_devices')}"
    )
    parser.add_argument(
        "--storm-events", type=int, metavar="N", help=f"scenario 4 pending events per device {_default('storm_events')}"
    )
    parser.add_argument(
        "--memory-events",
        type=int,
        metavar="N",
        help=f"scenario 5 events carried, messages x subscriptions {_default('memory_events')}",
    )
    parser.add_argument(
        "--ack-interval",
        type=float,
        metavar="S",
        help=f"seconds between one device's acknowledgements {_default('ack_interval')}",
    )
    return parser


def config_from(args: argparse.Namespace) -> tuple[Config, str]:
    """The run's configuration and scale name from the command line."""
    base = Config(scenarios=tuple(dict.fromkeys(args.scenario)) if args.scenario else Config().scenarios)
    config = tiny(base) if args.tiny else base
    overrides = {
        "bare": False if args.no_bare else None,
        "servers": args.servers,
        "step_seconds": args.duration,
        "direct_rates": args.rates,
        "direct_pairs": args.pairs,
        "group_rates": args.group_rates,
        "groups": args.groups,
        "group_size": args.group_size,
        "group_senders": args.group_senders,
        "idle_sockets": args.idle_sockets,
        "storm_devices": args.storm_devices,
        "storm_events": args.storm_events,
        "memory_events": args.memory_events,
        "ack_interval": args.ack_interval,
    }
    changed = {key: value for key, value in overrides.items() if value is not None}
    scale = "tiny" if args.tiny else "full"
    if any(key not in {"bare", "servers"} for key in changed):
        scale += " (with changes)"
    return dataclasses.replace(config, **changed), scale


def main(argv: list[str] | None = None) -> int:
    """Runs the harness; exit status 1 when something was lost, duplicated or crashed."""
    args = _parser().parse_args(argv)
    config, scale = config_from(args)
    out: Path = args.out or _RESULTS / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, out, scale)
    print(f"bench: {scale} scale, scenarios {', '.join(config.scenarios)}; writing to {out}", flush=True)
    try:
        summary = run.execute()
    except MissingService as missing:
        print(f"bench: cannot run: {missing}", file=sys.stderr)
        return 3
    print()
    print(summary)
    print(f"bench: wrote {out / 'results.json'}, {out / 'summary.md'}, {out / 'latency.png'}")
    failures = run.failures()
    for failure in failures:
        print(f"bench: FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
