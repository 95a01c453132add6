"""A throwaway PostgreSQL primary with a synchronous streaming standby, to fail over from one to the other.

The primary requires the standby's acknowledgement of every commit (`synchronous_standby_names`
on its command line only: the standby, once promoted, is alone and must not wait for a standby of
its own). The standby is a `pg_basebackup -R` copy that streams from the primary as `standby1`.
Like `services.PostgresServer`, the servers run as `postgres` when the tests run as root (initdb
refuses root), listen on 127.0.0.1 only, and are kept small: the machine is shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import asyncpg

from tests.support.processes import free_port
from tests.support.services import MissingService, _pg_binary
from tests.support.waiting import until

STANDBY_NAME = "standby1"
# Small: several engineers' tests share two cores and their memory.
_SMALL = "-c shared_buffers=16MB -c max_connections=40 -c max_wal_senders=4 -c wal_level=replica"


class PgCluster:
    """A primary and a synchronous standby: `stop_primary()` then `promote_standby()` fail it over;
    `fence_primary()` makes the running primary refuse writes."""

    def __init__(self) -> None:
        binaries = {name: _pg_binary(name) for name in ("initdb", "pg_ctl", "pg_basebackup")}
        missing = sorted(name for name, path in binaries.items() if path is None)
        if missing:
            raise MissingService(
                f"PostgreSQL's server binaries ({', '.join(missing)}) are not installed: run `apt-get install postgresql`."
            )
        self._bin = {name: str(path) for name, path in binaries.items()}
        self.primary_port = free_port()
        self.standby_port = free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._run_as: list[str] = []

    @property
    def _dir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("PgCluster has not been created (use it as a context manager)")
        return Path(self._tmp.name)

    @property
    def server_url(self) -> str:
        """The primary as one server (no database), for creating databases before the failover."""
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}"

    def url(self, database: str) -> str:
        """Parley's URL for `database` naming both servers, SQLAlchemy's multi-host spelling."""
        return (
            f"postgresql+asyncpg://postgres@/{database}"
            f"?host=127.0.0.1:{self.primary_port}&host=127.0.0.1:{self.standby_port}"
        )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self._run_as, *args], check=check, capture_output=True)

    def _pg_ctl(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self._run(self._bin["pg_ctl"], "-D", str(self._dir / node), *args, check=check)

    def _start(self, node: str, port: int, extra: str = "") -> None:
        options = f"-p {port} -k {self._dir} -c listen_addresses=127.0.0.1 {_SMALL} {extra}"
        self._pg_ctl(node, "-o", options, "-w", "-l", str(self._dir / f"{node}.log"), "start")

    def stop_primary(self) -> None:
        """`pg_ctl stop -m immediate`: the primary dies as in a crash; its clients' connections drop."""
        self._pg_ctl("primary", "-m", "immediate", "-w", "stop", check=False)

    def promote_standby(self) -> None:
        """`pg_ctl promote`: the standby ends recovery and takes writes; returns once it does."""
        self._pg_ctl("standby", "-w", "promote")

    async def replication_state(self) -> str | None:
        """How the primary replicates to the standby (`sync` once it streams synchronously), from pg_stat_replication."""
        connection = await asyncpg.connect(f"{self.server_url}/postgres")  # type: ignore[no-untyped-call]
        try:
            state = await connection.fetchval(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", STANDBY_NAME
            )
        finally:
            await connection.close()
        return None if state is None else str(state)

    async def fence_primary(self) -> None:
        """Makes the running primary refuse writes (`default_transaction_read_only`), as a failover manager
        fences an old primary it cannot stop; returns once new sessions see it."""
        connection = await asyncpg.connect(f"{self.server_url}/postgres")  # type: ignore[no-untyped-call]
        try:
            await connection.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()

        async def reloaded() -> bool:
            probe = await asyncpg.connect(f"{self.server_url}/postgres")  # type: ignore[no-untyped-call]
            try:
                return bool(await probe.fetchval("SELECT current_setting('default_transaction_read_only') = 'on'"))
            finally:
                await probe.close()

        await until(reloaded, "the primary to refuse writes", timeout=10)

    def __enter__(self) -> PgCluster:
        self._tmp = tempfile.TemporaryDirectory(prefix="parley-pgha-")
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chmod(self._tmp.name, 0o777)
            self._run_as = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
        try:
            self._run(self._bin["initdb"], "-D", str(self._dir / "primary"), "-U", "postgres", "--auth=trust")
            self._start(
                "primary", self.primary_port, f"-c synchronous_standby_names={STANDBY_NAME} -c synchronous_commit=on"
            )
            conninfo = f"host=127.0.0.1 port={self.primary_port} user=postgres application_name={STANDBY_NAME}"
            self._run(
                self._bin["pg_basebackup"], "-D", str(self._dir / "standby"), "-d", conninfo,
                "-R", "-X", "stream", "-c", "fast",
            )  # fmt: skip
            self._start("standby", self.standby_port)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        try:
            for node in ("standby", "primary"):
                if (self._dir / node / "postmaster.pid").exists():
                    self._pg_ctl(node, "-m", "immediate", "-w", "stop", check=False)
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
