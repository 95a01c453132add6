"""Running `parley serve`: uvicorn with a drain period on SIGTERM and exit status 0, as one process or N workers.

Shutdown, in order (README "Restarts and processes"): `/readyz` answers 503 at once
and the process keeps serving for `shutdown_drain_seconds` (load balancers stop
sending it new clients); then it stops listening, closes its WebSockets with 1012
(service restart: clients reconnect elsewhere), gives HTTP requests in flight
`shutdown_grace_seconds`, cancels what is still running, runs the app's lifespan
shutdown (which takes this node's users out of the presence registry) and exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from socket import socket
from types import FrameType
from typing import Any
from unittest import mock

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from infra.app import Draining, create_app
from infra.log_format import uvicorn_log_config
from infra.metrics_server import prepare_multiprocess
from infra.settings import Settings

log = logging.getLogger("parley.server")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkersNeedRedis(SystemExit):
    """`--workers` with the embedded mode: its bus, presence and rate limits live in one process."""


class ParleyServer(uvicorn.Server):
    """uvicorn's server with a drain period before its shutdown, exiting normally after a signal.

    The first SIGTERM or SIGINT starts the drain: `/readyz` says 503, everything else works
    as before. When the drain ends (or at a second signal) uvicorn's own shutdown runs; a
    SIGINT after that forces it, as in uvicorn.
    """

    def __init__(self, config: uvicorn.Config, *, draining: Draining, drain_seconds: float) -> None:
        super().__init__(config)
        self.draining = draining
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """A signal handler: only sets flags, which `on_tick` (every 0.1 s, on the loop) acts on."""
        self.draining.active = True
        if self._drain_until is None and self.drain_seconds > 0:
            self._drain_until = time.monotonic() + self.drain_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick, which also ends the drain when its time is up."""
        if self.draining.active and not self._drain_logged:
            self._drain_logged = True
            log.info(
                "shutting down: /readyz answers 503; serving %.1f s more, then closing sockets (1012) "
                "and giving requests in flight %s s",
                self.drain_seconds if self._drain_until is not None else 0,
                self.config.timeout_graceful_shutdown,
            )
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal handlers, without raising the signal again once the shutdown is done.

        uvicorn re-raises it so the process ends "killed by SIGTERM" (docs/upstream-notes.md); a process
        that drained and shut down cleanly exits 0 instead, as process managers expect.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only (tests run servers in threads)
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _draining_of(app: Starlette) -> Draining:
    draining = app.state.draining
    if not isinstance(draining, Draining):
        raise TypeError("the app has no Draining flag (infra/app.py create_app sets one)")
    return draining


def _config(app: Any, settings: Settings, *, host: str, port: int, workers: int) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        log_config=uvicorn_log_config(settings.log_format),
        # X-Forwarded-For/-Proto are read by the app, from PARLEY_TRUSTED_PROXIES only
        # (infra/forwarded.py); uvicorn's own handling would trust 127.0.0.1 by default.
        proxy_headers=False,
        ws="websockets-sansio",
        ws_max_size=settings.max_request_bytes,
        # Frames are small JSON; deflate doubles the CPU per frame and keeps ≈35 KiB of
        # zlib state per socket whose client offers it.
        ws_per_message_deflate=False,
    )
    # uvicorn annotates it as int but only passes it to asyncio.wait_for, which takes any float.
    config.timeout_graceful_shutdown = settings.shutdown_grace_seconds  # type: ignore[assignment]
    return config


def _app_built_in_each_worker() -> None:
    """Stands in for the app in the supervisor's config: each worker builds its own (`_WorkerServer.run`)."""
    raise RuntimeError("each worker builds its own app")


class _WorkerServer(ParleyServer):
    """One worker of `--workers`: reads the settings and builds its app in its own process."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config, draining=Draining(), drain_seconds=0)

    def run(self, sockets: list[socket] | None = None) -> None:
        """Builds this worker's app (a node of its own in the presence registry), then serves."""
        from infra.cli import configure_logging, tune_garbage_collector  # noqa: PLC0415 - cli imports this module

        settings = Settings()  # the supervisor has checked the same environment already
        configure_logging(settings.log_level, settings.log_format)
        app = create_app(settings)
        self.config.app = app
        self.draining = _draining_of(app)
        self.drain_seconds = settings.shutdown_drain_seconds
        tune_garbage_collector()
        super().run(sockets)


class _WorkerProcess(multiprocess.Process):
    """uvicorn's worker process (health pings from the supervisor), running a `_WorkerServer`."""

    _parley_server: _WorkerServer | None = None

    @property
    def server(self) -> uvicorn.Server:
        """This worker's server, made on first use in the worker process (as uvicorn's own property does)."""
        if self._parley_server is None:
            self._parley_server = _WorkerServer(self.config)
        return self._parley_server


def check_workers(settings: Settings, workers: int) -> None:
    """Refuses `--workers` above 1 unless Redis and PostgreSQL carry what the processes share."""
    if workers > 1 and (not settings.redis_url or settings.is_sqlite):
        raise WorkersNeedRedis(
            f"parley: refusing to start {workers} workers in the embedded mode: its in-process bus, presence "
            "and rate limits (and its SQLite file) cannot span processes, so messages sent through one "
            "worker would not reach sockets on another. Set PARLEY_REDIS_URL and a postgresql "
            "PARLEY_DATABASE_URL, or serve with one process."
        )


def inherited_socket(fd: int) -> socket:
    """The bound socket a parent process handed over as file descriptor `fd` (as with systemd's socket activation).

    Its family, type and protocol are read from the descriptor: uvicorn's own `fd` option would
    take it for a Unix socket, and asyncio then leaves Nagle's algorithm on for every connection.
    """
    return socket(fileno=fd)


def run(settings: Settings, app: Starlette, *, host: str, port: int, sock: socket | None = None) -> None:
    """Serves `app` in this process until SIGTERM/SIGINT, then drains and returns (exit status 0).

    `sock`, when given, is the bound socket to serve on instead of binding `host`:`port`.
    """
    server = ParleyServer(
        _config(app, settings, host=host, port=port, workers=1),
        draining=_draining_of(app),
        drain_seconds=settings.shutdown_drain_seconds,
    )
    # Exits with status 3 itself when the port is taken or the lifespan fails.
    server.run(None if sock is None else [sock])


def run_workers(settings: Settings, *, host: str, port: int, workers: int, sock: socket | None = None) -> None:
    """Serves with `workers` processes sharing one listening socket, under uvicorn's supervisor.

    The supervisor binds the port (or serves on `sock`), starts the workers, replaces one that
    dies and (SIGHUP) restarts them one by one; on SIGTERM or SIGINT it passes SIGTERM to every
    worker, each drains as a single process does, and it returns once all have exited.
    """
    check_workers(settings, workers)
    config = _config(_app_built_in_each_worker, settings, host=host, port=port, workers=workers)
    if sock is None:
        sock = config.bind_socket()
    # Before any worker starts: they inherit its multiprocess directory (infra/metrics_server.py).
    metrics = prepare_multiprocess(settings, workers)
    supervisor = multiprocess.Multiprocess(config, sockets=[sock])
    try:
        # uvicorn's supervisor makes its workers from its module's `Process` and has no setting
        # for the server class they run: swapped here, in the supervisor only (the workers
        # unpickle `_WorkerProcess` by name).
        with mock.patch.object(multiprocess, "Process", _WorkerProcess):
            supervisor.run()
    finally:
        sock.close()
        if metrics is not None:
            metrics.close()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)
