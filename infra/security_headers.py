"""The usual security headers on every HTTP response.

The API answers JSON, which no browser should sniff, frame or run: the strictest
Content-Security-Policy fits it. The HTML pages (GraphiQL and the example web chat) load
their scripts and styles from this origin only (built into infra/static, no CDN), run no
inline script, and talk to this origin only (plus where files are stored, when that is
elsewhere). HSTS is sent only over HTTPS (directly or as a trusted proxy reports it):
over plain HTTP browsers ignore it, and a development server must stay reachable.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def ide_policy(html: str, file_origins: Sequence[str] = ()) -> str:
    """The Content-Security-Policy of our HTML pages: this origin only, `html`'s inline scripts by hash.

    `file_origins` are where uploads are posted and downloads and thumbnails come from
    when that is not this origin (S3's public endpoint, a `public_url` on another host).
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    files = " ".join(file_origins)
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {hashes}".strip(),
            # React and CodeMirror add <style> elements at run time: hashes cannot cover those.
            "style-src 'self' 'unsafe-inline'",
            # GraphiQL's fonts are inlined in its stylesheet.
            "font-src 'self' data:",
            f"img-src 'self' data: blob: {files}".strip(),
            # Queries over HTTP and subscriptions over WebSocket, to this origin only.
            f"connect-src 'self' {files}".strip(),
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        )
    )


class SecurityHeaders:
    """ASGI middleware adding nosniff, no-referrer, DENY framing, a CSP and (over HTTPS) HSTS."""

    def __init__(
        self, app: ASGIApp, *, ide_html: str | None = None, web_chat: bool = False, file_origins: Sequence[str] = ()
    ) -> None:
        self.app = app
        # Every HTML page we serve (GraphiQL, the web chat) gets the page policy; with neither, the API's.
        self._ide_policy = ide_policy(ide_html or "", file_origins) if ide_html or web_chat else None

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
