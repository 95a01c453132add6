"""The S3 storage backend against a real S3-protocol server (moto's, as a separate process)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from infra.storage.s3 import S3Storage
from resolvers.records import UploadForm
from tests.support.processes import free_port
from tests.support.s3_server import S3Server

MAX_SIZE = 1024
PDF = b"%PDF-1.7\n" + b"x" * 100


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server, one per module, with an empty bucket."""
    with S3Server() as server:
        yield server


@pytest.fixture
async def storage(s3_server: S3Server) -> AsyncIterator[S3Storage]:
    """S3Storage talking to 127.0.0.1 and signing client URLs for localhost (both reach moto)."""
    async with S3Storage.open(
        bucket=s3_server.bucket,
        endpoint_url=s3_server.url,
        public_endpoint_url=s3_server.public_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    ) as opened:
        yield opened


def new_key() -> str:
    return f"uploads/{uuid.uuid4().hex}"


async def post_form(form: UploadForm, *, name: str, data: bytes, content_type: str) -> httpx.Response:
    """Uploads as a client does: the form's fields in order, then the file."""
    async with httpx.AsyncClient() as client:
        return await client.post(form.url, data=dict(form.fields), files=[("file", (name, data, content_type))])


async def fetch(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url)


def policy_of(form: UploadForm) -> dict[str, object]:
    policy = dict(form.fields)["policy"]
    decoded: dict[str, object] = json.loads(base64.b64decode(policy))
    return decoded


def filename_of(disposition: str) -> str:
    """The file name a browser takes from a Content-Disposition: its UTF-8 `filename*` (RFC 6266)."""
    parameters = dict(part.strip().split("=", 1) for part in disposition.split(";")[1:])
    charset, _, encoded = parameters["filename*"].split("'", 2)
    return unquote(encoded, encoding=charset, errors="strict")


async def test_uploaded_file_shows_its_size_type_and_first_bytes(storage: S3Storage) -> None:
    key = new_key()
    form = await storage.upload_form(
        key=key, content_type="application/pdf", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )

    response = await post_form(form, name="doc.pdf", data=PDF, content_type="application/pdf")

    assert response.is_success, response.text
    stored = await storage.stat(key)
    assert stored is not None
    assert (stored.size, stored.content_type) == (len(PDF), "application/pdf")
    assert await storage.read(key, limit=4) == b"%PDF"


async def test_upload_form_carries_the_content_type_and_a_signature(storage: S3Storage) -> None:
    form = await storage.upload_form(
        key=new_key(), content_type="image/png", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )

    names = [name for name, _ in form.fields]
    assert len(names) == len(set(names))
    assert {"policy", "x-amz-signature", "x-amz-credential", "x-amz-date", "x-amz-algorithm"} <= set(names)
    assert dict(form.fields)["Content-Type"] == "image/png"


async def test_upload_policy_binds_the_key_the_type_and_the_size_range(storage: S3Storage) -> None:
    # moto does not enforce POST policies, so the policy S3 would enforce is checked as written.
    key = new_key()
    before = datetime.now(UTC)
    form = await storage.upload_form(
        key=key, content_type="image/png", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )

    policy = policy_of(form)
    conditions = policy["conditions"]
    assert isinstance(conditions, list)
    assert {"key": key} in conditions
    assert {"Content-Type": "image/png"} in conditions
    assert ["content-length-range", 1, MAX_SIZE] in conditions
    assert not any(isinstance(c, list) and c[0] == "starts-with" for c in conditions)
    expiration = datetime.fromisoformat(str(policy["expiration"]).replace("Z", "+00:00"))
    assert before + timedelta(seconds=600) <= expiration + timedelta(seconds=1)
    assert expiration <= datetime.now(UTC) + timedelta(seconds=601)
    assert form.expires_at.tzinfo is not None
    assert abs(form.expires_at - expiration) < timedelta(seconds=2)


async def test_client_urls_point_at_the_public_endpoint(storage: S3Storage, s3_server: S3Server) -> None:
    key = new_key()
    await storage.write(key, PDF, content_type="application/pdf")

    form = await storage.upload_form(
        key=key, content_type="application/pdf", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )
    url = await storage.download_url(
        key=key, filename="a.pdf", content_type="application/pdf", expires_in=300, base_url="https://ignored"
    )

    public = urlsplit(s3_server.public_url).netloc
    assert urlsplit(form.url).netloc == public
    assert urlsplit(url).netloc == public
    assert (await fetch(url)).content == PDF


async def test_download_serves_the_bytes_as_an_attachment_with_the_exact_file_name(storage: S3Storage) -> None:
    key = new_key()
    form = await storage.upload_form(
        key=key, content_type="application/pdf", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )
    assert (await post_form(form, name="x.pdf", data=PDF, content_type="application/pdf")).is_success
    name = 'résumé "q".pdf'

    url = await storage.download_url(
        key=key, filename=name, content_type="application/pdf", expires_in=300, base_url="https://ignored"
    )
    response = await fetch(url)

    assert response.status_code == 200
    assert response.content == PDF
    assert response.headers["content-type"] == "application/pdf"
    disposition = response.headers["content-disposition"]
    assert disposition == ("attachment; filename=\"resume _q_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22.pdf")
    assert filename_of(disposition) == name


async def test_control_characters_in_a_file_name_cannot_add_headers(storage: S3Storage) -> None:
    key = new_key()
    await storage.write(key, b"hello", content_type="text/plain")

    url = await storage.download_url(
        key=key,
        filename="a\r\nSet-Cookie: s=1\\\u202etxt.exe",
        content_type="text/plain",
        expires_in=300,
        base_url="https://ignored",
    )
    response = await fetch(url)

    assert response.content == b"hello"
    assert "set-cookie" not in response.headers
    assert response.headers.get_list("content-disposition") == [
        "attachment; filename=\"a__Set-Cookie: s=1__txt.exe\"; filename*=UTF-8''a__Set-Cookie%3A%20s%3D1%5C_txt.exe"
    ]
    assert filename_of(response.headers["content-disposition"]) == "a__Set-Cookie: s=1\\_txt.exe"


async def test_written_object_reads_back_with_its_type(storage: S3Storage) -> None:
    key = new_key()

    await storage.write(key, b"thumbnail bytes", content_type="image/jpeg")

    assert await storage.read(key, limit=1000) == b"thumbnail bytes"
    assert await storage.read(key, limit=9) == b"thumbnail"
    stored = await storage.stat(key)
    assert stored is not None
    assert (stored.size, stored.content_type) == (15, "image/jpeg")


async def test_empty_object_reads_as_no_bytes(storage: S3Storage) -> None:
    key = new_key()

    await storage.write(key, b"", content_type="text/plain")

    assert await storage.read(key, limit=4) == b""
    stored = await storage.stat(key)
    assert stored is not None
    assert stored.size == 0


async def test_delete_removes_present_objects_and_ignores_missing_ones(storage: S3Storage) -> None:
    present = [new_key(), new_key()]
    for key in present:
        await storage.write(key, b"data", content_type="text/plain")

    await storage.delete([*present, new_key()])

    for key in present:
        assert await storage.stat(key) is None
        with pytest.raises(FileNotFoundError):
            await storage.read(key, limit=4)


async def test_delete_of_more_than_a_thousand_keys_removes_the_first_and_the_last(storage: S3Storage) -> None:
    first, last = new_key(), new_key()
    await storage.write(first, b"1", content_type="text/plain")
    await storage.write(last, b"2", content_type="text/plain")

    # S3 takes 1000 keys per request (moto takes more, so this proves the result, not the batching).
    await storage.delete([first, *(new_key() for _ in range(1000)), last])

    assert await storage.stat(first) is None
    assert await storage.stat(last) is None


async def test_missing_object_has_no_stat_and_cannot_be_read(storage: S3Storage) -> None:
    key = new_key()

    assert await storage.stat(key) is None
    with pytest.raises(FileNotFoundError):
        await storage.read(key, limit=4)
    with pytest.raises(FileNotFoundError):
        await storage.read(key, limit=0)


async def test_missing_bucket_is_an_error_not_a_missing_file(s3_server: S3Server) -> None:
    async with S3Storage.open(
        bucket="no-such-bucket",
        endpoint_url=s3_server.url,
        region=s3_server.region,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    ) as storage:
        with pytest.raises(ClientError):
            await storage.read("a", limit=4)
        with pytest.raises(ClientError):
            await storage.write("a", b"x", content_type="text/plain")


async def test_unreachable_server_is_an_error_not_a_missing_file(s3_server: S3Server) -> None:
    async with S3Storage.open(
        bucket=s3_server.bucket,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region=s3_server.region,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    ) as storage:
        with pytest.raises(BotoCoreError):
            await storage.stat("a")


async def test_a_copy_is_not_changed_by_posting_the_upload_form_again(storage: S3Storage) -> None:
    """Review 2, item 4: a presigned POST stays valid until it expires, but it writes its own key only."""
    key = new_key()
    form = await storage.upload_form(
        key=key, content_type="application/pdf", max_size=MAX_SIZE, expires_in=600, base_url="https://ignored"
    )
    assert (await post_form(form, name="a.pdf", data=PDF, content_type="application/pdf")).is_success
    await storage.copy(key, f"{key}.checked-1")

    replay = b"\x7fELF" + bytes(60)
    assert (await post_form(form, name="a.pdf", data=replay, content_type="application/pdf")).is_success

    assert await storage.read(key, limit=100) == replay
    assert await storage.read(f"{key}.checked-1", limit=1000) == PDF
    copied = await storage.stat(f"{key}.checked-1")
    assert copied is not None
    assert (copied.size, copied.content_type) == (len(PDF), "application/pdf")
    with pytest.raises(FileNotFoundError):
        await storage.copy(new_key(), new_key())
