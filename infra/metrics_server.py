"""The metrics exposition: prometheus-client's HTTP server on the metrics port, for one process or several.

The exposition is prometheus-client's own threaded HTTP server (`start_http_server`):
rendering the text (and, with several processes, merging their files) runs on its
thread, not on the event loop, and it answers content negotiation (OpenMetrics) and
gzip. A second uvicorn server inside the app's lifespan would install its own signal
handlers over the graceful shutdown's (infra/server.py), and a home-made asyncio
server would be HTTP parsing of our own.

Several processes (`parley serve --workers N`) use prometheus-client's multiprocess
mode: `prepare_multiprocess` (called by the supervisor, infra/server.py, before it starts the
workers) gives them a fresh directory in `PROMETHEUS_MULTIPROC_DIR`, which they
inherit, and serves the merged view of every worker's files from the supervisor, so
one scrape of the one metrics port sees the whole machine. Gauges of processes that
have died are dropped at each scrape; their counters stay in the sums.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from infra.metrics_sampler import SAMPLE_SECONDS, sample_forever

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from infra.settings import Settings
    from resolvers.services import Services

log = logging.getLogger("parley.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def in_multiprocess_mode() -> bool:
    """Whether prometheus-client was imported with PROMETHEUS_MULTIPROC_DIR set (`parley serve --workers N`)."""
    return values.ValueClass is not values.MutexValue


class _DeadProcessSweeper(Collector):
    """Before each multiprocess scrape, drops the live gauges of worker processes that have exited.

    Registered ahead of the MultiProcessCollector. Without it the sockets of a crashed
    worker would stay counted until the whole service restarts.
    """

    _PID = re.compile(r"gauge_live\w*?_(\d+)\.db$")

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        pids = {
            int(match.group(1))
            for path in glob.glob(os.path.join(self._directory, "gauge_live*.db"))
            if (match := self._PID.search(path))
        }
        for pid in pids:
            if not _alive(pid):
                mark_process_dead(pid, self._directory)  # type: ignore[no-untyped-call]  # unannotated
        return ()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but another user's (a reused pid)
        return True
    return True


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry merging the metric files every process writes to `directory`."""
    registry = CollectorRegistry()
    registry.register(_DeadProcessSweeper(directory))
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # unannotated
    return registry


@dataclass
class MetricsServer:
    """The exposition's HTTP server (prometheus-client's, on a daemon thread)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stops serving and closes the socket (blocks up to half a second: call off the event loop)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serves `registry` as Prometheus text at http://host:port/metrics (any path answers); raises OSError if taken."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


def prepare_multiprocess(settings: Settings, workers: int) -> MetricsServer | None:
    """For `parley serve --workers N`: the supervisor's one call, before it starts any worker.

    With metrics on and more than one worker, makes a fresh directory for the workers'
    metric files, puts it in PROMETHEUS_MULTIPROC_DIR (the workers inherit the
    environment and import prometheus-client after it is set), removes it at exit, and
    serves the merged metrics of every worker on the metrics port from this process.
    The workers then see the port taken and leave it to the supervisor. Otherwise
    (one process, or metrics off) it does nothing: the process serves its own.
    """
    if workers <= 1 or settings.metrics_port is None:
        return None
    directory = tempfile.mkdtemp(prefix="parley-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = directory
    # Metrics made in this process from now on (none are, normally) write files too, and a
    # worker forked rather than spawned inherits the right value class.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]  # unannotated
    server = serve_metrics(settings.metrics_host, settings.metrics_port, multiprocess_registry(directory))
    log.info("metrics of %d workers at http://%s:%d/metrics", workers, settings.metrics_host, settings.metrics_port)
    return server


@contextlib.asynccontextmanager
async def metrics_exposed(settings: Settings, services: Services) -> AsyncIterator[None]:
    """While the app runs: serves /metrics on the metrics port (if set) and samples pools and queues.

    In multiprocess mode the port is usually the supervisor's already (`prepare_multiprocess`):
    a worker that cannot bind it only samples.
    """
    port = settings.metrics_port
    if port is None:
        yield
        return
    server: MetricsServer | None = None
    multiprocess = in_multiprocess_mode()
    # prometheus-client's own variable, which the library itself reads (not a Parley setting).
    registry = multiprocess_registry(os.environ[MULTIPROC_ENV]) if multiprocess else REGISTRY
    try:
        # Off the loop: binding may resolve a host name.
        server = await asyncio.to_thread(serve_metrics, settings.metrics_host, port, registry)
        log.info("metrics at http://%s:%d/metrics", settings.metrics_host, server.port)
    except OSError as error:
        if not multiprocess:
            raise RuntimeError(
                f"cannot serve metrics on {settings.metrics_host}:{port} (PARLEY_METRICS_PORT): {error.strerror}"
            ) from error
        log.debug("metrics port %d is served by another process of this machine", port)
    sampler = asyncio.create_task(sample_forever(services, SAMPLE_SECONDS), name="parley.metrics.sampler")
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        if server is not None:
            await asyncio.to_thread(server.close)
