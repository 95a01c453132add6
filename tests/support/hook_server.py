"""A local before-send hook: verifies each request's signature with `standardwebhooks` and answers as the test says."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The secret the hook and the servers of the before-send tests share.
HOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
ALLOW: dict[str, Any] = {"action": "allow"}


@dataclass
class HookCall:
    """One request the hook got: its headers, raw body, and the payload if the signature verified (else None)."""

    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None

    @property
    def data(self) -> dict[str, Any]:
        """The message the hook was asked about (`data` of a verified payload)."""
        assert self.payload is not None, "the request's signature did not verify"
        message: dict[str, Any] = self.payload["data"]
        return message


class HookServer:
    """Answers each POST with `decide(data)` (a JSON object, or a (status, raw body) pair); ALLOW by default.

    With `hang` set, a request is held unanswered until `release()` (or the server stops):
    a hook slower than any timeout, without the test sleeping.
    """

    def __init__(self, secret: str = HOOK_SECRET) -> None:
        self.calls: list[HookCall] = []
        self.decide: Callable[[dict[str, Any]], dict[str, Any] | tuple[int, bytes]] = lambda _data: ALLOW
        self.hang = False
        self._released = threading.Event()
        self._verifier = Webhook(secret)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Parley's client uses it
            # Headers and body go out in two writes: without this the body waits for a delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = hook._verifier.verify(body, headers)
                except WebhookVerificationError:
                    payload = None
                hook.calls.append(HookCall(headers, body, payload))
                if hook.hang:
                    hook._released.wait(30)
                    return
                answer = hook.decide(payload["data"]) if payload is not None else (401, b"bad signature")
                status, raw = answer if isinstance(answer, tuple) else (200, json.dumps(answer).encode())
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def reset(self) -> None:
        """Back to answering ALLOW at once, with no calls recorded; held requests go."""
        self.decide = lambda _data: ALLOW
        self.hang = False
        self.calls.clear()
        self._released.set()
        self._released = threading.Event()

    def release(self) -> None:
        """Lets held requests go (they then get no answer)."""
        self._released.set()

    def __enter__(self) -> HookServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
