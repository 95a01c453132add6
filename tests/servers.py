"""Real servers for tests: uvicorn in a thread (in-process, injectable) or `parley serve` in a process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from infra.app import Overrides, create_app
from infra.settings import Settings


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, *, timeout: float = 30, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not become healthy in {timeout} s")


class ThreadServer:
    """A real uvicorn server on a free port, running `create_app(settings)` in a thread of its own."""

    def __init__(self, settings: Settings, overrides: Overrides | None = None) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        config = uvicorn.Config(
            create_app(settings, overrides or Overrides(fast_password_hashing=True)),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            ws="websockets-sansio",
            ws_ping_interval=5,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> ThreadServer:
        self._thread.start()
        _wait_healthy(self.url)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class ProcessServer:
    """`parley serve` as a separate OS process, configured through PARLEY_* variables."""

    def __init__(self, env: dict[str, str], *, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        self._env = {**os.environ, **env}
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessServer:
        parley = Path(sys.executable).parent / "parley"
        log = self._log_path.open("ab")
        self._process = subprocess.Popen(
            [str(parley), "serve", "--port", str(self.port)], env=self._env, stdout=log, stderr=log
        )
        log.close()
        try:
            _wait_healthy(self.url, process=self._process)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}; its log:\n{self._log_path.read_text()[-4000:]}") from None
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    async def __aenter__(self) -> ProcessServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
