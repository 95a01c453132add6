"""Attachments in an S3 bucket (AWS, MinIO, moto): clients upload and download through presigned URLs.

The server itself only copies uploads (CopyObject) to keys no presigned POST can write,
checks the copies (HEAD, ranged GET), writes thumbnails and deletes; the bytes of uploads
and downloads never pass through it (images aside, whose metadata it removes).
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from resolvers.ports import FileStorage
from resolvers.records import StoredObject, UploadForm

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Error codes S3 (and compatible servers) use for "no such object": HEAD has no body, so only the status.
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
# DeleteObjects takes at most 1000 keys per request.
_DELETE_BATCH = 1000
# Zero-width (non-)joiners are format characters too, but emoji sequences and Persian text need them.
_KEPT_FORMAT_CHARACTERS = frozenset({"\u200c", "\u200d"})


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _client_config(endpoint_url: str | None) -> AioConfig:
    # MinIO and moto serve buckets under a path, not as subdomains of their host; AWS picks its own style.
    s3 = {"addressing_style": "path"} if endpoint_url is not None else {}
    return AioConfig(
        signature_version="s3v4",
        s3=s3,
        # botocore waits 60 s per attempt by default and retries 4 times: a request of ours would hang
        # minutes during an outage instead of answering UNAVAILABLE.
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
    )


def _visible(filename: str) -> str:
    """The name without control, surrogate and bidi-format characters (they break headers or spoof names)."""
    cleaned = "".join(
        "_"
        if unicodedata.category(char) in {"Cc", "Cs"}
        or (unicodedata.category(char) == "Cf" and char not in _KEPT_FORMAT_CHARACTERS)
        else char
        for char in filename
    )
    return cleaned or "download"


def _ascii_fallback(filename: str) -> str:
    """An ASCII look-alike for clients that ignore `filename*`: accents dropped, anything unsafe as `_`."""
    characters: list[str] = []
    for char in unicodedata.normalize("NFKD", filename):
        if unicodedata.combining(char):
            continue
        # Quotes and backslashes would end or escape the quoted string; RFC 6266 advises against "%"
        # because some browsers percent-decode the plain `filename`.
        characters.append(char if " " <= char <= "~" and char not in '"\\%' else "_")
    return "".join(characters)


def content_disposition(filename: str) -> str:
    """`attachment` naming `filename`: an ASCII `filename` for old clients and the exact UTF-8 `filename*`."""
    # Starlette and Werkzeug build this header inside their responses but expose no function for it.
    name = _visible(filename)
    return f"attachment; filename=\"{_ascii_fallback(name)}\"; filename*=UTF-8''{quote(name, safe='')}"


class S3Storage:
    """A `FileStorage` in one S3 bucket; open it with `S3Storage.open(...)`.

    Requests go to the internal endpoint; URLs handed to clients are signed for the public one
    (a presigned URL is bound to the host it was signed for).
    """

    def __init__(self, *, bucket: str, client: S3Client, signer: S3Client) -> None:
        self._bucket = bucket
        self._client = client
        self._signer = signer

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> AsyncIterator[S3Storage]:
        """Opens the clients (closed on exit).

        `endpoint_url` None means AWS itself; `public_endpoint_url` None means clients reach the
        same endpoint as the server. Without keys, botocore's default credential chain applies.
        """
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        session = aioboto3.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                session.client("s3", endpoint_url=endpoint_url, config=_client_config(endpoint_url))
            )
            signer = client
            if public_endpoint_url is not None and public_endpoint_url != endpoint_url:
                signer = await stack.enter_async_context(
                    session.client("s3", endpoint_url=public_endpoint_url, config=_client_config(public_endpoint_url))
                )
            yield cls(bucket=bucket, client=client, signer=signer)

    async def upload_form(
        self, *, key: str, content_type: str, max_size: int, expires_in: int, base_url: str
    ) -> UploadForm:
        """A presigned POST for exactly this key and content type, 1 to `max_size` bytes (`base_url` unused)."""
        # Taken before signing, so the client is told a moment less than the policy allows, never more.
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
        post = await self._signer.generate_presigned_post(
            Bucket=self._bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", 1, max_size]],
            ExpiresIn=expires_in,
        )
        fields = [(str(name), str(value)) for name, value in post["fields"].items()]
        return UploadForm(url=str(post["url"]), fields=fields, expires_at=expires_at)

    async def download_url(self, *, key: str, filename: str, content_type: str, expires_in: int, base_url: str) -> str:
        """A presigned GET that S3 answers as an attachment named `filename` (`base_url` unused)."""
        return await self._signer.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": content_disposition(filename),
            },
            ExpiresIn=expires_in,
        )

    async def stat(self, key: str) -> StoredObject | None:
        """Size and content type from HEAD, or None when nothing is stored at `key`."""
        try:
            head = await self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                return None
            raise
        return StoredObject(size=head["ContentLength"], content_type=head.get("ContentType"))

    async def read(self, key: str, *, limit: int) -> bytes:
        """The first `limit` bytes (a ranged GET); FileNotFoundError when the object is missing."""
        if limit <= 0:
            if await self.stat(key) is None:
                raise FileNotFoundError(key)
            return b""
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=key, Range=f"bytes=0-{limit - 1}")
        except ClientError as error:
            code = _error_code(error)
            if code in _NOT_FOUND:
                raise FileNotFoundError(key) from error
            if code == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise
        async with response["Body"] as body:
            data = await body.read()
        # A server that ignores Range sends everything.
        return data[:limit]

    async def write(self, key: str, data: bytes, *, content_type: str) -> None:
        """Stores `data` at `key` with this content type."""
        await self._client.put_object(Bucket=self._bucket, Key=key, Body=data, ContentType=content_type)

    async def copy(self, source: str, target: str) -> None:
        """A server-side copy (CopyObject: bytes and content type); FileNotFoundError when `source` is missing."""
        try:
            await self._client.copy_object(
                Bucket=self._bucket, Key=target, CopySource={"Bucket": self._bucket, "Key": source}
            )
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                raise FileNotFoundError(source) from error
            raise

    async def delete(self, keys: Sequence[str]) -> None:
        """Deletes these objects, 1000 per request; a missing key is no error, any other failure raises."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            response = await self._client.delete_objects(
                Bucket=self._bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            # DeleteObjects answers 200 and lists per-key failures (access denied, ...) in its body.
            failures = [error for error in response.get("Errors", []) if error.get("Code") not in _NOT_FOUND]
            if failures:
                first = failures[0]
                raise ClientError(
                    {
                        "Error": {
                            "Code": first.get("Code", ""),
                            "Message": f"{len(failures)} objects not deleted, first {first.get('Key')!r}: "
                            f"{first.get('Message', '')}",
                        }
                    },
                    "DeleteObjects",
                )


def _implements_file_storage(storage: S3Storage) -> FileStorage:
    # mypy checks here that S3Storage satisfies the FileStorage Protocol.
    return storage
