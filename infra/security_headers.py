"""The usual security headers on every HTTP response.

The API answers JSON, which no browser should sniff, frame or run: the strictest
Content-Security-Policy fits it. GraphiQL (development) is an HTML page whose scripts
and styles come from unpkg.com and which runs one inline script: its policy allows
exactly those (the inline script by its hash), and fetches and WebSockets to this
origin. HSTS is sent only over HTTPS (directly or as a trusted proxy reports it):
over plain HTTP browsers ignore it, and a development server must stay reachable.
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000"
_CDN = "https://unpkg.com"
# GraphiQL's stylesheet takes its fonts (Roboto, Fira Code) from Google Fonts.
_FONTS_CSS = "https://fonts.googleapis.com"
_FONTS = "https://fonts.gstatic.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def ide_policy(html: str) -> str:
    """The Content-Security-Policy of the GraphiQL page `html`: its CDN, its inline scripts by hash."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {_CDN} {hashes}".strip(),
            # React sets style attributes: hashes cannot cover those.
            f"style-src 'self' 'unsafe-inline' {_CDN} {_FONTS_CSS}",
            f"font-src 'self' data: {_CDN} {_FONTS}",
            "img-src 'self' data:",
            # Queries over HTTP and subscriptions over WebSocket, to this origin only.
            "connect-src 'self' ws: wss:",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        )
    )


class SecurityHeaders:
    """ASGI middleware adding nosniff, no-referrer, DENY framing, a CSP and (over HTTPS) HSTS."""

    def __init__(self, app: ASGIApp, *, ide_html: str | None = None) -> None:
        self.app = app
        self._ide_policy = ide_policy(ide_html) if ide_html else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                policy = self._ide_policy if html and self._ide_policy else API_POLICY
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Content-Security-Policy", policy)
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        await self.app(scope, receive, with_headers)
