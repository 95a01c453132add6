"""A throwaway Redis master, one replica and three Sentinels on loopback ports, for the failover tests.

Started from the installed `redis-server`: a master, a replica (`--replicaof`) and three
Sentinels (`redis-server sentinel.conf --sentinel`) monitoring the master as `mymaster`
with quorum 2, `down-after-milliseconds` 1000 and `failover-timeout` 3000, so a killed
master is replaced within a few seconds. Ready once the replica is in sync and every
Sentinel knows the replica and the two other Sentinels (they find each other through
hello messages on the master, every two seconds).

No persistence: what a server holds is what it received, as after a crash. The replica
is writable (`replica-read-only no`) so a test can take a key out of it alone, which is
what the asynchronous replication loses when the master dies before sending a write.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from tests.support.processes import free_port, terminate

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
# Ports are chosen free, then bound by redis-server a moment later: another process may take
# one in between. A server that could not bind is started again on another port, a few times.
_PORT_ATTEMPTS = 5


@dataclass
class _Server:
    name: str
    directory: Path
    sentinel: bool
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)


class ThrowawaySentinel:
    """`with ThrowawaySentinel() as ha:` a master, a replica and three Sentinels; `ha.sentinels` for PARLEY_REDIS_SENTINELS."""

    def __init__(self) -> None:
        self._root: Path | None = None
        self._master: _Server | None = None
        self._replica: _Server | None = None
        self._sentinels: list[_Server] = []

    @property
    def sentinels(self) -> str:
        """`127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, as `PARLEY_REDIS_SENTINELS` takes them."""
        return ",".join(f"127.0.0.1:{server.port}" for server in self._sentinels)

    @property
    def master_port(self) -> int:
        """The port of the server that was started as the master."""
        return self._started(self._master).port

    @property
    def replica_port(self) -> int:
        """The port of the server that was started as the replica (the master after a failover)."""
        return self._started(self._replica).port

    def start(self) -> None:
        """Starts the five servers and waits until replication and the Sentinels are ready."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (not found on PATH): `apt-get install redis-server`")
        self._root = Path(tempfile.mkdtemp(prefix="parley-redis-sentinel-"))
        try:
            # No wait for further replicas before a full sync (5 s by default).
            self._master = self._launched(executable, "master", ["--repl-diskless-sync-delay", "0"])
            self._replica = self._launched(
                executable,
                "replica",
                ["--replicaof", "127.0.0.1", str(self._master.port), "--replica-read-only", "no"],
            )
            self._wait(lambda: self._info(self._replica).get("master_link_status") == "up", "the replica to sync")
            self._sentinels = [self._launched(executable, f"sentinel{n}", None) for n in range(3)]
            self._wait(self._sentinels_ready, "three Sentinels that know the replica and each other")
        except BaseException:
            self.close()
            raise

    def kill_master(self) -> None:
        """SIGKILLs the master, as a crash does: what it had not yet sent to the replica is lost."""
        server = self._started(self._master)
        if server.process is not None:
            server.process.kill()
            server.process.wait()
            server.process = None

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as the first Sentinel that answers names it (None if none answers)."""
        for sentinel in self._sentinels:
            client = sentinel.client()
            try:
                host, port = _command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                return str(host), int(port)
            except (redis.RedisError, OSError, ValueError, TypeError):
                continue
            finally:
                client.close()
        return None

    def replica(self) -> redis.Redis:
        """A client of the replica (close it when done)."""
        return self._started(self._replica).client()

    def promoted(self) -> bool:
        """Whether the replica now says it is the master (Sentinel promoted it)."""
        try:
            return self._info(self._replica).get("role") == "master"
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        """Stops every server and removes their directories."""
        for server in [*self._sentinels, self._replica, self._master]:
            if server is not None:
                process, server.process = server.process, None
                terminate(process, timeout=_STOP_TIMEOUT)
        self._sentinels, self._replica, self._master = [], None, None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> ThrowawaySentinel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _launched(self, executable: str, name: str, arguments: list[str] | None) -> _Server:
        """A server answering PING, on a port of its own; `arguments` None makes a Sentinel."""
        assert self._root is not None
        directory = self._root / name
        directory.mkdir()
        server = _Server(name, directory, sentinel=arguments is None)
        for _ in range(_PORT_ATTEMPTS):
            server.port = free_port()
            server.log.unlink(missing_ok=True)
            if server.sentinel:
                command = [executable, str(self._sentinel_conf(server)), "--sentinel"]
            else:
                command = [executable, *_server_arguments(server), *(arguments or [])]
            server.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + _READY_TIMEOUT
            while server.process.poll() is None and time.monotonic() < deadline:
                if _answers(server):
                    return server
                time.sleep(0.02)
            log = server.log_tail()
            terminate(server.process, timeout=_STOP_TIMEOUT)
            server.process = None
            if "Address already in use" not in log:
                raise RuntimeError(f"{name} (redis-server on port {server.port}) did not answer PING:\n{log}")
        raise RuntimeError(f"{name} found no free port in {_PORT_ATTEMPTS} attempts")

    def _sentinel_conf(self, server: _Server) -> Path:
        # Sentinel rewrites its configuration file as it learns the topology: one file per Sentinel.
        conf = server.directory / "sentinel.conf"
        conf.write_text(
            "\n".join(
                [
                    *(" ".join(argument) for argument in _pairs(_server_arguments(server))),
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        return conf

    def _sentinels_ready(self) -> bool:
        for sentinel in self._sentinels:
            client = sentinel.client()
            try:
                flat = _command(client, "SENTINEL", "MASTER", MASTER_NAME)
            finally:
                client.close()
            state = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else dict(flat)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
        return True

    def _info(self, server: _Server | None) -> dict[str, Any]:
        client = self._started(server).client()
        try:
            return dict(client.info("replication"))
        finally:
            client.close()

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            servers = [s for s in (self._master, self._replica, *self._sentinels) if s is not None]
            for server in servers:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in servers)
                raise RuntimeError(f"timed out waiting for {what}:\n{tails}")
            time.sleep(0.05)

    @staticmethod
    def _started(server: _Server | None) -> _Server:
        if server is None:
            raise RuntimeError("ThrowawaySentinel has not been started")
        return server


def _server_arguments(server: _Server) -> list[str]:
    """What every server of the set runs with: loopback, its port, no persistence, a log of its own."""
    return [
        "--port", str(server.port),
        "--bind", "127.0.0.1",
        "--dir", str(server.directory),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(server.log),
        "--loglevel", "notice" if server.sentinel else "warning",
    ]  # fmt: skip


def _pairs(arguments: list[str]) -> list[tuple[str, str]]:
    """`--port 1 --bind x` as configuration lines: (`port`, `1`), (`bind`, `x`); empty values quoted."""
    return [
        (name.removeprefix("--"), value or '""') for name, value in zip(arguments[::2], arguments[1::2], strict=True)
    ]


def _command(client: redis.Redis, *args: Any) -> Any:
    """One raw command (redis-py leaves `execute_command` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _answers(server: _Server) -> bool:
    client = server.client()
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
