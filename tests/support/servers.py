"""Real servers for tests: uvicorn in a thread (in-process, injectable).

`parley serve` as a separate process is `tests.support.processes.ProcessServer`.
"""

from __future__ import annotations

import threading
from functools import partial

import uvicorn

from infra.app import Overrides, create_app
from infra.settings import Settings
from tests.support.processes import bound_socket, wait_healthy


class ThreadServer:
    """A real uvicorn server on a free port, running `create_app(settings)` in a thread of its own."""

    def __init__(self, settings: Settings, overrides: Overrides | None = None) -> None:
        self.settings = settings
        app = create_app(settings, overrides or Overrides(fast_password_hashing=True))
        self._socket = bound_socket()  # handed to uvicorn: no other process can take the port meanwhile
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/graphql"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            ws="websockets-sansio",
            ws_per_message_deflate=False,  # as `parley serve` runs
            ws_max_size=settings.max_request_bytes,
            proxy_headers=False,  # as `parley serve` runs: the app reads X-Forwarded-For (infra/forwarded.py)
            ws_ping_interval=5,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        run = partial(self._server.run, sockets=[self._socket])
        self._thread = threading.Thread(target=run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> ThreadServer:
        self._thread.start()
        wait_healthy(self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
