"""File sharing end to end: upload with a ticket, attach on send, download, thumbnails, retention.

The local backend runs in the embedded and the production mode; the S3 backend against
a real S3-protocol server process (moto), which does not enforce POST policies: there
the service's own checks are what the tests prove.
"""

from __future__ import annotations

import asyncio
import io
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aioboto3
import httpx
import pytest
from PIL import Image

from infra.app import Overrides
from tests.support.client import Json
from tests.support.clock import MovableClock
from tests.support.helpers import ATTACHMENT_FIELDS, MESSAGE_FIELDS, Api, Person, post_form
from tests.support.s3_server import S3Server
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.waiting import until

ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + bytes(200)
FILE_EVENTS = f"""
  __typename
  ... on MessageEvent {{ cursor message {{ {MESSAGE_FIELDS} attachments {{ {ATTACHMENT_FIELDS} }} }} }}
"""


def jpeg_with_gps(width: int = 1200, height: int = 800, *, orientation: int | None = None) -> bytes:
    """A photo as a phone takes it: JPEG with EXIF GPS coordinates (and an orientation, if given)."""
    image = Image.new("RGB", (width, height), (200, 40, 40))
    image.paste((20, 40, 200), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 31.0, 12.0)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=85)
    return out.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def s3_settings(server: S3Server) -> dict[str, object]:
    """Settings of the S3 backend against the test's S3 server."""
    return {
        "s3_bucket": server.bucket,
        "s3_endpoint_url": server.url,
        "s3_public_endpoint_url": server.public_url,
        "s3_access_key_id": server.access_key_id,
        "s3_secret_access_key": server.secret_access_key,
    }


@pytest.fixture(scope="session")
def production_s3_server(
    migrated_postgres: str, redis_target: RedisTarget, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadServer]:
    settings = production_settings(migrated_postgres, redis_target, **s3_settings(s3_server))
    with ThreadServer(settings) as server:
        yield server


@pytest.fixture(params=["embedded", "production", "production_s3"])
def files_api(request: pytest.FixtureRequest) -> Api:
    """A running server per mode and storage backend."""
    server: ThreadServer = request.getfixturevalue(f"{request.param}_server")
    return Api(url=server.url, ws_url=server.ws_url, mode=request.param)


async def download(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url)


async def gone(url: str) -> bool:
    """Whether a download URL now answers that the file is no longer there."""
    return (await download(url)).status_code in (403, 404)


async def pending_files(person: Person) -> list[Json]:
    data = await person.data(f"query {{ pendingEvents(first: 100) {{ {FILE_EVENTS} }} }}")
    events: list[Json] = data["pendingEvents"]
    return events


async def send_refusal(person: Person, conversation_id: str, attachment_ids: list[str], body: str | None = None) -> str:
    """The error code of a send that must fail."""
    error = await person.http.error(
        "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
        input={
            "conversationId": conversation_id,
            "clientId": uuid.uuid4().hex,
            "body": body,
            "attachmentIds": attachment_ids,
        },
    )
    return error.code


async def test_recipient_downloads_the_bytes_the_sender_uploaded(files_api: Api) -> None:
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    photo = png(640, 480)  # no metadata: its bytes are served as uploaded
    report = b"%PDF-1.7\n" + uuid.uuid4().bytes * 1000
    photo_id = await alice.upload("holiday.png", "image/png", photo)
    report_id = await alice.upload("Q3 report (final).pdf", "application/pdf", report)

    async with bob.socket() as socket:
        live = await socket.subscribe(f"subscription {{ events {{ {FILE_EVENTS} }} }}")
        # Attachments only: no body.
        sent = await alice.send_files(direct, [photo_id, report_id])
        received = (await live.next())["events"]["message"]

    assert sent["body"] is None
    assert [a["id"] for a in received["attachments"]] == [photo_id, report_id]
    first, second = received["attachments"]
    assert (first["filename"], first["contentType"], first["size"]) == ("holiday.png", "image/png", len(photo))
    assert (second["filename"], second["contentType"], second["size"]) == (
        "Q3 report (final).pdf",
        "application/pdf",
        len(report),
    )
    for attachment, data in ((first, photo), (second, report)):
        response = await download(attachment["url"])
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-type"].startswith(attachment["contentType"])
        assert "attachment" in response.headers["content-disposition"]
    # Replayed after a reconnect, with fresh URLs.
    replayed = (await pending_files(bob))[-1]["message"]
    assert (await download(replayed["attachments"][1]["url"])).content == report


async def test_an_image_attachment_gets_a_thumbnail_without_its_gps_data(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    async with file_server(tmp_path, files_mode, backends, s3_server, worker=True) as api:
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        photo_id = await alice.upload("photo.jpg", "image/jpeg", jpeg_with_gps(1200, 800))
        sent = await alice.send_files(direct, [photo_id], body="look")
        assert sent["attachments"][0]["thumbnailUrl"] is None  # made off the request path

        async def thumbnailed() -> Json | None:
            attachment: Json = (await pending_files(bob))[-1]["message"]["attachments"][0]
            return attachment if attachment["thumbnailUrl"] is not None else None

        attachment = await until(thumbnailed, "the photo's thumbnail", timeout=30, every=0.2)
        response = await download(attachment["thumbnailUrl"])
        assert response.status_code == 200
        preview = Image.open(io.BytesIO(response.content))
        assert preview.format in {"WEBP", "JPEG"}
        assert max(preview.size) == 320
        assert preview.size[0] > preview.size[1]
        assert not preview.getexif()
        assert b"GPS" not in response.content
        assert b"PhoneMaker" not in response.content
        # A PDF gets none.
        report_id = await alice.upload("a.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(100))
        assert (await alice.send_files(direct, [report_id]))["attachments"][0]["thumbnailUrl"] is None


async def test_attaching_a_foreign_unuploaded_or_used_upload_is_refused_and_stores_nothing(files_api: Api) -> None:
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    bobs = await bob.upload("bob.png", "image/png", png())
    never_uploaded = (await alice.ticket("later.png", "image/png", 1000))["attachmentId"]
    mine = await alice.upload("mine.png", "image/png", png())
    await alice.send_files(direct, [mine], body="first")
    pending_before = len(await bob.pending())

    for ids in ([bobs], [str(never_uploaded)], [mine], ["999999999"], ["not-an-id"], [mine, mine]):
        assert await send_refusal(alice, direct, ids, body="again") == "BAD_USER_INPUT", ids
    assert len(await bob.pending()) == pending_before
    # Bob's upload is still his to send.
    assert (await bob.send_files(direct, [bobs]))["attachments"][0]["id"] == bobs


async def test_a_retried_send_with_attachments_returns_the_first_message(files_api: Api) -> None:
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    upload = await alice.upload("a.png", "image/png", png())
    first = await alice.send_files(direct, [upload], client_id="retry-1")
    again = await alice.send_files(direct, [upload], client_id="retry-1")
    assert again["id"] == first["id"]
    assert [a["id"] for a in again["attachments"]] == [upload]


async def test_a_renamed_executable_is_refused(files_api: Api) -> None:
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    for name, kind in (("cat.png", "image/png"), ("clip.mp4", "video/mp4"), ("notes.txt", "text/plain")):
        upload = await alice.upload(name, kind, ELF)
        assert await send_refusal(alice, direct, [upload]) == "BAD_USER_INPUT", kind


async def test_storage_that_ignores_the_policy_is_caught_at_send(
    production_s3_server: ThreadServer, s3_server: S3Server
) -> None:
    """moto stores whatever is posted; the send checks size and type itself."""
    api = Api(url=production_s3_server.url, ws_url=production_s3_server.ws_url, mode="production_s3")
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    big = await alice.ticket("a.png", "image/png", 10)
    assert (await post_form(big, "a.png", "image/png", png())).status_code in (200, 204)
    other = await alice.ticket("b.png", "image/png", 1000)
    forged = {
        **other,
        "fields": [f if f["name"] != "Content-Type" else {**f, "value": "text/html"} for f in other["fields"]],
    }
    assert (await post_form(forged, "b.png", "text/html", png())).status_code in (200, 204)
    for upload in (big, other):
        assert await send_refusal(alice, direct, [upload["attachmentId"]]) == "BAD_USER_INPUT"


async def test_the_local_backend_refuses_bad_uploads_and_stores_nothing(embedded_server: ThreadServer) -> None:
    api = Api(url=embedded_server.url, ws_url=embedded_server.ws_url, mode="embedded")
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    image = png()
    over = await alice.ticket("a.png", "image/png", len(image) - 1)
    assert (await post_form(over, "a.png", "image/png", image)).status_code == 400
    other_type = await alice.ticket("b.png", "image/png", 10_000)
    forged = [f if f["name"] != "Content-Type" else {**f, "value": "text/html"} for f in other_type["fields"]]
    assert (await post_form({**other_type, "fields": forged}, "b.html", "text/html", b"<script>")).status_code == 403
    tampered = await alice.ticket("c.png", "image/png", 10_000)
    fields = [
        f if f["name"] != "token" else {**f, "value": f["value"][:-2] + ("AA" if f["value"][-2:] != "AA" else "BB")}
        for f in tampered["fields"]
    ]
    assert (await post_form({**tampered, "fields": fields}, "c.png", "image/png", image)).status_code == 403
    for ticket in (over, other_type, tampered):
        assert await send_refusal(alice, direct, [ticket["attachmentId"]]) == "BAD_USER_INPUT"


async def test_an_expired_ticket_uploads_nothing(tmp_path: Path) -> None:
    clock = MovableClock()
    with ThreadServer(
        embedded_settings(tmp_path, files_dir=str(tmp_path / "files"), upload_ticket_seconds=1),
        Overrides(fast_password_hashing=True, now=clock.now),
    ) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="embedded")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        ticket = await alice.ticket("a.png", "image/png", 10_000)
        clock.advance(2)
        assert (await post_form(ticket, "a.png", "image/png", png())).status_code == 403
        assert await send_refusal(alice, direct, [ticket["attachmentId"]]) == "BAD_USER_INPUT"


async def test_create_upload_refuses_what_the_server_does_not_allow(files_api: Api) -> None:
    alice = await files_api.register("alice")
    for filename, kind, size in (
        ("a.exe", "application/x-msdownload", 100),
        ("a.html", "text/html", 100),
        ("a.png", "image/png", 0),
        ("a.png", "image/png", 100 * 1024 * 1024 + 1),
        ("", "image/png", 100),
        ("x" * 300 + ".png", "image/png", 100),
    ):
        error = await alice.http.error(
            "mutation U($input: CreateUploadInput!) { createUpload(input: $input) { attachmentId } }",
            input={"filename": filename, "contentType": kind, "size": size},
        )
        assert error.code == "BAD_USER_INPUT", (filename, kind, size)


async def test_a_removed_member_gets_no_url_for_the_groups_files(files_api: Api) -> None:
    alice, bob, carol = await files_api.people("alice", "bob", "carol")
    group = await alice.create_group(members=[bob, carol])
    await carol.drain()
    upload = await alice.upload("plan.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(64))
    await alice.send_files(group, [upload], body="the plan")
    await alice.data(
        "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { id } }",
        c=group,
        u=carol.user_id,
    )
    # Carol's device still holds the message from before her removal: it comes without its files.
    response = await carol.http.post(f"query {{ pendingEvents(first: 100) {{ {FILE_EVENTS} }} }}")
    messages = [e["message"] for e in response["data"]["pendingEvents"] if "message" in e]
    assert [m["body"] for m in messages] == ["the plan"]
    assert messages[0]["attachments"] == []
    assert "errors" not in response
    # Bob, still a member, gets one.
    attachment = [e for e in await pending_files(bob) if "message" in e][-1]["message"]["attachments"][0]
    assert (await download(attachment["url"])).status_code == 200


@pytest.fixture(params=["embedded", "production_s3"])
def files_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backends(request: pytest.FixtureRequest, files_mode: str) -> tuple[str, RedisTarget] | None:
    if files_mode == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@asynccontextmanager
async def file_server(
    tmp: Path,
    mode: str,
    backends: tuple[str, RedisTarget] | None,
    s3: S3Server,
    *,
    worker: bool = False,
    **changes: Any,
) -> AsyncIterator[Api]:
    """A server of its own (and in the production mode its `parley worker`, which makes thumbnails)."""
    if backends is None:
        with ThreadServer(embedded_settings(tmp, files_dir=str(tmp / "files"), **changes)) as server:
            yield Api(server.url, server.ws_url, mode)
        return
    postgres, target = backends
    settings = {**s3_settings(s3), **changes}
    with ThreadServer(production_settings(postgres, target, **settings)) as server:
        if not worker:
            yield Api(server.url, server.ws_url, mode)
            return
        env = {
            **suite_process_env(postgres, target),
            **{f"PARLEY_{name.upper()}": str(value) for name, value in settings.items()},
        }
        import sys  # noqa: PLC0415

        from tests.support.processes import ProcessServer  # noqa: PLC0415

        async with ProcessServer(
            env, log_path=tmp / "worker.log", command=[str(Path(sys.executable).parent / "parley"), "worker"]
        ):
            yield Api(server.url, server.ws_url, mode)


async def test_retention_deletes_the_files_of_delivered_messages_and_unattached_uploads(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    async with file_server(
        tmp_path,
        files_mode,
        backends,
        s3_server,
        file_retention_days=2 / 86400,
        unattached_upload_hours=2 / 3600,
        sweep_interval_seconds=0.3,
    ) as api:
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await bob.drain()
        upload = await alice.upload("a.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(64))
        never_sent = await alice.ticket("b.pdf", "application/pdf", 100)
        assert (await post_form(never_sent, "b.pdf", "application/pdf", b"%PDF-1.4\n")).status_code in (200, 204)
        await alice.send_files(direct, [upload])
        event = (await pending_files(bob))[-1]
        url = event["message"]["attachments"][0]["url"]
        await bob.acknowledge(event["cursor"])  # delivered everywhere: the message is deleted
        # Still downloadable right after delivery, gone once the (shortened) retention has passed.
        assert (await download(url)).status_code == 200
        await until(lambda: gone(url), "the retention run removing the file", timeout=30, every=0.3)
        # The never-attached upload is gone too: it can no longer be attached.
        assert await send_refusal(alice, direct, [never_sent["attachmentId"]]) == "BAD_USER_INPUT"


async def test_deleting_a_message_for_everyone_deletes_its_files_with_the_next_retention_run(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    # The default retention (30 days): only the delete can make the file go this soon.
    async with file_server(tmp_path, files_mode, backends, s3_server, sweep_interval_seconds=0.3) as api:
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await bob.drain()
        upload = await alice.upload("oops.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(64))
        sent = await alice.send_files(direct, [upload], body="not for you")
        url = sent["attachments"][0]["url"]
        assert (await download(url)).status_code == 200
        await alice.data("mutation D($m: ID!) { deleteMessage(messageId: $m) }", m=sent["id"])
        # Never delivered: bob gets the delete, not the message or its file.
        events = await pending_files(bob)
        assert [e for e in events if "message" in e] == []
        await until(lambda: gone(url), "the retention run removing the file", timeout=30, every=0.3)


# --- Review 2: what was checked is what is served; bounded thumbnails, uploads and metadata ---


def huge_png(side: int) -> bytes:
    """A black PNG of `side`x`side` pixels, a few dozen KiB on disk (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes((side + 1) * side), 9)  # a filter byte per row, all black
    chunks = ((b"IHDR", header), (b"IDAT", rows), (b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks
    )


async def stored_previews(api: Api, owner: Person, files_dir: Path, s3: S3Server) -> list[str]:
    """The previews stored for `owner`'s uploads (read in storage: a refused upload is nowhere in the API)."""
    if api.mode == "embedded":
        return sorted(path.name for path in (files_dir / owner.user_id).glob("*.preview"))
    session = aioboto3.Session(
        aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key, region_name=s3.region
    )
    async with session.client("s3", endpoint_url=s3.url) as client:
        listed = await client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{owner.user_id}/")
    return sorted(item["Key"] for item in listed.get("Contents", []) if item.get("Key", "").endswith(".preview"))


async def thumbnail_of(person: Person, attachment_id: str) -> str | None:
    """The thumbnail URL of an attachment among the person's pending messages."""
    for event in await pending_files(person):
        for attachment in event.get("message", {}).get("attachments", []):
            if attachment["id"] == attachment_id:
                url: str | None = attachment["thumbnailUrl"]
                return url
    raise AssertionError(f"attachment {attachment_id} is not among the pending messages")


async def previewed(sender: Person, recipient: Person, conversation_id: str) -> None:
    """Sends an image and waits for its thumbnail: every thumbnail job queued before it has run by then."""
    upload = await sender.upload("marker.png", "image/png", png())
    await sender.send_files(conversation_id, [upload])
    await until(lambda: thumbnail_of(recipient, upload), "the marker's thumbnail", timeout=60, every=0.1)


async def test_posting_an_upload_form_again_after_attaching_changes_nothing_recipients_download(
    files_api: Api,
) -> None:
    """Review 2, item 4: a ticket replayed with an ELF after the check: recipients still get the checked PNG."""
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    picture = png(80, 60)
    ticket = await alice.ticket("cat.png", "image/png", 10_000)
    assert (await post_form(ticket, "cat.png", "image/png", picture)).status_code in (200, 204)
    await alice.send_files(direct, [str(ticket["attachmentId"])], body="cat")

    replay = await post_form(ticket, "cat.png", "image/png", ELF)
    if files_api.mode != "production_s3":
        # The built-in storage refuses a second upload with one ticket (moto, like S3, takes it).
        assert replay.status_code == 403

    attachment = (await pending_files(bob))[-1]["message"]["attachments"][0]
    downloaded = await download(attachment["url"])
    assert downloaded.status_code == 200
    assert downloaded.content == picture


async def test_an_upload_whose_send_was_refused_gets_no_thumbnail(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    """Review 2, item 13: previews are made only of uploads a message carries."""
    async with file_server(tmp_path, files_mode, backends, s3_server, worker=True, thumbnail_poll_seconds=0.2) as api:
        alice, bob, carol = await api.people("alice", "bob", "carol")
        theirs = await bob.direct_with(carol)
        ours = await alice.direct_with(bob)
        refused = await alice.upload("photo.png", "image/png", png(640, 480))
        assert await send_refusal(alice, theirs, [refused]) == "NOT_FOUND"

        await previewed(alice, bob, ours)
        await previewed(alice, bob, ours)  # a second pass: the refused upload had every chance
        assert len(await stored_previews(api, alice, tmp_path / "files", s3_server)) == 2


async def test_an_image_with_too_many_pixels_gets_no_thumbnail(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    """Review 2, item 13: a 7000x7000 PNG of a few KiB is not decoded (the default pixel limit)."""
    async with file_server(tmp_path, files_mode, backends, s3_server, worker=True) as api:
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        bomb = huge_png(7000)
        assert len(bomb) < 200_000
        upload = await alice.upload("big.png", "image/png", bomb)
        await alice.send_files(direct, [upload])

        await previewed(alice, bob, direct)
        await previewed(alice, bob, direct)  # the big one was claimed and finished before these
        assert await thumbnail_of(bob, upload) is None
        assert len(await stored_previews(api, alice, tmp_path / "files", s3_server)) == 2


async def test_a_photo_downloads_without_its_location_but_upright(files_api: Api) -> None:
    """Review 2, item 17: EXIF GPS (and the rest of EXIF/XMP) is removed from originals; orientation stays."""
    alice, bob = await files_api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    photo = jpeg_with_gps(640, 480, orientation=6)
    upload = await alice.upload("where.jpg", "image/jpeg", photo)
    await alice.send_files(direct, [upload])

    attachment = (await pending_files(bob))[-1]["message"]["attachments"][0]
    downloaded = (await download(attachment["url"])).content
    assert attachment["size"] == len(downloaded) < len(photo)
    original = Image.open(io.BytesIO(photo))
    assert original.getexif().get_ifd(0x8825)  # the upload really had a position
    assert b"PhoneMaker" in photo
    picture = Image.open(io.BytesIO(downloaded))
    assert not picture.getexif().get_ifd(0x8825)
    assert dict(picture.getexif()) == {0x0112: 6}
    assert b"PhoneMaker" not in downloaded
    # The image data is untouched: the very same pixels.
    assert picture.tobytes() == original.tobytes()


async def test_a_photo_keeps_its_metadata_when_the_server_is_set_to_keep_it(tmp_path: Path) -> None:
    """Review 2, item 17: PARLEY_KEEP_IMAGE_METADATA serves originals as uploaded."""
    with ThreadServer(
        embedded_settings(tmp_path, files_dir=str(tmp_path / "files"), keep_image_metadata=True)
    ) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="embedded")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        photo = jpeg_with_gps(orientation=6)
        sent = await alice.send_files(direct, [await alice.upload("where.jpg", "image/jpeg", photo)])
        assert (await download(sent["attachments"][0]["url"])).content == photo


async def test_uploads_past_the_hourly_byte_quota_are_refused(
    tmp_path: Path, files_mode: str, backends: tuple[str, RedisTarget] | None, s3_server: S3Server
) -> None:
    """Review 2, item 16: declared sizes count against PARLEY_UPLOAD_BYTES_PER_HOUR, per user."""
    async with file_server(tmp_path, files_mode, backends, s3_server, upload_bytes_per_hour=1000) as api:
        alice, bob = await api.people("alice", "bob")
        upload = "mutation U($input: CreateUploadInput!) { createUpload(input: $input) { attachmentId } }"

        async def ask(person: Person, size: int) -> str:
            response = await person.http.post(
                upload, {"input": {"filename": "a.pdf", "contentType": "application/pdf", "size": size}}
            )
            return "ok" if "errors" not in response else str(response["errors"][0]["extensions"]["code"])

        assert await ask(alice, 600) == "ok"
        assert await ask(alice, 600) == "RATE_LIMITED"
        assert await ask(alice, 400) == "ok"  # a refused upload's bytes were not counted
        assert await ask(alice, 1) == "RATE_LIMITED"
        assert await ask(bob, 1000) == "ok"  # per user


async def trickle(port: int, head: bytes, *, timeout: float = 30) -> bytes:
    """Sends `head`, then one more byte of the announced body every 0.1 s, until the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    answer = await asyncio.wait_for(reader.read(4096), 0.1)
                except TimeoutError:
                    writer.write(b"x")  # a trickle: never idle, never done
                    await writer.drain()
                    continue
                return answer
    finally:
        writer.close()


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_trickled_request_body_is_cut_off_with_408(
    tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    """Review 2, item 16: bodies (GraphQL and uploads) must arrive within their deadline."""
    limits = {"request_body_timeout_seconds": 1, "upload_body_timeout_seconds": 1.5}
    if mode == "embedded":
        settings = embedded_settings(tmp_path, files_dir=str(tmp_path / "files"), **limits)
    else:
        postgres, target = request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")
        settings = production_settings(postgres, target, files_dir=str(tmp_path / "files"), **limits)
    with ThreadServer(settings) as server:
        for path, kind, start in (
            ("/graphql", "application/json", '{"query": "'),
            ("/uploads", "multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n'),
        ):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                f"Content-Length: 100000\r\n\r\n{start}"
            ).encode()
            answer = await trickle(server.port, head)
            assert answer.startswith(b"HTTP/1.1 408 "), (path, answer[:200])
        # A body sent at once is unaffected.
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{server.url}/graphql", json={"query": "{ __typename }"})
        assert response.json() == {"data": {"__typename": "Query"}}
