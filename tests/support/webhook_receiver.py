"""A local webhook receiver: an HTTP server that verifies each delivery with `standardwebhooks`.

It can be told to answer 503 (an outage), to hold requests until released (a slow or hung
receiver), and it records every attempt, so tests wait for what arrived instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got: its headers, raw body, whether it verified, and the status answered."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def event(self) -> dict[str, Any]:
        """The JSON body: {type, timestamp, data}."""
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def id(self) -> str:
        """The `webhook-id` header."""
        return self.headers.get("webhook-id", "")


@dataclass
class WebhookReceiver:
    """`async with WebhookReceiver(secret) as receiver:` serves on 127.0.0.1 at `receiver.url`."""

    secret: str
    # While set, every request is answered with this status (503: the receiver is down).
    failing_status: int | None = None
    # While not None, requests wait until it is set (a slow receiver), then are answered.
    hold: asyncio.Event | None = None
    retry_after: str | None = None
    attempts: list[Delivery] = field(default_factory=list)
    # Requests waiting in `hold` right now.
    held: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hooks"

    def delivered(self) -> list[Delivery]:
        """Attempts that verified and were answered 2xx: the events the receiver accepted."""
        return [d for d in self.attempts if d.verified and 200 <= d.status < 300]

    def accepted_types(self) -> list[str]:
        """The types of the accepted events, in arrival order."""
        return [d.event["type"] for d in self.delivered()]

    async def __aenter__(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self.hold is not None:
            self.hold.set()
        assert self._server is not None
        self._server.close()
        # Closed from here, kept-alive connections end their handlers (cancelling them would be logged).
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.hold is not None and not self.hold.is_set():
                    self.held += 1
                    try:
                        await self.hold.wait()
                    finally:
                        self.held -= 1
                try:
                    Webhook(self.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                status = self.failing_status or (204 if verified else 400)
                self.attempts.append(Delivery(headers, body, verified, status))
                extra = f"Retry-After: {self.retry_after}\r\n" if self.retry_after and status >= 400 else ""
                writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
