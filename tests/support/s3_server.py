"""A throwaway S3 server (moto's, as a child process on a free 127.0.0.1 port) with one empty bucket.

moto accepts any credentials and does not check signatures or POST policy conditions
(docs/upstream-notes.md): it proves the plumbing, not S3's enforcement.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.processes import free_port, terminate

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0


class S3Server:
    """moto's S3 server with the bucket `bucket`; give S3Storage `url`, `region` and the dummy keys.

    `public_url` names the same server by another host (`localhost`), so tests can tell which
    endpoint a presigned URL was signed for.
    """

    region = "us-east-1"
    access_key_id = "parley-test-access-key"
    secret_access_key = "parley-test-secret-key"  # moto accepts any key

    def __init__(self, *, bucket: str = "parley-test") -> None:
        self.bucket = bucket
        self._port: int | None = None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The port, fixed by `start()`."""
        if self._port is None:
            raise RuntimeError("S3Server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: the endpoint the server process uses."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_url(self) -> str:
        """`http://localhost:PORT`: the same server under the name clients would use."""
        return f"http://localhost:{self.port}"

    def start(self) -> S3Server:
        """Starts moto's server, waits until it answers and creates the bucket."""
        if self._process is not None:
            raise RuntimeError("S3Server is already running")
        missing = [name for name in ("moto.server", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
        if missing:
            raise RuntimeError(
                f"moto's S3 server cannot run: {', '.join(missing)} not installed in {sys.executable}; "
                "install the dev dependencies (`moto[server]`)"
            )
        self._port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="parley-s3-"))
        log_path = self._dir / "moto.log"
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_answering()
            status = _request(self._port, "PUT", f"/{self.bucket}")
            if status != 200:
                raise RuntimeError(f"creating bucket {self.bucket!r} answered HTTP {status}")
        except RuntimeError as error:
            self.close()
            tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
            raise RuntimeError(f"moto's S3 server on port {self._port}: {error}; its log:\n{tail}") from None
        return self

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"exited with {self._process.returncode}")
            try:
                # moto creates buckets without checking signatures, so plain HTTP needs no S3 client here.
                if _request(self.port, "GET", "/") == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"did not answer within {_START_TIMEOUT} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stops the server: SIGTERM, then SIGKILL after 5 s. Everything it stored is gone."""
        process, self._process = self._process, None
        terminate(process, timeout=_STOP_TIMEOUT)

    def close(self) -> None:
        """Stops the server and removes its log folder."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> S3Server:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)


def _request(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
