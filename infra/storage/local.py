"""File storage in a local folder, served by the app itself (used when no S3 bucket is configured).

A client cannot tell it from S3: it uploads with a multipart POST of the form's fields, then
the file as `file` (S3's presigned POST), and downloads with a plain GET of a URL (S3's
presigned GET). Both carry an HMAC-signed, expiring token (itsdangerous) instead of S3's
policy and signature; uploads and downloads sign with different salts, so neither token
passes for the other.

Layout under `root`: the object at key `17/abc` is the file `17/abc`, its content type is in
the sidecar `17/abc.meta.json`, and uploads stream into `.tmp/` before an atomic
`os.replace` moves them into place, so a refused or broken upload never leaves a partial
object behind.

An upload token stores once: a second POST with it is refused (403) even while it is valid,
so bytes the server has checked cannot be replaced by posting the same form again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import stat as stat_module
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import anyio
import anyio.to_thread
from itsdangerous import BadSignature, URLSafeTimedSerializer
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from resolvers.ports import StoredObject, UploadForm

if TYPE_CHECKING:
    from anyio import AsyncFile
    from python_multipart.multipart import MultipartCallbacks

    from resolvers.ports import FileStorage

UPLOAD_PATH = "/uploads"
DOWNLOAD_PATH = "/files"
TOKEN_FIELD = "token"  # noqa: S105 -- the form field's name, not a secret
CONTENT_TYPE_FIELD = "Content-Type"
FILE_FIELD = "file"

_UPLOAD_SALT = "parley.storage.local.upload"
_DOWNLOAD_SALT = "parley.storage.local.download"
_TEMP_DIR = ".tmp"
_META_SUFFIX = ".meta.json"
# Everything of an upload but the file's bytes (boundaries, part headers, the token and the
# Content-Type field) fits in this with room to spare; the whole body may be at most the
# ticket's max size plus this.
FORM_OVERHEAD = 16 * 1024
_MAX_FIELD_BYTES = 4 * 1024
_MAX_FIELDS = 10
# S3's limit on key length; filesystems allow 255 bytes a name, less the sidecar's suffix.
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 255 - len(_META_SUFFIX)
_CONTENT_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*;[\x20-\x7e]*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
# Downloads are attachments, never pages: even a browser that ignored the disposition runs nothing.
_DOWNLOAD_POLICY = "default-src 'none'; sandbox"


def _check(storage: LocalStorage) -> FileStorage:
    """Lets mypy prove that LocalStorage implements the FileStorage port."""
    return storage


def _valid_key(key: str) -> str:
    """`key` if it is a relative path of plain names inside the root; ValueError otherwise."""
    if not isinstance(key, str) or not key or len(key.encode()) > _MAX_KEY_BYTES or _CONTROL.search(key):
        raise ValueError(f"invalid storage key {key!r}")
    segments = key.split("/")
    for segment in segments:
        # A leading dot also keeps keys off `.tmp` and off `.`/`..`.
        if not segment or segment.startswith(".") or len(segment.encode()) > _MAX_SEGMENT_BYTES:
            raise ValueError(f"invalid storage key {key!r}")
    if segments[-1].endswith(_META_SUFFIX):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def _valid_content_type(content_type: str) -> str:
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError(f"invalid content type {content_type!r}")
    return content_type


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _META_SUFFIX)


@dataclass(frozen=True, slots=True)
class _UploadTicket:
    key: str
    content_type: str
    max_size: int
    expires: int


@dataclass(frozen=True, slots=True)
class _DownloadTicket:
    key: str
    filename: str
    content_type: str
    expires: int


class _Refused(Exception):
    """An upload or download the storage refuses, answered with an S3-shaped error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> Response:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(self.code)}</Code><Message>{escape(self.message)}</Message></Error>"
        )
        return Response(body, status_code=self.status, media_type="application/xml")


def _malformed() -> _Refused:
    return _Refused(
        400, "MalformedPOSTRequest", "The body of your POST request is not well-formed multipart/form-data."
    )


def _denied(message: str = "Access Denied") -> _Refused:
    return _Refused(403, "AccessDenied", message)


def _used() -> _Refused:
    return _denied("Invalid according to Policy: this upload ticket has been used.")


class LocalStorage:
    """The `FileStorage` port over a folder; `routes()` are the upload and download endpoints to mount."""

    def __init__(self, root: Path | str, *, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("LocalStorage needs a secret key to sign its upload and download tokens")
        self.root = Path(root)
        self._temp = self.root / _TEMP_DIR
        self._uploads = URLSafeTimedSerializer(secret_key, salt=_UPLOAD_SALT)
        self._downloads = URLSafeTimedSerializer(secret_key, salt=_DOWNLOAD_SALT)

    # --- the FileStorage port ---

    async def upload_form(
        self, *, key: str, content_type: str, max_size: int, expires_in: int, base_url: str
    ) -> UploadForm:
        """A POST form that stores 1 to `max_size` bytes of exactly `content_type` at `key`, for `expires_in` s."""
        _valid_key(key)
        _valid_content_type(content_type)
        if max_size < 1 or expires_in < 1:
            raise ValueError("max_size and expires_in must be positive")
        expires = int(time.time()) + expires_in
        token = self._uploads.dumps({"k": key, "t": content_type, "m": max_size, "e": expires})
        return UploadForm(
            url=f"{base_url.rstrip('/')}{UPLOAD_PATH}",
            fields=[(CONTENT_TYPE_FIELD, content_type), (TOKEN_FIELD, token)],
            expires_at=datetime.fromtimestamp(expires, tz=UTC),
        )

    async def download_url(self, *, key: str, filename: str, content_type: str, expires_in: int, base_url: str) -> str:
        """A GET URL of the object, valid `expires_in` seconds, served as an attachment named `filename`."""
        _valid_key(key)
        _valid_content_type(content_type)
        if expires_in < 1:
            raise ValueError("expires_in must be positive")
        expires = int(time.time()) + expires_in
        token = self._downloads.dumps({"k": key, "f": filename, "t": content_type, "e": expires})
        return f"{base_url.rstrip('/')}{DOWNLOAD_PATH}/{token}"

    async def stat(self, key: str) -> StoredObject | None:
        """The object at `key`, or None when nothing is stored there."""
        path = self._path(key)
        return await anyio.to_thread.run_sync(self._stat_sync, path)

    async def read(self, key: str, *, limit: int) -> bytes:
        """At most the first `limit` bytes of the object; raises FileNotFoundError when it is missing."""
        path = self._path(key)
        if limit < 0:
            raise ValueError("limit must not be negative")
        return await anyio.to_thread.run_sync(self._read_sync, path, limit)

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        """Stores `data` at `key` atomically (thumbnails and checked copies, made by the server)."""
        path = self._path(key)
        _valid_content_type(content_type)
        await anyio.to_thread.run_sync(self._write_sync, path, data, content_type)

    async def copy(self, source: str, target: str) -> None:
        """Copies the object at `source` with its content type to `target`; FileNotFoundError when missing."""
        source_path, target_path = self._path(source), self._path(target)
        await anyio.to_thread.run_sync(self._copy_sync, source_path, target_path)

    async def delete(self, keys: Sequence[str]) -> None:
        """Deletes these objects and their sidecars; a missing one is no error."""
        paths = [self._path(key) for key in keys]
        await anyio.to_thread.run_sync(self._delete_sync, paths)

    # --- HTTP endpoints ---

    def routes(self) -> list[BaseRoute]:
        """`POST /uploads` (the upload form's target) and `GET`/`HEAD /files/{token}` (download URLs)."""
        return [
            Route(UPLOAD_PATH, self._upload_endpoint, methods=["POST"]),
            Route(f"{DOWNLOAD_PATH}/{{token}}", self._download_endpoint, methods=["GET", "HEAD"]),
        ]

    async def _upload_endpoint(self, request: Request) -> Response:
        try:
            await _Upload(self, request).run()
        except _Refused as refused:
            return refused.response()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it; the upload is dropped
        # S3's answer to a POST upload without success_action_status.
        return Response(status_code=204)

    async def _download_endpoint(self, request: Request) -> Response:
        try:
            ticket = self._download_ticket(request.path_params["token"])
        except _Refused as refused:
            return refused.response()
        path = self._path(ticket.key)
        found = await anyio.to_thread.run_sync(self._regular_file_stat, path)
        if found is None:
            return _Refused(404, "NoSuchKey", "The specified key does not exist.").response()
        remaining = max(0, ticket.expires - int(time.time()))
        response = FileResponse(
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

    # --- tokens ---

    def _upload_ticket(self, token: str) -> _UploadTicket:
        """The upload ticket a token carries; `_Refused` when tampered with or expired."""
        payload = self._loads(self._uploads, token)
        try:
            # Signed by us with this salt, so its shape is ours; only a future format change could miss.
            ticket = _UploadTicket(
                key=payload["k"], content_type=payload["t"], max_size=payload["m"], expires=payload["e"]
            )
        except KeyError as error:
            raise _denied() from error
        if time.time() > ticket.expires:
            raise _denied("Invalid according to Policy: Policy expired.")
        return ticket

    def _download_ticket(self, token: str) -> _DownloadTicket:
        payload = self._loads(self._downloads, token)
        try:
            ticket = _DownloadTicket(
                key=payload["k"], filename=payload["f"], content_type=payload["t"], expires=payload["e"]
            )
        except KeyError as error:
            raise _denied() from error
        if time.time() > ticket.expires:
            raise _denied("Request has expired")
        return ticket

    @staticmethod
    def _loads(serializer: URLSafeTimedSerializer, token: str) -> dict[str, Any]:
        try:
            payload = serializer.loads(token)
        except BadSignature as error:
            raise _denied() from error
        if not isinstance(payload, dict):
            raise _denied()
        return payload

    # --- files (the *_sync methods run in a worker thread) ---

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*_valid_key(key).split("/"))
        # The key check already rules out escapes; this is the belt to its braces.
        if os.path.commonpath([os.path.normpath(self.root), os.path.normpath(path)]) != os.path.normpath(self.root):
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def _new_temp_sync(self) -> tuple[int, Path]:
        """A new file in the root's temp folder (same filesystem, so `os.replace` is atomic)."""
        self._temp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._temp, prefix="upload-")
        return fd, Path(name)

    def _commit_sync(self, temp: Path, path: Path, content_type: str, *, exclusive: bool = False) -> None:
        """Moves a finished temp file to `path` with its sidecar; removes the temp file on failure.

        `exclusive`: FileExistsError when something is at `path` already (one upload per ticket).
        """
        try:
            fd, meta_temp = self._new_temp_sync()
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as meta:
                    json.dump({"content_type": content_type}, meta)
                path.parent.mkdir(parents=True, exist_ok=True)
                # Data first: a crash in between leaves the new bytes with the old (or no) type,
                # which the server's check of an upload refuses, never old bytes with a new type.
                if exclusive:
                    # link() never replaces (rename() would): of two racing uploads, one wins.
                    os.link(temp, path)
                else:
                    os.replace(temp, path)
                os.replace(meta_temp, _sidecar(path))
            finally:
                meta_temp.unlink(missing_ok=True)
        finally:
            temp.unlink(missing_ok=True)

    def _copy_sync(self, source: Path, target: Path) -> None:
        stored = self._stat_sync(source)
        if stored is None or stored.content_type is None:
            # No sidecar: the upload broke off between its data and its type, so it never completed.
            raise FileNotFoundError(str(source))
        self._temp.mkdir(parents=True, exist_ok=True)
        temp = self._temp / f"copy-{secrets.token_hex(12)}"
        # A second name for the same bytes, not a copy of them: objects are never rewritten in
        # place (uploads are stored once, server writes replace the file), so the two cannot diverge.
        os.link(source, temp)
        self._commit_sync(temp, target, stored.content_type)

    def _write_sync(self, path: Path, data: bytes, content_type: str) -> None:
        fd, temp = self._new_temp_sync()
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._commit_sync(temp, path, content_type)

    @staticmethod
    def _regular_file_stat(path: Path) -> os.stat_result | None:
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return found if stat_module.S_ISREG(found.st_mode) else None

    def _stat_sync(self, path: Path) -> StoredObject | None:
        found = self._regular_file_stat(path)
        if found is None:
            return None
        content_type: str | None = None
        with contextlib.suppress(OSError, ValueError):  # no or broken sidecar: type unknown
            meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
            if isinstance(meta, dict) and isinstance(meta.get("content_type"), str):
                content_type = meta["content_type"]
        return StoredObject(size=found.st_size, content_type=content_type)

    @staticmethod
    def _read_sync(path: Path, limit: int) -> bytes:
        try:
            with path.open("rb") as file:
                return file.read(limit)
        except (IsADirectoryError, NotADirectoryError) as error:
            raise FileNotFoundError(str(path)) from error

    @staticmethod
    def _delete_sync(paths: Sequence[Path]) -> None:
        for path in paths:
            with contextlib.suppress(IsADirectoryError, NotADirectoryError):
                path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)


class _Upload:
    """One POST upload, parsed as it streams in (python-multipart's push parser, as Starlette uses it).

    The parser's callbacks are synchronous: they check fields and the ticket and queue file
    bytes; the loop writes the queued bytes to the temp file in a worker thread after each
    chunk, so the file is never held in memory and the event loop never blocks on disk.
    """

    def __init__(self, storage: LocalStorage, request: Request) -> None:
        self.storage = storage
        self.request = request
        self.fields: dict[str, str] = {}
        self.ticket: _UploadTicket | None = None
        self.part_name: str | None = None
        self.part_is_file = False
        self.part_data = bytearray()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.parts = 0
        self.file_started = False
        self.file_ended = False
        self.file_size = 0
        self.pending: list[bytes] = []
        self.ended = False

    def _parser(self) -> MultipartParser:
        media_type, options = parse_options_header(self.request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if media_type != b"multipart/form-data" or not boundary or len(boundary) > 256:
            raise _malformed()
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        return MultipartParser(boundary, callbacks)

    async def run(self) -> None:
        parser = self._parser()
        temp: Path | None = None
        file: AsyncFile[bytes] | None = None
        received = 0
        try:
            async for chunk in self.request.stream():
                # The body may hold the file plus a little form; the fields alone, only the little.
                if received > (self.ticket.max_size if self.ticket else 0) + FORM_OVERHEAD:
                    raise _Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
                received += len(chunk)
                try:
                    parser.write(chunk)
                except MultipartParseError as error:
                    raise _malformed() from error
                if self.file_started and file is None:
                    fd, temp = await self._new_temp()
                    file = await anyio.open_file(fd, "wb")
                if self.pending:
                    assert file is not None  # file bytes are only queued once the file part started
                    data = b"".join(self.pending)
                    self.pending.clear()
                    await file.write(data)
            parser.finalize()
            if not self.ended:
                raise _malformed()  # the body stopped before the closing boundary
            if not self.file_ended or file is None or temp is None:
                raise _Refused(400, "InvalidArgument", "POST requires exactly one file upload per request.")
            if self.file_size < 1:
                raise _Refused(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size")
            await file.flush()
            await anyio.to_thread.run_sync(os.fsync, file.wrapped.fileno())
            await file.aclose()
            file = None
            await self._commit(temp)
            temp = None
        finally:
            # Shielded: a cancelled request (client gone) must still not leave its temp file behind.
            with anyio.CancelScope(shield=True):
                if file is not None:
                    await file.aclose()
                if temp is not None:
                    await anyio.to_thread.run_sync(temp.unlink, True)

    def _target(self) -> Path:
        assert self.ticket is not None
        return self.storage._path(self.ticket.key)

    async def _new_temp(self) -> tuple[int, Path]:
        """The temp file the upload streams into; `_used()` when the ticket already stored its upload."""
        # Refused before a byte is written; the exclusive commit settles races.
        if await anyio.to_thread.run_sync(self.storage._regular_file_stat, self._target()) is not None:
            raise _used()
        return await anyio.to_thread.run_sync(self.storage._new_temp_sync)

    async def _commit(self, temp: Path) -> None:
        """Moves the finished upload to the ticket's key, unless something is there already (`_used()`)."""
        assert self.ticket is not None
        commit = functools.partial(
            self.storage._commit_sync, temp, self._target(), self.ticket.content_type, exclusive=True
        )
        try:
            await anyio.to_thread.run_sync(commit)
        except FileExistsError as error:
            raise _used() from error

    # --- parser callbacks (synchronous; they raise _Refused to stop the upload) ---

    def _on_part_begin(self) -> None:
        if self.file_ended:
            # S3 ignores what follows the file; we refuse it, so a second file cannot slip by.
            raise _Refused(400, "InvalidArgument", "POST requires exactly one file upload per request.")
        self.parts += 1
        if self.parts > _MAX_FIELDS:
            raise _malformed()
        self.part_name = None
        self.part_is_file = False
        self.part_data.clear()
        self.disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self.header_name).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self.disposition)
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise _malformed()
        try:
            self.part_name = name.decode()
        except UnicodeDecodeError as error:
            raise _malformed() from error
        if self.part_name == FILE_FIELD:
            self._start_file()

    def _start_file(self) -> None:
        """Checks the ticket and the fields before a single byte of the file is written."""
        token = self.fields.get(TOKEN_FIELD.lower())
        declared_type = self.fields.get(CONTENT_TYPE_FIELD.lower())
        if token is None:
            raise _Refused(400, "InvalidArgument", "Bucket POST must contain a field named 'token'.")
        self.ticket = self.storage._upload_ticket(token)
        if declared_type != self.ticket.content_type:
            raise _denied(
                f'Invalid according to Policy: Policy Condition failed: ["eq", "$Content-Type", "{self.ticket.content_type}"]'
            )
        declared_length = self.request.headers.get("content-length", "")
        if declared_length.isdigit() and int(declared_length) > self.ticket.max_size + FORM_OVERHEAD:
            raise _Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        self.part_is_file = True
        self.file_started = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_is_file:
            assert self.ticket is not None
            self.file_size += end - start
            if self.file_size > self.ticket.max_size:
                raise _Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
            self.pending.append(data[start:end])
            return
        if len(self.part_data) + end - start > _MAX_FIELD_BYTES:
            raise _Refused(400, "InvalidArgument", "A form field is too long.")
        self.part_data += data[start:end]

    def _on_part_end(self) -> None:
        if self.part_is_file:
            self.file_ended = True
            return
        assert self.part_name is not None
        # S3's form field names are case-insensitive.
        name = self.part_name.lower()
        if name not in (TOKEN_FIELD.lower(), CONTENT_TYPE_FIELD.lower()):
            raise _denied("Invalid according to Policy: Extra input fields: " + self.part_name)
        if name in self.fields:
            raise _Refused(400, "InvalidArgument", f"The field {self.part_name} appears more than once.")
        try:
            self.fields[name] = self.part_data.decode()
        except UnicodeDecodeError as error:
            raise _malformed() from error

    def _on_end(self) -> None:
        self.ended = True
