"""Runs the chosen scenarios, each against a fresh Parley and a fresh bare echo server, and reports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import report, scenarios
from bench.config import Config
from bench.report import Results
from bench.results import ScenarioResult
from bench.stack import (
    Backing,
    Placement,
    Target,
    backing_services,
    bare_target,
    parley_target,
    plan_placement,
    raise_fd_limit,
)

Scenario = Callable[[Target, Config], Awaitable[ScenarioResult]]
SCENARIOS: dict[str, Scenario] = {
    "direct": scenarios.direct,
    "fanout": scenarios.fanout,
    "idle": scenarios.idle,
    "storm": scenarios.storm,
    "memory": scenarios.memory,
}
# The echo server keeps nothing while a device is offline: a reconnect storm has nothing to replay there.
NEEDS_STORAGE = {"storm"}
# No single scenario run may take longer than this, whatever goes wrong.
SCENARIO_CAP_SECONDS = 1200


def _commit(root: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


class Run:
    """One harness run: where it writes, what it runs against, what it found."""

    def __init__(self, config: Config, out: Path, scale: str) -> None:
        self.config = config
        self.out = out
        self.logs = out / "logs"
        self.scale = scale
        self.results: Results = {}
        self.placement: Placement = plan_placement()
        self.started_at = datetime.now(UTC)

    def meta(self, elapsed: float, fd_limit: int) -> dict[str, Any]:
        """What the numbers were measured on."""
        return {
            "started_at": self.started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "elapsed_seconds": round(elapsed, 1),
            "scale": self.scale,
            "commit": _commit(Path(__file__).resolve().parent.parent),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "placement": self.placement.describe(),
            "fd_limit": fd_limit,
            "servers": self.config.servers,
            "config": dataclasses.asdict(self.config),
        }

    def _factories(self, backing: Backing) -> dict[str, Callable[[], AbstractAsyncContextManager[Target]]]:
        factories: dict[str, Callable[[], AbstractAsyncContextManager[Target]]] = {
            "parley": lambda: parley_target(backing, self.placement, self.logs, self.config.servers)
        }
        if self.config.bare:
            factories["bare"] = lambda: bare_target(self.placement, self.logs)
        return factories

    async def _one(self, name: str, server: str, target: AbstractAsyncContextManager[Target] | Target) -> None:
        """Runs scenario `name` against a target (started here, unless shared); failures become results."""
        by_target = self.results.setdefault(name, {})
        began = time.monotonic()
        try:
            async with asyncio.timeout(SCENARIO_CAP_SECONDS):
                if isinstance(target, Target):
                    by_target[server] = await SCENARIOS[name](target, self.config)
                else:
                    async with target as started:
                        by_target[server] = await SCENARIOS[name](started, self.config)
            print(f"  {server:6} done in {time.monotonic() - began:.1f} s", flush=True)
        except Exception as error:
            (self.logs / f"{name}-{server}-error.log").write_text(traceback.format_exc())
            print(f"  {server}: {name} failed: {error!r} (see logs/)", flush=True)
            by_target[server] = f"{type(error).__name__}: {error}"

    async def _scenarios(self, backing: Backing, fd_limit: int) -> None:
        started = time.monotonic()
        factories = self._factories(backing)
        async with AsyncExitStack() as shared:
            # Shared servers start once here; fresh ones start per scenario in `_one`.
            running: dict[str, Target | None] = {}
            for server, factory in factories.items():
                running[server] = None if self.config.fresh_servers else await shared.enter_async_context(factory())
            for name in self.config.scenarios:
                print(report.TITLES[name], flush=True)
                for server, target in running.items():
                    if server == "bare" and name in NEEDS_STORAGE:
                        continue
                    await self._one(name, server, target or factories[server]())
                    # Partial results survive a crash later on.
                    report.write_json(self.out, self.results, self.meta(time.monotonic() - started, fd_limit))

    def execute(self) -> str:
        """Starts the backing services, runs every scenario, writes the report; returns the markdown summary."""
        self.logs.mkdir(parents=True, exist_ok=True)
        fd_limit = raise_fd_limit()
        started = time.monotonic()
        with backing_services(self.logs) as backing:
            # Pinned only now: a throwaway PostgreSQL or Redis started above keeps every CPU.
            if self.placement.client_cpus:
                os.sched_setaffinity(0, self.placement.client_cpus)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._scenarios(backing, fd_limit))
        return report.write(self.out, self.results, self.meta(time.monotonic() - started, fd_limit), self.config)

    def failures(self) -> list[str]:
        """Crashed scenarios, losses and duplicates: why the run should not exit 0."""
        found: list[str] = []
        for scenario, by_target in self.results.items():
            for target, result in by_target.items():
                if isinstance(result, str):
                    found.append(f"{scenario}/{target} crashed: {result}")
                elif result.accounting.losses or result.accounting.duplicates:
                    found.append(
                        f"{scenario}/{target}: {result.accounting.losses} lost, {result.accounting.duplicates} duplicated"
                    )
        return found
