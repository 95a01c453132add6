"""Server processes for tests and benchmarks: free ports, health waits, `parley serve` as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol


class RedisLocation(Protocol):
    """Where a run's Redis lives: a URL with its DB number, and a key/channel prefix of its own."""

    @property
    def url(self) -> str: ...

    @property
    def prefix(self) -> str: ...


def terminate(process: subprocess.Popen[bytes] | None, *, timeout: float) -> None:
    """Stops a child process: SIGTERM, then SIGKILL after `timeout` seconds; waits for it either way."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now (another process may take it before it is bound: see `bound_socket`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_socket(port: int = 0) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (0: a free one), not yet listening, to hand to a server.

    Bound here, the port is ours until the server closes it: a port only chosen free could be
    taken by another process (another pytest-xdist worker) before the server binds it.
    """
    # IPPROTO_TCP spelled out, as getaddrinfo gives it: asyncio sets TCP_NODELAY only on such sockets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # As uvicorn binds. A server restarted on this port binds it again while the connections
        # its previous run left behind linger (TIME_WAIT); Linux allows that only if they have it too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def _answers_healthz(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wait_healthy(port: int, *, timeout: float = 30, process: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until `GET /healthz` on 127.0.0.1:`port` answers 200; fails early when `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        if _answers_healthz(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not become healthy in {timeout} s")


def pin(pid: int, cpus: set[int]) -> None:
    """Pins every thread a process has now to `cpus` (threads it starts later inherit the mask)."""
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, cpus)


def production_env(postgres: str, redis: RedisLocation, secret_key: str) -> dict[str, str]:
    """The PARLEY_* variables of a `parley` process in the production mode (PostgreSQL + Redis)."""
    return {
        "PARLEY_ENV": "production",
        "PARLEY_DATABASE_URL": postgres,
        "PARLEY_REDIS_URL": redis.url,
        "PARLEY_REDIS_PREFIX": redis.prefix,
        "PARLEY_SECRET_KEY": secret_key,
        "PARLEY_LOG_LEVEL": "WARNING",
    }


class ProcessServer:
    """A server as a separate OS process on a free port: `parley serve` unless told another command.

    `command` is the program and its arguments; `--fd N` is appended, N a socket bound here and
    inherited by the process, so no other process can take the port before it listens. `cpus`
    pins the process (all its threads) to those CPU numbers.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        log_path: Path,
        command: Sequence[str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self._socket: socket.socket | None = bound_socket()
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        self._env = {**os.environ, **env}
        self._log_path = log_path
        self._command = list(command or [str(Path(sys.executable).parent / "parley"), "serve"])
        self._cpus = cpus
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise RuntimeError("ProcessServer has not been started")
        return self._process.pid

    def start(self) -> ProcessServer:
        """Starts the process (again: on the same port) and waits until it answers `/healthz`."""
        listener = self._socket or bound_socket(self.port)
        self._socket = None
        fd = listener.fileno()
        try:
            with self._log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [*self._command, "--fd", str(fd)], env=self._env, stdout=log, stderr=log, pass_fds=(fd,)
                )
        finally:
            # The process has its own copy: ours would keep the port open after the process exits.
            listener.close()
        if self._cpus:
            pin(self._process.pid, self._cpus)
        try:
            wait_healthy(self.port, process=self._process)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}; its log:\n{self._log_path.read_text()[-4000:]}") from None
        if self._cpus:
            # Threads started between the fork and the first pin kept the parent's mask: pin them too.
            pin(self._process.pid, self._cpus)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (and the port is let go if the process never started)."""
        terminate(self._process, timeout=15)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def send_signal(self, sig: int) -> None:
        """Sends `sig` (e.g. SIGTERM) to the process and returns at once."""
        if self._process is None:
            raise RuntimeError("ProcessServer has not been started")
        self._process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        """Waits for the process to end; its exit status (negative: killed by that signal).

        Raises `subprocess.TimeoutExpired` if it is still running after `timeout` seconds.
        """
        if self._process is None:
            raise RuntimeError("ProcessServer has not been started")
        return self._process.wait(timeout=timeout)

    def __enter__(self) -> ProcessServer:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> ProcessServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
