"""One POST upload to the local storage: S3's multipart/form-data form, parsed and checked as it streams in."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from infra.storage.local_errors import Refused, denied, malformed, ticket_used

if TYPE_CHECKING:
    from anyio import AsyncFile
    from python_multipart.multipart import MultipartCallbacks

    from infra.storage.local import LocalStorage, UploadTicket

# The form's fields: S3's presigned POST, with a token in place of its policy and signature.
TOKEN_FIELD = "token"  # noqa: S105 -- the form field's name, not a secret
CONTENT_TYPE_FIELD = "Content-Type"
FILE_FIELD = "file"
# Everything of an upload but the file's bytes (boundaries, part headers, the token and the
# Content-Type field) fits in this with room to spare; the whole body may be at most the
# ticket's max size plus this.
FORM_OVERHEAD = 16 * 1024
_MAX_FIELD_BYTES = 4 * 1024
_MAX_FIELDS = 10


class MultipartUpload:
    """One POST upload, parsed as it streams in (python-multipart's push parser, as Starlette uses it).

    The parser's callbacks are synchronous: they check fields and the ticket and queue file
    bytes; the loop writes the queued bytes to the temp file in a worker thread after each
    chunk, so the file is never held in memory and the event loop never blocks on disk.
    """

    def __init__(self, storage: LocalStorage, request: Request) -> None:
        self.storage = storage
        self.request = request
        self.fields: dict[str, str] = {}
        self.ticket: UploadTicket | None = None
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
            raise malformed()
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
                    raise Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
                received += len(chunk)
                try:
                    parser.write(chunk)
                except MultipartParseError as error:
                    raise malformed() from error
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
                raise malformed()  # the body stopped before the closing boundary
            if not self.file_ended or file is None or temp is None:
                raise Refused(400, "InvalidArgument", "POST requires exactly one file upload per request.")
            if self.file_size < 1:
                raise Refused(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size")
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
        """The temp file the upload streams into; `ticket_used()` when the ticket already stored its upload."""
        # Refused before a byte is written; the exclusive commit settles races.
        if await anyio.to_thread.run_sync(self.storage._regular_file_stat, self._target()) is not None:
            raise ticket_used()
        return await anyio.to_thread.run_sync(self.storage._new_temp_sync)

    async def _commit(self, temp: Path) -> None:
        """Moves the finished upload to the ticket's key, unless something is there already (`ticket_used()`)."""
        assert self.ticket is not None
        commit = functools.partial(
            self.storage._commit_sync, temp, self._target(), self.ticket.content_type, exclusive=True
        )
        try:
            await anyio.to_thread.run_sync(commit)
        except FileExistsError as error:
            raise ticket_used() from error

    # --- parser callbacks (synchronous; they raise Refused to stop the upload) ---

    def _on_part_begin(self) -> None:
        if self.file_ended:
            # S3 ignores what follows the file; we refuse it, so a second file cannot slip by.
            raise Refused(400, "InvalidArgument", "POST requires exactly one file upload per request.")
        self.parts += 1
        if self.parts > _MAX_FIELDS:
            raise malformed()
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
            raise malformed()
        try:
            self.part_name = name.decode()
        except UnicodeDecodeError as error:
            raise malformed() from error
        if self.part_name == FILE_FIELD:
            self._start_file()

    def _start_file(self) -> None:
        """Checks the ticket and the fields before a single byte of the file is written."""
        token = self.fields.get(TOKEN_FIELD.lower())
        declared_type = self.fields.get(CONTENT_TYPE_FIELD.lower())
        if token is None:
            raise Refused(400, "InvalidArgument", "Bucket POST must contain a field named 'token'.")
        self.ticket = self.storage._upload_ticket(token)
        if declared_type != self.ticket.content_type:
            raise denied(
                f'Invalid according to Policy: Policy Condition failed: ["eq", "$Content-Type", "{self.ticket.content_type}"]'
            )
        declared_length = self.request.headers.get("content-length", "")
        if declared_length.isdigit() and int(declared_length) > self.ticket.max_size + FORM_OVERHEAD:
            raise Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        self.part_is_file = True
        self.file_started = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part_is_file:
            assert self.ticket is not None
            self.file_size += end - start
            if self.file_size > self.ticket.max_size:
                raise Refused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
            self.pending.append(data[start:end])
            return
        if len(self.part_data) + end - start > _MAX_FIELD_BYTES:
            raise Refused(400, "InvalidArgument", "A form field is too long.")
        self.part_data += data[start:end]

    def _on_part_end(self) -> None:
        if self.part_is_file:
            self.file_ended = True
            return
        assert self.part_name is not None
        # S3's form field names are case-insensitive.
        name = self.part_name.lower()
        if name not in (TOKEN_FIELD.lower(), CONTENT_TYPE_FIELD.lower()):
            raise denied("Invalid according to Policy: Extra input fields: " + self.part_name)
        if name in self.fields:
            raise Refused(400, "InvalidArgument", f"The field {self.part_name} appears more than once.")
        try:
            self.fields[name] = self.part_data.decode()
        except UnicodeDecodeError as error:
            raise malformed() from error

    def _on_end(self) -> None:
        self.ended = True
