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

This module is the storage itself; its HTTP endpoints are in infra/storage/local_http.py and
the upload's multipart parsing in infra/storage/local_upload.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat as stat_module
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.routing import BaseRoute

from infra.storage.local_errors import denied
from infra.storage.local_http import DOWNLOAD_PATH, UPLOAD_PATH, LocalStorageEndpoints
from infra.storage.local_upload import CONTENT_TYPE_FIELD, TOKEN_FIELD
from resolvers.records import StoredObject, UploadForm

if TYPE_CHECKING:
    from resolvers.ports import FileStorage

_UPLOAD_SALT = "parley.storage.local.upload"
_DOWNLOAD_SALT = "parley.storage.local.download"
_TEMP_DIR = ".tmp"
_META_SUFFIX = ".meta.json"
# S3's limit on key length; filesystems allow 255 bytes a name, less the sidecar's suffix.
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 255 - len(_META_SUFFIX)
_CONTENT_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*;[\x20-\x7e]*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


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
class UploadTicket:
    """What an upload token allows: one object of this type and at most this size, until `expires`."""

    key: str
    content_type: str
    max_size: int
    expires: int


@dataclass(frozen=True, slots=True)
class DownloadTicket:
    """What a download token allows: this object, as an attachment named `filename`, until `expires`."""

    key: str
    filename: str
    content_type: str
    expires: int


class LocalStorage:
    """The `FileStorage` port over a folder; `routes()` are the upload and download endpoints to mount."""

    def __init__(self, root: Path | str, *, secret_key: str, clock: Callable[[], float] = time.time) -> None:
        if not secret_key:
            raise ValueError("LocalStorage needs a secret key to sign its upload and download tokens")
        self.root = Path(root)
        # The time its tokens are minted and checked by, in epoch seconds (tests move it forward).
        self.clock = clock
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
        expires = int(self.clock()) + expires_in
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
        expires = int(self.clock()) + expires_in
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

    def routes(self) -> list[BaseRoute]:
        """`POST /uploads` (the upload form's target) and `GET`/`HEAD /files/{token}` (download URLs)."""
        return LocalStorageEndpoints(self).routes()

    # --- tokens ---

    def _upload_ticket(self, token: str) -> UploadTicket:
        """The upload ticket a token carries; `Refused` when tampered with or expired."""
        payload = self._loads(self._uploads, token)
        try:
            # Signed by us with this salt, so its shape is ours; only a future format change could miss.
            ticket = UploadTicket(
                key=payload["k"], content_type=payload["t"], max_size=payload["m"], expires=payload["e"]
            )
        except KeyError as error:
            raise denied() from error
        if self.clock() > ticket.expires:
            raise denied("Invalid according to Policy: Policy expired.")
        return ticket

    def _download_ticket(self, token: str) -> DownloadTicket:
        payload = self._loads(self._downloads, token)
        try:
            ticket = DownloadTicket(
                key=payload["k"], filename=payload["f"], content_type=payload["t"], expires=payload["e"]
            )
        except KeyError as error:
            raise denied() from error
        if self.clock() > ticket.expires:
            raise denied("Request has expired")
        return ticket

    @staticmethod
    def _loads(serializer: URLSafeTimedSerializer, token: str) -> dict[str, Any]:
        try:
            payload = serializer.loads(token)
        except BadSignature as error:
            raise denied() from error
        if not isinstance(payload, dict):
            raise denied()
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
