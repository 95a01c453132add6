"""The local storage's HTTP endpoints: S3-like POST uploads and GET downloads, as Starlette routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from infra.storage.local_errors import Refused
from infra.storage.local_upload import MultipartUpload

if TYPE_CHECKING:
    from infra.storage.local import LocalStorage

UPLOAD_PATH = "/uploads"
DOWNLOAD_PATH = "/files"
# Downloads are attachments, never pages: even a browser that ignored the disposition runs nothing.
_DOWNLOAD_POLICY = "default-src 'none'; sandbox"


class _RemovableFileResponse(FileResponse):
    """A download whose file may be deleted (retention, expiry) between its stat and its open.

    Starlette sends the status line before it opens the file; this holds it back until the
    first body message, so a file gone by then is answered 404, as a missing key is, instead
    of a 200 whose connection drops.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None

        async def holding_send(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                held = message
                return
            if held is not None:
                await send(held)
                held = None
            await send(message)

        try:
            await super().__call__(scope, receive, holding_send)
        except FileNotFoundError:
            if held is None:  # the body had begun: nothing else can be said
                raise
            await _missing().response()(scope, receive, send)


def _missing() -> Refused:
    return Refused(404, "NoSuchKey", "The specified key does not exist.")


class LocalStorageEndpoints:
    """The upload and download endpoints of one `LocalStorage`."""

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage

    def routes(self) -> list[BaseRoute]:
        """`POST /uploads` (the upload form's target) and `GET`/`HEAD /files/{token}` (download URLs)."""
        return [
            Route(UPLOAD_PATH, self._upload_endpoint, methods=["POST"]),
            Route(f"{DOWNLOAD_PATH}/{{token}}", self._download_endpoint, methods=["GET", "HEAD"]),
        ]

    async def _upload_endpoint(self, request: Request) -> Response:
        try:
            await MultipartUpload(self._storage, request).run()
        except Refused as refused:
            return refused.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the upload is dropped
        # S3's answer to a POST upload without success_action_status.
        return Response(status_code=204)

    async def _download_endpoint(self, request: Request) -> Response:
        try:
            ticket = self._storage._download_ticket(request.path_params["token"])
        except Refused as refused:
            return refused.response()
        path = self._storage._path(ticket.key)
        found = await anyio.to_thread.run_sync(self._storage._regular_file_stat, path)
        if found is None:
            return _missing().response()
        remaining = max(0, ticket.expires - int(self._storage.clock()))
        response = _RemovableFileResponse(
            path,
            stat_result=found,
            filename=ticket.filename,  # RFC 6266 / 5987: filename*=utf-8''... when not plain ASCII
            content_disposition_type="attachment",
            headers={
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": _DOWNLOAD_POLICY,
                "Cache-Control": f"private, max-age={remaining}",
            },
        )
        # Exactly the stored type, as S3 answers; Starlette would append a charset to text/*.
        response.headers["content-type"] = ticket.content_type
        return response
