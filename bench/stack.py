"""What the benchmark runs against: backing services, `parley serve` and the bare echo server, pinned to cores.

The load generator (this process) runs on the first CPU it may use and the
servers on the others, so that client and server do not take turns on one
core; PostgreSQL and Redis are left to the scheduler. With a single CPU nothing
is pinned and the results say so.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.seed import Account, seed_accounts
from tests.support.processes import ProcessServer, production_env
from tests.support.services import RedisTarget, fresh_database, fresh_redis, postgres_server, redis_server

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
# Benchmark senders are machines, not people: the per-user send limit (300 a minute) would refuse them.
_BENCH_SEND_RATE_PER_MINUTE = 100_000_000


@dataclass(frozen=True)
class Placement:
    """Which CPUs the load generator and the servers run on (None: not pinned)."""

    client_cpus: set[int] | None
    server_cpus: set[int] | None

    def describe(self) -> str:
        """For the report."""
        if self.client_cpus is None:
            return "not pinned (fewer than 2 CPUs)"
        return f"load generator on CPU {sorted(self.client_cpus)}, servers on CPU {sorted(self.server_cpus or [])}"


def plan_placement() -> Placement:
    """Load generator on the first allowed CPU, servers on the rest; nothing pinned with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None)
    return Placement({cpus[0]}, set(cpus[1:]))


def raise_fd_limit() -> int:
    """Raises this process's open-file limit to the hard limit (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


@dataclass(frozen=True)
class Backing:
    """This run's PostgreSQL database (migrated) and Redis DB number + prefix."""

    database_url: str
    redis: RedisTarget
    secret_key: str

    def parley_env(self) -> dict[str, str]:
        """PARLEY_* for `parley serve` and `parley migrate` in the production mode."""
        env = production_env(self.database_url, self.redis, self.secret_key)
        env["PARLEY_SEND_RATE_PER_MINUTE"] = str(_BENCH_SEND_RATE_PER_MINUTE)
        return env


@contextmanager
def backing_services(log_dir: Path) -> Iterator[Backing]:
    """A fresh database (migrated with `parley migrate`) and Redis DB for this run; both removed afterwards."""
    with (
        postgres_server() as pg,
        fresh_database(pg, prefix="parley_bench") as database_url,
        redis_server() as rs,
        fresh_redis(rs, prefix="parley-bench") as redis,
    ):
        backing = Backing(database_url, redis, secrets.token_urlsafe(36))  # 48 characters
        parley = Path(sys.executable).parent / "parley"
        migrated = subprocess.run(
            [str(parley), "migrate"],
            env={**os.environ, **backing.parley_env()},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        (log_dir / "migrate.log").write_text(migrated.stdout + migrated.stderr)
        if migrated.returncode != 0:
            raise RuntimeError(f"parley migrate failed:\n{migrated.stderr[-4000:]}")
        yield backing


def _stat_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may contain spaces: count fields after its closing parenthesis.
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


Provision = Callable[[int, str], Awaitable[list[Account]]]


@dataclass
class Target:
    """A running server under test: where to connect, how to make accounts, how to read its resources."""

    name: str
    http_url: str
    ws_urls: list[str]
    pids: list[int]
    provision: Provision
    # Parley stores pending events; the echo server has no storage (no reconnect storm against it).
    durable: bool

    def rss_kib(self) -> int:
        """Resident memory of all its processes, KiB."""
        return sum(_rss_kib(pid) for pid in self.pids)

    def cpu_seconds(self) -> float:
        """CPU time used so far by all its processes."""
        return sum(_stat_ticks(pid) for pid in self.pids) / _CLOCK_TICKS

    async def settle(self, *, idle_share: float = 0.03, window: float = 0.5, cap: float = 30) -> float:
        """Waits until the server is idle (under `idle_share` of a core over `window` s); the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < cap:
            before = self.cpu_seconds()
            await asyncio.sleep(window)
            if (self.cpu_seconds() - before) / window < idle_share:
                break
        return time.monotonic() - started


def _labels() -> Iterator[str]:
    run = secrets.token_hex(3)
    for n in itertools.count():
        yield f"b{run}x{n}u"


_LABELS = _labels()


@asynccontextmanager
async def parley_target(backing: Backing, placement: Placement, log_dir: Path, processes: int) -> AsyncIterator[Target]:
    """`processes` x `parley serve` on the server CPUs; accounts are seeded in the database."""

    async def provision(count: int, _purpose: str) -> list[Account]:
        return await seed_accounts(backing.database_url, next(_LABELS), count)

    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                ProcessServer(backing.parley_env(), log_path=log_dir / f"parley-{n}.log", cpus=placement.server_cpus)
            )
            for n in range(processes)
        ]
        yield Target(
            name="parley",
            http_url=servers[0].url,
            ws_urls=[server.ws_url for server in servers],
            pids=[server.pid for server in servers],
            provision=provision,
            durable=True,
        )


_BARE_IDS = itertools.count(1)


@asynccontextmanager
async def bare_target(placement: Placement, log_dir: Path) -> AsyncIterator[Target]:
    """The echo server (one process: its fan-out is in-process) on the server CPUs; tokens are user ids."""

    async def provision(count: int, _purpose: str) -> list[Account]:
        ids = [next(_BARE_IDS) for _ in range(count)]
        return [Account(str(user_id), str(user_id)) for user_id in ids]

    command = [sys.executable, "-m", "bench.echo_server"]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")]))}
    async with ProcessServer(env, log_path=log_dir / "bare.log", command=command, cpus=placement.server_cpus) as server:
        yield Target(
            name="bare",
            http_url=server.url,
            ws_urls=[server.ws_url],
            pids=[server.pid],
            provision=provision,
            durable=False,
        )
