"""PostgreSQL and Redis for a test or benchmark run: the machine's own when running, else throwaway ones.

Each run gets a database of its own (created here, dropped at the end) and a
Redis DB number and key/channel prefix of its own; nothing it did not create is
touched. When a service is missing and cannot be started, `MissingService` says
what to install: the tests stop with it rather than turn into skipped tests.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis

from tests.support.processes import free_port
from tests.support.redis_process import RedisServer


class MissingService(RuntimeError):
    """A backing service is neither running nor startable here."""


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@contextmanager
def _throwaway_postgres() -> Iterator[str]:
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise MissingService(
            "PostgreSQL is not running on 127.0.0.1:5432 and its server binaries (initdb, pg_ctl) are not "
            "installed: run `apt-get install postgresql` or start a server there."
        )
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="parley-pg-") as tmp:
        data = Path(tmp) / "data"
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chmod(tmp, 0o777)
            run_as = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data),
                "-o",
                f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1",
                "-w",
                "start",
                "-l",
                str(Path(tmp) / "log"),
            ],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}"
        finally:
            subprocess.run(
                [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL (without database): the local one, else a throwaway."""
    if _listening("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432"
    else:
        with _throwaway_postgres() as url:
            yield url


@contextmanager
def fresh_database(server_url: str, *, prefix: str = "parley_test") -> Iterator[str]:
    """A new, empty database for this run (an asyncpg SQLAlchemy URL); dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(f"{server_url}/postgres")  # type: ignore[no-untyped-call]
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server_url.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass(frozen=True)
class RedisTarget:
    """A Redis URL with its DB number, and the key/channel prefix of this run."""

    url: str
    prefix: str


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server URL (without DB number): the local one, else a throwaway."""
    if _listening("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379"
        return
    if not shutil.which("redis-server"):
        raise MissingService(
            "Redis is not running on 127.0.0.1:6379 and redis-server is not installed: "
            "run `apt-get install redis-server` or start a server there."
        )
    with RedisServer() as server:
        yield server.url


# Marks a Redis DB number as taken by one run; expires in case a run dies without cleaning up.
_CLAIM_KEY = "parley-test-claim"
_CLAIM_SECONDS = 6 * 3600


@contextmanager
def fresh_redis(server_url: str, *, prefix: str = "parley-test") -> Iterator[RedisTarget]:
    """An empty Redis DB number for this run plus a unique prefix; only our keys are deleted after.

    Parallel runs (pytest-xdist workers) each claim a DB with SET NX, so no two share one; when all
    are taken, DB 0 is shared, which the unique prefix keeps safe.
    """
    prefix = f"{prefix}-{uuid.uuid4().hex[:12]}:"
    db = _claim_empty_db(server_url, prefix)
    url = f"{server_url}/{db}"
    try:
        yield RedisTarget(url=url, prefix=prefix)
    finally:
        cleanup = redis.Redis.from_url(url)
        try:
            keys = list(cleanup.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                cleanup.delete(*keys[start : start + 500])
            if db and cleanup.get(_CLAIM_KEY) == prefix.encode():
                cleanup.delete(_CLAIM_KEY)
        finally:
            cleanup.close()


def _claim_empty_db(server_url: str, token: str) -> int:
    """The highest DB number that was empty and is now claimed with `token`; 0 when none is."""
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{server_url}/{number}")
        try:
            if not client.set(_CLAIM_KEY, token, nx=True, ex=_CLAIM_SECONDS):
                continue
            if int(client.dbsize()) == 1:
                return number
            client.delete(_CLAIM_KEY)  # someone else's data lives there: leave it alone
        finally:
            client.close()
    return 0


class PostgresServer:
    """A throwaway PostgreSQL of one test's own, which it may stop hard and start again on the same port.

    `stop()` is `pg_ctl stop -m immediate` (no shutdown checkpoint, as a crash), so the next
    `start()` runs crash recovery: `start(wait=False)` returns at once, and connections made
    meanwhile get "the database system is starting up" (SQLSTATE 57P03).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._run_as: list[str] = []
        initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise MissingService(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: run `apt-get install postgresql`."
            )
        self._initdb, self._pg_ctl = initdb, pg_ctl

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("PostgresServer has not been created (use it as a context manager)")
        return Path(self._tmp.name)

    def start(self, *, wait: bool = True) -> None:
        """Starts the server; with `wait`, returns once it accepts connections."""
        directory = self._dir
        subprocess.run(
            [
                *self._run_as,
                self._pg_ctl,
                "-D", str(directory / "data"),
                "-o", f"-p {self.port} -k {directory} -c listen_addresses=127.0.0.1",
                "-w" if wait else "-W",
                "-l", str(directory / "log"),
                "start",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip

    @property
    def running(self) -> bool:
        """Whether the server process runs (it may still be starting up)."""
        status = subprocess.run(
            [*self._run_as, self._pg_ctl, "-D", str(self._dir / "data"), "status"], check=False, capture_output=True
        )
        return status.returncode == 0

    def stop(self) -> None:
        """Stops the server at once, as a crash would (`-m immediate`); its clients' connections drop."""
        subprocess.run(
            [*self._run_as, self._pg_ctl, "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )

    def __enter__(self) -> PostgresServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="parley-pg-")
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chmod(self._tmp.name, 0o777)
            self._run_as = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
        subprocess.run(
            [*self._run_as, self._initdb, "-D", str(self._dir / "data"), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
