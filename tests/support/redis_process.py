"""A throwaway `redis-server` on a free 127.0.0.1 port, for tests and benchmarks that need a real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.processes import free_port, terminate

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class RedisServer:
    """A `redis-server` without persistence; `restart()` keeps the port so clients reconnect."""

    def __init__(self) -> None:
        self._port: int | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The port, fixed at the first `start()`."""
        if self._port is None:
            raise RuntimeError("RedisServer has not been started")
        return self._port

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT`, without a database number (database 0 unless `/N` is appended)."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server (on the same port as before, if it ran already) and waits for PONG."""
        if self._process is not None:
            raise RuntimeError("RedisServer is already running")
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed (not found on PATH); "
                "install Redis (e.g. `apt-get install redis-server`) to run the bus tests"
            )
        if self._port is None:
            self._port = free_port()
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        log = self._dir / "redis.log"
        self._process = subprocess.Popen(
            [
                executable,
                "--port", str(self._port),
                "--bind", "127.0.0.1",
                "--dir", str(self._dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(log),
                "--loglevel", "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers_ping(self._port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not answer PING on port {self._port}:\n{tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL); its clients see their connections close."""
        process, self._process = self._process, None
        terminate(process, timeout=_STOP_TIMEOUT)

    def restart(self) -> None:
        """Stops and starts again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stops the server and removes its temporary directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
