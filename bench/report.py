"""Writing a run down: results.json (every number), summary.md (tables) and latency.png (the ramps)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; before pyplot is imported

import matplotlib.pyplot as plt

from bench.config import Config
from bench.results import IdleResult, MemoryResult, RampResult, ScenarioResult, Step, StormResult

# scenario → target ("parley" / "bare") → its result, or the error that stopped it.
Results = dict[str, dict[str, ScenarioResult | str]]

TITLES = {
    "direct": "1. 1:1 durable, recipients acknowledging",
    "fanout": "2. Group fan-out, members online and acknowledging",
    "idle": "3. Idle density",
    "storm": "4. Reconnect storm",
    "memory": "5. Long-lived subscriptions: memory per event",
}


def to_json(results: Results, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything, as plain JSON values."""
    scenarios: dict[str, Any] = {}
    for name, by_target in results.items():
        scenarios[name] = {
            target: {"error": result} if isinstance(result, str) else dataclasses.asdict(result)
            for target, result in by_target.items()
        }
    return {"meta": meta, "scenarios": scenarios}


def write_json(out: Path, results: Results, meta: dict[str, Any]) -> None:
    """Writes results.json into `out`."""
    (out / "results.json").write_text(json.dumps(to_json(results, meta), indent=1, allow_nan=False) + "\n")


def write(out: Path, results: Results, meta: dict[str, Any], config: Config) -> str:
    """Writes results.json, summary.md and latency.png into `out`; returns the markdown."""
    write_json(out, results, meta)
    summary = markdown(results, meta, config)
    (out / "summary.md").write_text(summary)
    plot(results, config, out / "latency.png")
    return summary


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(parley: float | None, bare: float | None) -> str:
    if parley is None or bare is None or bare == 0:
        return "—"
    return f"{parley / bare:.2f}"


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**miss**")


def _get(results: Results, scenario: str, target: str) -> ScenarioResult | None:
    result = results.get(scenario, {}).get(target)
    return None if isinstance(result, str) else result


def _ran(results: Results, scenario: str, kind: type[Any]) -> bool | None:
    """None (no verdict) when Parley's run of the scenario did not finish."""
    return True if isinstance(_get(results, scenario, "parley"), kind) else None


def _metric(
    results: Results, scenario: str, kind: type[Any], read: Callable[[Any], float | None]
) -> tuple[float | None, float | None]:
    values: list[float | None] = []
    for target in ("parley", "bare"):
        result = _get(results, scenario, target)
        values.append(read(result) if isinstance(result, kind) else None)
    return values[0], values[1]


def _headline(results: Results, config: Config) -> list[str]:
    goals = config.targets
    rows = [
        "| # | measure | target | Parley | bare | Parley ÷ bare | verdict |",
        "|---|---|---|---:|---:|---:|---|",
    ]

    def row(
        number: str,
        measure: str,
        target: str,
        pair: tuple[float | None, float | None],
        *,
        ok: bool | None = None,
        digits: int = 0,
    ) -> None:
        parley, bare = pair
        rows.append(
            f"| {number} | {measure} | {target} | {_num(parley, digits)} | {_num(bare, digits)} "
            f"| {_ratio(parley, bare)} | {_verdict(ok)} |"
        )

    def ramp(number: str, scenario: str, measure: str, goal: float, unit: str) -> None:
        best = _metric(results, scenario, RampResult, lambda r: r.best_rate)
        ok = _ran(results, scenario, RampResult) and (best[0] or 0) >= goal
        row(number, measure, f"≥ {goal:,.0f}", best, ok=ok)
        offered = _metric(results, scenario, RampResult, lambda r: r.saturation_offered)
        achieved = _metric(results, scenario, RampResult, lambda r: r.saturation_achieved)
        row(number, f"saturation: offered {unit}", "—", offered)
        row(number, f"saturation: achieved {unit}", "—", achieved)

    if "direct" in results:
        ramp("1", "direct", f"1:1 msg/s with p99 ≤ {goals.direct_p99_ms:g} ms", goals.direct_rate, "msg/s")
    if "fanout" in results:
        measure = f"{config.group_size}-member fan-out deliveries/s, last-member p99 ≤ {goals.fanout_p99_ms:g} ms"
        ramp("2", "fanout", measure, goals.fanout_rate, "deliveries/s")
    if "idle" in results:
        kib = _metric(results, "idle", IdleResult, lambda r: r.kib_per_socket)
        ok = None if kib[0] is None else kib[0] <= goals.idle_kib_per_socket
        row("3", "KiB per subscribed idle socket", f"≤ {goals.idle_kib_per_socket:g}", kib, ok=ok, digits=1)
        idle = _get(results, "idle", "parley")
        held_ok = None
        if isinstance(idle, IdleResult):
            held_ok = idle.held == idle.sockets + idle.warm_sockets and idle.sockets >= goals.idle_sockets
        held = _metric(results, "idle", IdleResult, lambda r: r.held)
        row("3", "sockets held (incl. warm-up sockets)", f"{goals.idle_sockets:,}", held, ok=held_ok)
    storm = _get(results, "storm", "parley")
    if isinstance(storm, StormResult):
        seconds = storm.seconds_to_all_delivered
        ok = seconds is not None and seconds <= goals.storm_seconds
        measure = f"seconds until all {storm.events_expected:,} pending events delivered"
        row("4", measure, f"≤ {goals.storm_seconds:g} s", (seconds, None), ok=ok, digits=2)
    if "memory" in results:
        kib = _metric(results, "memory", MemoryResult, lambda r: r.kib_per_event_per_subscription)
        ok = None if kib[0] is None else kib[0] <= goals.memory_kib_per_event
        measure = "KiB of server memory per event per subscription"
        row("5", measure, f"≤ {goals.memory_kib_per_event:g}", kib, ok=ok, digits=3)
    return rows


def _ramp_table(results: Results, scenario: str) -> list[str]:
    rows = [
        "| server | offered msg/s | offered deliv/s | achieved msg/s | achieved deliv/s | p50 | p95 | p99 | max | last-member p99 | send p99 | receipt p50 / p99 | losses | dups | send errors | server cores | client cores | saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for target in ("parley", "bare"):
        result = _get(results, scenario, target)
        if not isinstance(result, RampResult):
            continue
        for step in result.steps:
            receipt = f"{_num(step.receipt.p50, 1)} / {_num(step.receipt.p99, 1)}" if step.receipt.samples else "—"
            rows.append(
                f"| {target} | {step.offered_messages_per_s:g} | {_num(step.offered_deliveries_per_s)} "
                f"| {_num(step.achieved_messages_per_s, 1)} | {_num(step.achieved_deliveries_per_s)} "
                f"| {_num(step.delivery.p50, 1)} | {_num(step.delivery.p95, 1)} | {_num(step.delivery.p99, 1)} "
                f"| {_num(step.delivery.max, 1)} | {_num(step.last_member.p99, 1)} | {_num(step.send.p99, 1)} "
                f"| {receipt} | {step.losses} | {step.duplicates} | {step.send_errors} "
                f"| {step.server_cpu:.2f} | {step.client_cpu:.2f} "
                f"| {step.saturation_reason or 'no'} |"
            )
    return rows


def _details(results: Results) -> list[str]:
    lines: list[str] = []
    for scenario in ("direct", "fanout"):
        if scenario in results:
            lines += [
                "",
                f"### {TITLES[scenario]}",
                "",
                "Latencies in ms, counted from each message's scheduled send time.",
                "",
            ]
            lines += _ramp_table(results, scenario)
    if "idle" in results:
        lines += [
            "",
            f"### {TITLES['idle']}",
            "",
            "| server | sockets | held | connect s | connects/s | RSS before KiB | RSS after KiB | KiB/socket |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for target in ("parley", "bare"):
            idle = _get(results, "idle", target)
            if isinstance(idle, IdleResult):
                lines.append(
                    f"| {target} | {idle.sockets:,} | {idle.held:,} | {idle.connect_seconds} | {_num(idle.connects_per_s)} "
                    f"| {idle.rss_before_kib:,} | {idle.rss_after_kib:,} | {idle.kib_per_socket} |"
                )
    storm = _get(results, "storm", "parley")
    if isinstance(storm, StormResult):
        lines += [
            "",
            f"### {TITLES['storm']}",
            "",
            "| devices | events | delivered | all connected s | first event s | all delivered s | p50 ms | p99 ms | setup s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {storm.devices:,} | {storm.events_expected:,} | {storm.delivered:,} | {storm.seconds_to_all_connected} "
            f"| {_num(storm.seconds_to_first_event, 3)} | {_num(storm.seconds_to_all_delivered, 3)} "
            f"| {_num(storm.delivery.p50, 1)} | {_num(storm.delivery.p99, 1)} | {storm.setup_seconds} |",
        ]
    if "memory" in results:
        lines += [
            "",
            f"### {TITLES['memory']}",
            "",
            "| server | subscriptions | events carried | RSS before KiB | RSS after KiB | KiB/event/subscription |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for target in ("parley", "bare"):
            memory = _get(results, "memory", target)
            if isinstance(memory, MemoryResult):
                lines.append(
                    f"| {target} | {memory.sockets} | {memory.events:,} | {memory.rss_before_kib:,} "
                    f"| {memory.rss_after_kib:,} | {memory.kib_per_event_per_subscription} |"
                )
    return lines


def _accounting(results: Results) -> list[str]:
    lines = [
        "",
        "### Losses, duplicates and errors (must all be zero)",
        "",
        "| scenario | server | losses | duplicates | misrouted | send errors | ack errors | stream errors | first error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scenario, by_target in results.items():
        for target, result in by_target.items():
            if isinstance(result, str):
                lines.append(f"| {scenario} | {target} | — | — | — | — | — | — | crashed: {result[:200]} |")
                continue
            a = result.accounting
            error = (a.first_error or "").replace("|", "/")[:200]
            lines.append(
                f"| {scenario} | {target} | {a.losses} | {a.duplicates} | {a.misrouted} | {a.send_errors} "
                f"| {a.ack_errors} | {a.stream_errors} | {error} |"
            )
    return lines


def markdown(results: Results, meta: dict[str, Any], config: Config) -> str:
    """The summary: headline against the targets, then each scenario's table, then the accounting."""
    lines = [
        f"# Parley benchmark, {meta['started_at']}",
        "",
        f"Scale: **{meta['scale']}**. Commit {meta['commit']}. {meta['cpus']} CPUs; {meta['placement']}. "
        f"{meta['servers']} `parley serve` process(es); the bare echo server is one process. "
        "Open loop: latency counts from each message's scheduled send time.",
        "",
    ]
    if meta["scale"] != "full":
        lines += ["*Not full scale: the verdicts below say nothing about the targets.*", ""]
    lines += _headline(results, config)
    lines += _details(results)
    lines += _accounting(results)
    return "\n".join(lines) + "\n"


def plot(results: Results, config: Config, path: Path) -> None:
    """Latency percentiles against offered load for scenarios 1 and 2, Parley solid, bare dashed."""
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = [
        ("direct", "1:1: offered messages/s", config.targets.direct_p99_ms, False),
        ("fanout", f"{config.group_size}-member fan-out: offered deliveries/s", config.targets.fanout_p99_ms, True),
    ]
    for axis, (scenario, xlabel, target_ms, per_delivery) in zip(axes, panels, strict=True):
        drawn = False
        for target, style, marker in (("parley", "-", "o"), ("bare", "--", "s")):
            result = _get(results, scenario, target)
            if not isinstance(result, RampResult) or not result.steps:
                continue
            xs = [s.offered_deliveries_per_s if per_delivery else s.offered_messages_per_s for s in result.steps]
            series: list[tuple[str, Callable[[Step], float | None], str]] = [
                ("p50", lambda s: s.last_member.p50, "tab:blue"),
                ("p99", lambda s: s.last_member.p99, "tab:red"),
                ("max", lambda s: s.last_member.max, "tab:gray"),
            ]
            for label, read, color in series:
                points = [(x, read(s)) for x, s in zip(xs, result.steps, strict=True) if read(s) is not None]
                if points:
                    axis.plot(*zip(*points, strict=True), style, marker=marker, color=color, label=f"{target} {label}")
                    drawn = True
        axis.axhline(target_ms, color="green", linewidth=1, label=f"p99 target {target_ms:g} ms")
        axis.set_title(TITLES[scenario])
        axis.set_xlabel(xlabel)
        axis.set_ylabel("latency to last recipient, ms")
        if drawn:
            axis.set_xscale("log")
            axis.set_yscale("log")
        else:
            axis.text(0.5, 0.5, "not run", ha="center", va="center", transform=axis.transAxes)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Scheduled send to last recipient: Parley solid, bare dashed", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
