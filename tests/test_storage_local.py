"""The local file storage, used as a client uses S3: a real server, multipart POST uploads, plain GET downloads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message

from infra.body_limit import BodyLimit
from infra.storage.local import LocalStorage
from infra.storage.local_http import _RemovableFileResponse
from resolvers.records import UploadForm
from tests.support.clock import MovableClock
from tests.support.processes import bound_socket, wait_healthy

SECRET = "test-secret-key-for-local-storage-0123456789"
ONE_MIB = 1024 * 1024


@dataclass
class Served:
    """A LocalStorage and the base URL of a real server mounting its routes."""

    storage: LocalStorage
    url: str
    root: Path
    clock: MovableClock


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """LocalStorage's routes behind the app's body limit, served by uvicorn in a thread."""
    root = tmp_path / "files"
    clock = MovableClock()
    storage = LocalStorage(root, secret_key=SECRET, clock=clock)

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[*storage.routes(), Route("/healthz", healthz, methods=["GET", "POST"])])
    # As infra/app.py wraps it: GraphQL bodies are limited to 1 MiB, uploads are not.
    app.add_middleware(BodyLimit, max_bytes=ONE_MIB, exempt_prefixes=("/uploads",))
    listener = bound_socket()  # handed to uvicorn: no other process can take the port meanwhile
    port = int(listener.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=partial(server.run, sockets=[listener]), name=f"uvicorn-storage-{port}", daemon=True
    )
    thread.start()
    try:
        wait_healthy(port)
        yield Served(storage, f"http://127.0.0.1:{port}", root, clock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


async def post_form(
    form: UploadForm, content: bytes, *, filename: str = "upload.bin", file_type: str = ""
) -> httpx.Response:
    """Uploads as any S3 client does: the form's fields in order, then the file as `file`."""
    files: list[tuple[str, tuple[str | None, bytes] | tuple[str, bytes, str]]] = [
        (name, (None, value.encode())) for name, value in form.fields
    ]
    files.append(("file", (filename, content, file_type or "application/octet-stream")))
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(form.url, files=files)


async def get(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> httpx.Response:
    """Downloads as a browser does: a plain request to the URL."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(method, url, headers=headers)


def stored_files(root: Path) -> list[str]:
    """Every file under the storage root (objects, sidecars, temp files), relative to it."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def error_code(response: httpx.Response) -> str:
    body = response.text
    return body.split("<Code>", 1)[1].split("</Code>", 1)[0]


def tamper(token: str) -> str:
    """The token with one character of its signature changed."""
    index = len(token) - 5
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


async def form_for(
    served: Served, key: str, *, content_type: str = "text/plain", max_size: int = 1000, expires_in: int = 600
) -> UploadForm:
    return await served.storage.upload_form(
        key=key, content_type=content_type, max_size=max_size, expires_in=expires_in, base_url=served.url
    )


async def test_uploaded_file_downloads_with_the_same_bytes_as_a_named_attachment(served: Served) -> None:
    form = await form_for(served, "17/abc")
    assert form.url == f"{served.url}/uploads"
    assert [name for name, _ in form.fields] == ["Content-Type", "token"]
    assert form.expires_at.utcoffset() is not None

    uploaded = await post_form(form, b"hello, world", file_type="text/plain")
    assert uploaded.status_code == 204
    assert uploaded.content == b""
    stored = await served.storage.stat("17/abc")
    assert stored is not None
    assert (stored.size, stored.content_type) == (12, "text/plain")

    url = await served.storage.download_url(
        key="17/abc", filename="résumé notes.txt", content_type="text/plain", expires_in=300, base_url=served.url
    )
    assert urlsplit(url).path.startswith("/files/")
    downloaded = await get(url)
    assert downloaded.status_code == 200
    assert downloaded.content == b"hello, world"
    assert downloaded.headers["content-type"] == "text/plain"
    assert downloaded.headers["content-disposition"] == "attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20notes.txt"
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    cache = downloaded.headers["cache-control"]
    assert cache.startswith("private, max-age=")
    assert 0 < int(cache.rsplit("=", 1)[1]) <= 300

    head = await get(url, method="HEAD")
    assert head.status_code == 200
    assert head.headers["content-length"] == "12"
    assert head.content == b""
    part = await get(url, headers={"Range": "bytes=7-11"})
    assert part.status_code == 206
    assert part.content == b"world"


async def test_html_is_served_as_a_sandboxed_attachment_never_inline(served: Served) -> None:
    await served.storage.write("1/page", b"<script>alert(1)</script>", content_type="text/html")
    url = await served.storage.download_url(
        key="1/page", filename="page.html", content_type="text/html", expires_in=60, base_url=served.url
    )
    response = await get(url)
    assert response.headers["content-disposition"] == 'attachment; filename="page.html"'
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in response.headers["content-security-policy"]


async def test_upload_over_declared_size_is_refused_and_stores_nothing(served: Served) -> None:
    form = await form_for(served, "17/big", max_size=1000)
    response = await post_form(form, b"x" * 1001, file_type="text/plain")
    assert response.status_code == 400
    assert error_code(response) == "EntityTooLarge"
    assert await served.storage.stat("17/big") is None
    assert stored_files(served.root) == []


async def test_upload_far_over_declared_size_is_refused_without_reading_it_all(served: Served) -> None:
    form = await form_for(served, "17/huge", max_size=1000)
    response = await post_form(form, b"x" * (3 * ONE_MIB), file_type="text/plain")
    assert response.status_code == 400
    assert error_code(response) == "EntityTooLarge"
    assert await served.storage.stat("17/huge") is None
    assert stored_files(served.root) == []


async def test_streamed_upload_without_declared_length_is_cut_off_past_the_limit(served: Served) -> None:
    form = await form_for(served, "17/chunked", max_size=1000)
    boundary = "parley-test-boundary"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in form.fields
    )
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'.encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(64):  # 4 MiB in all, with no Content-Length: the server must count
            yield b"x" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            form.url, content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
    assert response.status_code == 400
    assert error_code(response) == "EntityTooLarge"
    assert await served.storage.stat("17/chunked") is None
    assert stored_files(served.root) == []


async def test_refused_upload_leaves_the_earlier_object_at_the_key_untouched(served: Served) -> None:
    await served.storage.write("17/kept", b"original", content_type="text/plain")
    form = await form_for(served, "17/kept", max_size=10)
    # Too large (400), or refused as the key is taken (403): which is seen first depends on the chunks read.
    assert (await post_form(form, b"y" * 11)).status_code in (400, 403)
    assert await served.storage.read("17/kept", limit=100) == b"original"
    assert stored_files(served.root) == ["17/kept", "17/kept.meta.json"]


async def test_an_upload_ticket_stores_once_and_cannot_replace_what_it_stored(served: Served) -> None:
    """Review 2, item 4: posting the same form again, even while its ticket is valid, is refused."""
    form = await form_for(served, "17/once", content_type="image/png", max_size=1000)
    assert (await post_form(form, b"\x89PNG first")).status_code == 204
    again = await post_form(form, b"\x7fELF second")
    assert again.status_code == 403
    assert error_code(again) == "AccessDenied"
    assert await served.storage.read("17/once", limit=100) == b"\x89PNG first"
    assert stored_files(served.root) == ["17/once", "17/once.meta.json"]


async def test_racing_uploads_with_one_ticket_store_one_of_them_whole(served: Served) -> None:
    """Review 2, item 4: of uploads of one ticket at once, one is stored; the others are refused."""
    form = await form_for(served, "17/race", max_size=ONE_MIB)
    contents = [bytes([65 + n]) * (ONE_MIB // 2) for n in range(4)]
    responses = await asyncio.gather(*(post_form(form, content, file_type="text/plain") for content in contents))
    assert sorted(response.status_code for response in responses) == [204, 403, 403, 403]
    stored = await served.storage.read("17/race", limit=ONE_MIB)
    assert stored in contents
    assert stored_files(served.root) == ["17/race", "17/race.meta.json"]


async def test_a_copy_keeps_the_bytes_and_type_and_outlives_its_source(served: Served) -> None:
    """Review 2, item 4: the checked copy is an object of its own."""
    await served.storage.write("17/source", b"checked bytes", content_type="image/png")
    await served.storage.copy("17/source", "17/source.checked-x")
    await served.storage.delete(["17/source"])
    stored = await served.storage.stat("17/source.checked-x")
    assert stored is not None
    assert (stored.size, stored.content_type) == (13, "image/png")
    assert await served.storage.read("17/source.checked-x", limit=100) == b"checked bytes"
    with pytest.raises(FileNotFoundError):
        await served.storage.copy("17/source", "17/other")
    assert stored_files(served.root) == ["17/source.checked-x", "17/source.checked-x.meta.json"]


async def test_upload_with_another_content_type_is_refused_and_stores_nothing(served: Served) -> None:
    form = await form_for(served, "17/typed", content_type="image/png")
    forged = UploadForm(
        url=form.url,
        fields=[
            ("Content-Type", "text/html") if name == "Content-Type" else (name, value) for name, value in form.fields
        ],
        expires_at=form.expires_at,
    )
    response = await post_form(forged, b"<html></html>", file_type="text/html")
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert await served.storage.stat("17/typed") is None
    assert stored_files(served.root) == []


async def test_empty_upload_is_refused(served: Served) -> None:
    form = await form_for(served, "17/empty")
    response = await post_form(form, b"")
    assert response.status_code == 400
    assert error_code(response) == "EntityTooSmall"
    assert await served.storage.stat("17/empty") is None


async def test_expired_upload_ticket_is_refused(served: Served) -> None:
    form = await form_for(served, "17/late", expires_in=1)
    served.clock.advance(2)
    response = await post_form(form, b"too late")
    assert response.status_code == 403
    assert "expired" in response.text
    assert await served.storage.stat("17/late") is None


async def test_tampered_upload_token_is_refused(served: Served) -> None:
    form = await form_for(served, "17/forged")
    fields = [(name, tamper(value) if name == "token" else value) for name, value in form.fields]
    response = await post_form(UploadForm(form.url, fields, form.expires_at), b"data")
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert await served.storage.stat("17/forged") is None


async def test_upload_without_token_or_with_extra_fields_is_refused(served: Served) -> None:
    form = await form_for(served, "17/odd")
    without_token = UploadForm(form.url, [field for field in form.fields if field[0] != "token"], form.expires_at)
    assert (await post_form(without_token, b"data")).status_code == 400
    extra = UploadForm(form.url, [*form.fields, ("key", "17/other")], form.expires_at)
    assert (await post_form(extra, b"data")).status_code == 403
    assert await served.storage.stat("17/odd") is None


async def test_a_second_file_or_a_field_after_the_file_is_refused(served: Served) -> None:
    form = await form_for(served, "17/two")
    files = [(name, (None, value.encode())) for name, value in form.fields]
    async with httpx.AsyncClient() as http:
        two = await http.post(form.url, files=[*files, ("file", ("a.txt", b"a")), ("file", ("b.txt", b"b"))])
        after = await http.post(form.url, files=[*files, ("file", ("a.txt", b"a")), ("token", (None, b"x"))])
    assert two.status_code == 400
    assert after.status_code == 400
    assert await served.storage.stat("17/two") is None
    assert stored_files(served.root) == []


async def test_truncated_upload_body_stores_nothing(served: Served) -> None:
    form = await form_for(served, "17/cut")
    boundary = "parley-test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in form.fields
    )
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'.encode()
    body += b"half of the file"  # no closing boundary: the client stopped mid-file
    async with httpx.AsyncClient() as http:
        response = await http.post(
            form.url, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
    assert response.status_code == 400
    assert error_code(response) == "MalformedPOSTRequest"
    assert await served.storage.stat("17/cut") is None
    assert stored_files(served.root) == []


async def test_upload_that_is_not_multipart_is_refused(served: Served) -> None:
    form = await form_for(served, "17/json")
    async with httpx.AsyncClient() as http:
        response = await http.post(form.url, json={"file": "data"})
    assert response.status_code == 400
    assert await served.storage.stat("17/json") is None


async def test_download_url_after_expiry_is_refused(served: Served) -> None:
    await served.storage.write("17/doc", b"content", content_type="text/plain")
    url = await served.storage.download_url(
        key="17/doc", filename="doc.txt", content_type="text/plain", expires_in=1, base_url=served.url
    )
    served.clock.advance(2)
    response = await get(url)
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"
    assert b"content" not in response.content


async def test_tampered_download_url_is_refused(served: Served) -> None:
    await served.storage.write("17/doc", b"content", content_type="text/plain")
    url = await served.storage.download_url(
        key="17/doc", filename="doc.txt", content_type="text/plain", expires_in=60, base_url=served.url
    )
    response = await get(tamper(url))
    assert response.status_code == 403
    assert error_code(response) == "AccessDenied"


async def test_upload_token_is_no_download_token_and_back(served: Served) -> None:
    await served.storage.write("17/doc", b"content", content_type="text/plain")
    form = await form_for(served, "17/doc")
    upload_token = dict(form.fields)["token"]
    assert (await get(f"{served.url}/files/{upload_token}")).status_code == 403

    url = await served.storage.download_url(
        key="17/doc", filename="doc.txt", content_type="text/plain", expires_in=60, base_url=served.url
    )
    download_token = url.rsplit("/", 1)[1]
    swapped = UploadForm(form.url, [("Content-Type", "text/plain"), ("token", download_token)], form.expires_at)
    assert (await post_form(swapped, b"overwritten")).status_code == 403
    assert await served.storage.read("17/doc", limit=100) == b"content"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape",
        "17/../../escape",
        "/etc/passwd",
        "17//x",
        "17/./x",
        "a\\b",
        "a\x00b",
        ".tmp/x",
        "17/x.meta.json",
        "17/",
    ],
)
async def test_keys_that_could_leave_the_root_are_refused(served: Served, key: str) -> None:
    storage = served.storage
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.stat(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.read(key, limit=1)
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.write(key, b"x", content_type="text/plain")
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.delete([key])
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.upload_form(key=key, content_type="text/plain", max_size=10, expires_in=60, base_url=served.url)
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.download_url(key=key, filename="x", content_type="text/plain", expires_in=60, base_url=served.url)
    assert not (served.root.parent / "escape").exists()


async def test_five_mib_upload_streams_through_and_reads_back_its_first_bytes(served: Served) -> None:
    content = bytes(range(256)) * (5 * ONE_MIB // 256)
    form = await form_for(served, "17/large", content_type="application/pdf", max_size=5 * ONE_MIB)
    response = await post_form(form, content, filename="large.pdf", file_type="application/pdf")
    assert response.status_code == 204
    stored = await served.storage.stat("17/large")
    assert stored is not None
    assert (stored.size, stored.content_type) == (5 * ONE_MIB, "application/pdf")
    assert await served.storage.read("17/large", limit=16) == content[:16]

    url = await served.storage.download_url(
        key="17/large", filename="large.pdf", content_type="application/pdf", expires_in=60, base_url=served.url
    )
    assert (await get(url)).content == content
    await served.storage.delete(["17/large", "17/never-stored"])
    assert await served.storage.stat("17/large") is None
    missing = await get(url)
    assert missing.status_code == 404
    assert error_code(missing) == "NoSuchKey"
    with pytest.raises(FileNotFoundError):
        await served.storage.read("17/large", limit=16)
    assert stored_files(served.root) == []


async def test_server_written_objects_replace_atomically_and_keep_their_type(served: Served) -> None:
    await served.storage.write("3/thumb", b"first", content_type="image/png")
    await served.storage.write("3/thumb", b"second!", content_type="image/jpeg")
    stored = await served.storage.stat("3/thumb")
    assert stored is not None
    assert (stored.size, stored.content_type) == (7, "image/jpeg")
    assert stored_files(served.root) == ["3/thumb", "3/thumb.meta.json"]


async def test_body_limit_still_refuses_large_bodies_outside_uploads(served: Served) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{served.url}/healthz", content=b"x" * (ONE_MIB + 1))
    assert response.status_code == 413


async def test_a_file_deleted_between_its_check_and_its_download_answers_404(tmp_path: Path) -> None:
    """Retention or expiry can delete a file while its download starts: the client gets 404, not a dropped connection."""
    path = tmp_path / "object"
    path.write_bytes(b"%PDF-1.4\n")
    response = _RemovableFileResponse(path, stat_result=path.stat(), filename="a.pdf")
    path.unlink()  # after the endpoint's check, before Starlette opens it
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/files/x", "headers": []}
    await response(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 404
    assert b"NoSuchKey" in b"".join(m.get("body", b"") for m in sent[1:])
