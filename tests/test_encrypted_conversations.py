"""End-to-end encrypted conversations: ciphertext only, one stored copy, and no plaintext anywhere downstream.

The clients here "encrypt" with an opaque stand-in (a keyed XOR, then base64): the server
must treat ciphertext as bytes it cannot read, so any transformation proves its part; the
real Olm/Megolm clients are tests/test_e2e.py's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from resolvers.webhook_endpoints import new_secret
from tests.support.database_dump import dump_all_tables
from tests.support.helpers import Api, Person, post_form
from tests.support.hook_server import HOOK_SECRET, HookServer
from tests.support.push_fakes import PushEndpoint
from tests.support.push_rig import pushes_before_marker, rig, subscribe
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings
from tests.support.streams import next_of
from tests.support.waiting import until
from tests.support.webhook_receiver import WebhookReceiver

MESSAGE = "id body ciphertext replyToId sender { id } attachments { id contentType size thumbnailUrl }"
SEND = f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE} }} }}"
GROUP = (
    "mutation G($t: String!, $m: [ID!]!, $e: Boolean) "
    "{ createGroup(title: $t, memberIds: $m, encrypted: $e) { id encrypted } }"
)
DIRECT = "mutation D($u: ID!, $e: Boolean) { startDirectConversation(userId: $u, encrypted: $e) { id encrypted } }"
EDIT = "mutation E($m: ID!, $b: String, $c: String) { editMessage(messageId: $m, body: $b, ciphertext: $c) }"
REACT = "mutation R($m: ID!, $e: String!) { react(messageId: $m, emoji: $e) }"
DELETE = "mutation X($m: ID!) { deleteMessage(messageId: $m) }"
PENDING = f"""query P {{ pendingEvents(first: 500) {{
  __typename
  ... on MessageEvent {{ cursor message {{ {MESSAGE} }} }}
  ... on MessageEditedEvent {{ cursor messageId body ciphertext }}
  ... on MessageDeletedEvent {{ cursor messageId }}
  ... on ReactionEvent {{ cursor messageId emoji }}
}} }}"""
LIVE = f"subscription {{ events {{ __typename ... on MessageEvent {{ cursor message {{ {MESSAGE} }} }} }} }}"
UPLOAD = (
    "mutation U($input: CreateUploadInput!) { createUpload(input: $input) "
    "{ attachmentId url expiresAt fields { name value } } }"
)
KEY = os.urandom(32)


def seal(plaintext: str) -> str:
    """The test clients' opaque "encryption": bytes the server cannot read, in base64 (unpadded, as Olm writes)."""
    data = plaintext.encode()
    stream = hashlib.shake_256(KEY).digest(len(data))
    return base64.b64encode(bytes(a ^ b for a, b in zip(data, stream, strict=True))).decode().rstrip("=")


def unseal(ciphertext: str) -> str:
    data = base64.b64decode(ciphertext + "=" * (-len(ciphertext) % 4))
    stream = hashlib.shake_256(KEY).digest(len(data))
    return bytes(a ^ b for a, b in zip(data, stream, strict=True)).decode()


def marker() -> str:
    return f"secret-{uuid.uuid4().hex}"


async def encrypted_group(owner: Person, members: list[Person], title: str = "private") -> str:
    data = await owner.data(GROUP, t=title, m=[m.user_id for m in members], e=True)
    assert data["createGroup"]["encrypted"] is True
    return str(data["createGroup"]["id"])


async def send(person: Person, conversation: str, **fields: object) -> dict[str, object]:
    data = await person.data(SEND, input={"conversationId": conversation, "clientId": uuid.uuid4().hex, **fields})
    message: dict[str, object] = data["sendMessage"]
    return message


async def refused(person: Person, conversation: str, **fields: object) -> str:
    return await person.error(SEND, input={"conversationId": conversation, "clientId": uuid.uuid4().hex, **fields})


async def messages_of(person: Person) -> list[dict[str, object]]:
    return [e["message"] for e in (await person.data(PENDING))["pendingEvents"] if e["__typename"] == "MessageEvent"]


async def test_plaintext_is_refused_where_encrypted_and_ciphertext_where_not(api: Api) -> None:
    """An encrypted conversation refuses a body (with or without ciphertext) and a plaintext one refuses
    ciphertext, each BAD_USER_INPUT with nothing delivered; malformed or oversized ciphertext is refused too."""
    alice, bob = await api.people("alice", "bob")
    secret = await encrypted_group(alice, [bob])
    plain = await alice.create_group("plain", members=[bob])
    await bob.drain()
    assert await refused(alice, secret, body="hello in the clear") == "BAD_USER_INPUT"
    assert await refused(alice, secret, body="both", ciphertext=seal("both")) == "BAD_USER_INPUT"
    assert await refused(alice, plain, ciphertext=seal("hidden")) == "BAD_USER_INPUT"
    assert await refused(alice, secret, ciphertext="not base64!") == "BAD_USER_INPUT"
    assert await refused(alice, secret, ciphertext="A" * 65537) == "BAD_USER_INPUT"
    assert await messages_of(bob) == []
    # The same conversations take the right kind.
    assert (await send(alice, secret, ciphertext=seal("ok")))["body"] is None
    assert (await send(alice, plain, body="ok"))["ciphertext"] is None
    assert len(await messages_of(bob)) == 2


async def test_encrypted_direct_conversation_is_another_one_of_the_pair(api: Api) -> None:
    """startDirectConversation(encrypted: true) gives the pair's encrypted conversation: not the plaintext
    one, the same one again when asked again, and encrypted for both."""
    alice, bob = await api.people("alice", "bob")
    plain = (await alice.data(DIRECT, u=bob.user_id, e=False))["startDirectConversation"]
    secret = (await alice.data(DIRECT, u=bob.user_id, e=True))["startDirectConversation"]
    again = (await bob.data(DIRECT, u=alice.user_id, e=True))["startDirectConversation"]
    assert plain["encrypted"] is False
    assert secret["encrypted"] is True
    assert secret["id"] != plain["id"]
    assert again == secret


async def test_ciphertext_reaches_every_device_and_the_lifecycle_keeps_working(api: Api) -> None:
    """Each member's devices get the ciphertext as sent (live and on replay); replies, ciphertext edits,
    reactions and deletes work; a plaintext edit is refused."""
    alice, bob = await api.people("alice", "bob")
    alice_laptop, bob_laptop = await alice.other_device("laptop"), await bob.other_device("laptop")
    group = await encrypted_group(alice, [bob])
    for device in (alice, alice_laptop, bob, bob_laptop):
        await device.drain()
    words = marker()
    async with bob.socket() as socket:
        live = await socket.subscribe(LIVE)
        sent = await send(alice, group, ciphertext=seal(words))
        event = await next_of(live, "MessageEvent")
    assert event["message"]["ciphertext"] == sent["ciphertext"]
    for device in (alice_laptop, bob, bob_laptop):
        [message] = await messages_of(device)
        assert message["body"] is None
        assert unseal(str(message["ciphertext"])) == words

    reply = await send(bob, group, ciphertext=seal("re: " + words), replyToId=sent["id"])
    assert reply["replyToId"] == sent["id"]
    assert await alice.error(EDIT, m=sent["id"], b="edited in the clear") == "BAD_USER_INPUT"
    assert (await alice.data(EDIT, m=sent["id"], c=seal("edited")))["editMessage"] is True
    assert (await bob.data(REACT, m=sent["id"], e="👍"))["react"] is True
    events = (await bob_laptop.data(PENDING))["pendingEvents"]
    edits = [e for e in events if e["__typename"] == "MessageEditedEvent"]
    assert [(e["body"], unseal(e["ciphertext"])) for e in edits] == [(None, "edited")]
    assert [e["emoji"] for e in events if e["__typename"] == "ReactionEvent"] == ["👍"]
    assert (await alice.data(DELETE, m=sent["id"]))["deleteMessage"] is True
    events = (await bob_laptop.data(PENDING))["pendingEvents"]
    assert [e["messageId"] for e in events if e["__typename"] == "MessageDeletedEvent"] == [sent["id"]]
    # The pending copy and edit lost their ciphertext with the delete.
    assert [e["ciphertext"] for e in events if e["__typename"] == "MessageEditedEvent"] == [None]
    assert [m["id"] for m in await messages_of(bob_laptop)] == [reply["id"]]


async def test_a_hundred_member_group_message_is_stored_once(api: Api, request: pytest.FixtureRequest) -> None:
    """An encrypted message to 100 members is one stored ciphertext (one messages row), not one per member
    or device, and every member has it pending."""
    owner = await api.register("owner")
    others = await asyncio.gather(*(api.register(f"e{i}") for i in range(99)))
    group = await encrypted_group(owner, list(others), "hundred")
    sealed = seal(marker())
    await send(owner, group, ciphertext=sealed)
    server: ThreadServer = request.getfixturevalue(f"{api.mode}_server")
    engine = create_async_engine(server.settings.database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.scalar(text("SELECT count(*) FROM messages WHERE ciphertext = :c"), {"c": sealed})
    finally:
        await engine.dispose()
    assert rows == 1
    pending = await asyncio.gather(*(messages_of(person) for person in others))
    assert all([m["ciphertext"] for m in messages] == [sealed] for messages in pending)


async def test_the_database_and_redis_hold_no_plaintext(api: Api, request: pytest.FixtureRequest) -> None:
    """While a message of an encrypted conversation is pending, no table holds its plaintext; in the
    production mode Redis sees the ciphertext (the entry notice) and never the plaintext."""
    alice, bob = await api.people("alice", "bob")
    group = await encrypted_group(alice, [bob])
    words = marker()
    sealed = seal(words)
    seen: list[str] = []
    watcher: asyncio.Task[None] | None = None
    redis: Redis | None = None
    if api.mode == "production":
        target: RedisTarget = request.getfixturevalue("redis_target")
        redis = Redis.from_url(target.url)
        entered = asyncio.Event()

        async def watch() -> None:
            assert redis is not None
            async with redis.monitor() as monitor:
                entered.set()
                async for command in monitor.listen():
                    seen.append(str(command.get("command", "")))

        watcher = asyncio.create_task(watch())
        await entered.wait()
    try:
        await send(alice, group, ciphertext=sealed)
        await alice.data(EDIT, m=(await send(alice, group, ciphertext=seal("x")))["id"], c=seal(words + " edited"))
        if watcher is not None:
            await until(lambda: any(sealed in command for command in seen), "the notice on Redis")
            # The suite's Redis is shared: what concerns this test names its marker or its ciphertext.
            assert not any(words in command for command in seen)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if redis is not None:
            await redis.aclose()
    dump = await dump_all_tables(api, request)
    assert sealed in dump  # the dump does read the pending message
    assert words not in dump


async def test_encrypted_attachments_are_opaque_blobs(api: Api) -> None:
    """An upload made for an encrypted conversation is stored as application/octet-stream whatever it
    claims, unchecked and without a thumbnail; an encrypted conversation takes only such uploads, and a
    plaintext one refuses them."""
    alice, bob = await api.people("alice", "bob")
    secret = await encrypted_group(alice, [bob])
    plain = await alice.create_group("plain", members=[bob])
    blob = os.urandom(2048)  # what an encrypted photo looks like: not a JPEG at all

    async def upload(*, encrypted: bool) -> str:
        content_type = "application/octet-stream" if encrypted else "text/plain"
        data = blob if encrypted else b"plain words"
        fields = {"filename": "photo.jpg", "contentType": "image/jpeg", "size": len(data), "encrypted": encrypted}
        if not encrypted:
            fields |= {"filename": "note.txt", "contentType": content_type}
        ticket = (await alice.data(UPLOAD, input=fields))["createUpload"]
        response = await post_form(ticket, str(fields["filename"]), content_type, data)
        assert response.status_code in (200, 201, 204), response.text
        return str(ticket["attachmentId"])

    opaque = await upload(encrypted=True)
    sent = await send(alice, secret, ciphertext=seal("a photo"), attachmentIds=[opaque])
    attachments = sent["attachments"]
    assert isinstance(attachments, list)
    [attachment] = attachments
    assert attachment["contentType"] == "application/octet-stream"
    assert attachment["size"] == len(blob)
    assert attachment["thumbnailUrl"] is None
    assert await refused(alice, plain, body="file", attachmentIds=[await upload(encrypted=True)]) == "BAD_USER_INPUT"
    plain_upload = await upload(encrypted=False)
    assert await refused(alice, secret, ciphertext=seal("file"), attachmentIds=[plain_upload]) == "BAD_USER_INPUT"


@pytest.fixture
def endpoint() -> Iterator[PushEndpoint]:
    with PushEndpoint() as server:
        yield server


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> tuple[str, RedisTarget] | None:
    """PostgreSQL and Redis for the production mode's push rig; nothing for the embedded one."""
    if request.node.callspec.params["mode"] == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_pushes_carry_no_content(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    """Even where bodies may be pushed, an encrypted conversation's push says only that there is a new
    message and which: no text, no ciphertext."""
    async with rig(tmp_path, backends, settings={"push_include_body": True}) as setup:
        alice, bob = await setup.api.people("alice", "bob")
        subscription = await subscribe(bob, endpoint)
        group = await encrypted_group(alice, [bob])
        words = marker()
        sent = await send(alice, group, ciphertext=seal(words))
        pushes = await pushes_before_marker(setup, endpoint, alice)
    [push] = [p for p in pushes if p.path == f"/push/{bob.username}"]
    content = subscription.decrypt(push.body)
    assert content == {
        "type": "message",
        "conversationId": group,
        "messageId": sent["id"],
        "sender": alice.username,
        "count": 1,
    }


async def test_webhooks_carry_no_content(tmp_path: Path) -> None:
    """Even where bodies may go to webhooks, an encrypted conversation's message.sent and message.edited
    events carry ids and counts only."""
    secret = new_secret()
    async with WebhookReceiver(secret) as receiver:
        hooks = json.dumps([{"url": receiver.url, "secret": secret, "events": ["message.sent", "message.edited"]}])
        settings = embedded_settings(
            tmp_path, webhooks=hooks, webhook_allow_private_endpoints=True, webhook_include_body=True
        )
        with ThreadServer(settings) as server:
            api = Api(server.url, server.ws_url, "embedded")
            alice, bob = await api.people("alice", "bob")
            group = await encrypted_group(alice, [bob])
            words = marker()
            sealed = seal(words)
            sent = await send(alice, group, ciphertext=sealed)
            await alice.data(EDIT, m=sent["id"], c=seal(words + " edited"))
            await until(lambda: len(receiver.delivered()) >= 2, "the two webhook events")
    events = [d.event for d in receiver.delivered()]
    assert sorted(e["type"] for e in events) == ["message.edited", "message.sent"]
    for delivery in receiver.delivered():
        assert words.encode() not in delivery.body
        assert sealed.encode() not in delivery.body
        assert "body" not in delivery.event["data"]


async def test_the_before_send_hook_is_not_asked_about_encrypted_sends(tmp_path: Path) -> None:
    """The hook never sees an encrypted conversation's messages: a ciphertext send is not put to it, and a
    body sent there is refused before the hook is asked; plaintext conversations are still screened."""
    with HookServer() as hook:
        settings = embedded_settings(tmp_path, hook_before_send_url=hook.url, hook_secret=HOOK_SECRET)
        with ThreadServer(settings) as server:
            api = Api(server.url, server.ws_url, "embedded")
            alice, bob = await api.people("alice", "bob")
            secret = await encrypted_group(alice, [bob])
            plain = await alice.create_group("plain", members=[bob])
            words = marker()
            await send(alice, secret, ciphertext=seal(words))
            assert await refused(alice, secret, body=words) == "BAD_USER_INPUT"
            assert hook.calls == []
            await send(alice, plain, body="screened")
            assert [call.data["body"] for call in hook.calls] == ["screened"]
