"""Refuses HTTP request bodies over a size limit before anything parses them, and bodies that arrive too slowly.

Starlette and uvicorn read a body of any size into memory, for as long as it takes;
GraphQL's own limits (tokens, depth) apply only after the JSON is parsed. Small enough to
own rather than add a dependency for. Paths under `exempt_prefixes` (the local storage's
uploads, which stream to disk and enforce their own signed size limit) have no size limit
here and a deadline of their own.
"""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """The body grew past the limit while being read."""


class BodyTimeout(Exception):
    """The body had not fully arrived by its deadline."""


class BodyLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`, 408 for bodies still arriving after their deadline.

    Requests whose path is one of `exempt_prefixes` or lies below one (`/uploads` covers
    `/uploads` and `/uploads/x`, not `/uploadsx`) have no size limit, and
    `exempt_timeout_seconds` instead of `timeout_seconds` (None: no deadline) to send it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        exempt_prefixes: tuple[str, ...] = (),
        timeout_seconds: float | None = None,
        exempt_timeout_seconds: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = tuple(prefix.rstrip("/") for prefix in exempt_prefixes)
        self.timeout_seconds = timeout_seconds
        self.exempt_timeout_seconds = exempt_timeout_seconds

    def _exempt(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exempt = self._exempt(scope["path"])
        limit = None if exempt else self.max_bytes
        timeout = self.exempt_timeout_seconds if exempt else self.timeout_seconds
        if limit is None and timeout is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, 413, f"The request body is larger than {limit} bytes.")
            return
        # From when the request's headers were read: the whole body must be in by then.
        deadline = anyio.current_time() + timeout if timeout is not None else None
        received = 0
        body_done = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:
                # After the body, receive() waits for the client to leave (streamed responses): no deadline.
                message = await receive()
            else:
                try:
                    with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise BodyTooLarge
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, 413, f"The request body is larger than {limit} bytes.")
        except BodyTimeout:
            if not started:
                await self._refuse(send, 408, f"The request body did not arrive within {timeout:g} seconds.")

    @staticmethod
    async def _refuse(send: Send, status: int, message: str) -> None:
        body = json.dumps({"errors": [{"message": message, "extensions": {"code": "BAD_USER_INPUT"}}]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 408:
            # The rest of the body may still be on its way: this connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
