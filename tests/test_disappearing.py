"""Disappearing messages: the conversation timer, and a message that expires before it is fetched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from infra.app import Overrides
from infra.migrate import migrate
from tests.support.client import Json
from tests.support.clock import MovableClock
from tests.support.database_dump import dump_settings_tables
from tests.support.helpers import ATTACHMENT_FIELDS, MESSAGE_FIELDS, Api, Person
from tests.support.push_fakes import PUSH_SETTINGS, REGISTER_PUSH, PushEndpoint, Subscription, b64url
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import before_marker, bodies
from tests.support.waiting import until

TIMER = (
    "mutation T($c: ID!, $s: Int) { setDisappearingTimer(conversationId: $c, seconds: $s) "
    "{ id disappearAfterSeconds } }"
)
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
TIMED_FIELDS = f"{MESSAGE_FIELDS} expiresAt attachments {{ {ATTACHMENT_FIELDS} }}"
PENDING = f"""query P {{ pendingEvents(first: 100) {{
  __typename
  ... on MessageEvent {{ cursor message {{ {TIMED_FIELDS} }} }}
  ... on ConversationEvent {{ cursor change actor {{ id }} conversation {{ id disappearAfterSeconds }} }}
  ... on ReceiptEvent {{ cursor }}
}} }}"""
SEND = f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {TIMED_FIELDS} }} }}"
EDIT = "mutation E($m: ID!, $b: String!) { editMessage(messageId: $m, body: $b) }"
REACT = "mutation R($m: ID!, $e: String!) { react(messageId: $m, emoji: $e) }"
MINUTE = 60


async def pending(person: Person) -> list[Json]:
    events: list[Json] = (await person.data(PENDING))["pendingEvents"]
    return events


async def send(person: Person, conversation: str, body: str, attachments: list[str] | None = None) -> dict[str, str]:
    data = await person.data(
        SEND,
        input={
            "conversationId": conversation,
            "clientId": uuid.uuid4().hex,
            "body": body,
            "attachmentIds": attachments or [],
        },
    )
    message: dict[str, str] = data["sendMessage"]
    return message


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_who_may_set_the_timer_its_bounds_and_the_event_members_get(api: Api) -> None:
    """Either member of a direct chat and a group's owner or admin set it; members are told; earlier messages keep theirs."""
    alice, bob, carol, dave = await api.people("alice", "bob", "carol", "dave")
    direct = await alice.direct_with(bob)
    before = await send(alice, direct, "before the timer")
    await alice.drain()
    await bob.drain()

    changed = await bob.data(TIMER, c=direct, s=MINUTE)
    assert changed["setDisappearingTimer"] == {"id": direct, "disappearAfterSeconds": MINUTE}
    for member in (alice, bob):
        [event] = [e for e in await pending(member) if e["__typename"] == "ConversationEvent"]
        assert event["change"] == "DISAPPEARING_TIMER_CHANGED"
        assert event["actor"] == {"id": bob.user_id}
        assert event["conversation"] == {"id": direct, "disappearAfterSeconds": MINUTE}
    # Setting what it already is changes nothing, and tells nobody.
    await alice.drain()
    await alice.data(TIMER, c=direct, s=MINUTE)
    assert await pending(alice) == []

    during = await send(alice, direct, "while it is on")
    assert when(during["expiresAt"]) - when(during["sentAt"]) == timedelta(seconds=MINUTE)
    for seconds in (1, 29, 90 * 86400 + 1, -5):
        assert await alice.error(TIMER, c=direct, s=seconds) == "BAD_USER_INPUT"
    assert await carol.error(TIMER, c=direct, s=MINUTE) == "NOT_FOUND"

    off = await alice.data(TIMER, c=direct, s=None)
    assert off["setDisappearingTimer"]["disappearAfterSeconds"] is None
    after = await send(alice, direct, "after it was turned off")
    assert after["expiresAt"] is None
    # What bob holds: each message with the expiry it was sent with.
    expiries = {
        e["message"]["body"]: e["message"]["expiresAt"] for e in await pending(bob) if e["__typename"] == "MessageEvent"
    }
    assert expiries == {"while it is on": during["expiresAt"], "after it was turned off": None}
    assert before["expiresAt"] is None

    group = await alice.create_group(members=[bob, carol])
    assert await bob.error(TIMER, c=group, s=MINUTE) == "FORBIDDEN"
    assert await dave.error(TIMER, c=group, s=MINUTE) == "NOT_FOUND"
    await alice.data(ROLE, c=group, u=bob.user_id, r="ADMIN")
    assert (await bob.data(TIMER, c=group, s=3600))["setDisappearingTimer"]["disappearAfterSeconds"] == 3600
    changes = [e["change"] for e in await pending(carol) if e["__typename"] == "ConversationEvent"]
    assert changes[-1] == "DISAPPEARING_TIMER_CHANGED"
    listed = await carol.data("query C($id: ID!) { conversation(id: $id) { disappearAfterSeconds } }", id=group)
    assert listed["conversation"]["disappearAfterSeconds"] == 3600


@pytest.fixture(params=["embedded", "production"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backends(mode: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, RedisTarget] | None]:
    """A migrated PostgreSQL database of this test's own (its server sweeps on a moved clock), and Redis."""
    if mode == "embedded":
        yield None
        return
    url: str = request.getfixturevalue("empty_postgres_url")
    asyncio.run(migrate(url))
    yield url, request.getfixturevalue("redis_target")


@asynccontextmanager
async def clocked_server(
    tmp: Path, backends: tuple[str, RedisTarget] | None, clock: MovableClock, **changes: object
) -> AsyncIterator[tuple[Api, ThreadServer]]:
    """A server of its own whose expiry clock the test moves, with files in `tmp/files`."""
    settings = {"files_dir": str(tmp / "files"), **changes}
    if backends is None:
        config = embedded_settings(tmp, **settings)
    else:
        postgres, target = backends
        config = production_settings(
            postgres, RedisTarget(target.url, f"{target.prefix}{uuid.uuid4().hex[:8]}:"), **settings
        )
    with ThreadServer(config, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        yield Api(server.url, server.ws_url, "embedded" if backends is None else "production"), server


async def test_a_message_expired_before_it_is_fetched_is_neither_replayed_nor_streamed(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None
) -> None:
    """Past its expiry a pending message reaches no device, by pull, by replay or live (no sweep runs here)."""
    clock = MovableClock()
    async with clocked_server(tmp_path, backends, clock, expiry_sweep_interval_seconds=3600) as (api, _server):
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        group = await alice.create_group(members=[bob])
        await alice.data(TIMER, c=direct, s=MINUTE)
        await bob.drain()
        waiting = await send(alice, direct, "pending when it expired")
        clock.advance(MINUTE + 1)

        assert [e["message"]["body"] for e in await pending(bob) if "message" in e] == []
        async with bob.events() as stream:
            assert bodies(await before_marker(stream, alice, group)) == []
            # Expired on arrival (the server's clock is past it): the live notice is dropped too.
            await send(alice, direct, "expired when it arrived")
            assert bodies(await before_marker(stream, alice, group)) == []
        assert [e["message"]["body"] for e in await pending(bob) if "message" in e] == ["marker", "marker"]
        # The sender's own copy carried its expiry: their app deletes it then.
        assert waiting["expiresAt"] is not None
        # Gone for everyone before the sweep runs: an edit would carry new text to the devices.
        assert await alice.error(EDIT, m=waiting["id"], b="new text after expiry") == "NOT_FOUND"
        assert await alice.error(REACT, m=waiting["id"], e="👍") == "NOT_FOUND"


async def test_at_expiry_the_server_removes_the_message_its_files_and_entries(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None
) -> None:
    """After expiry a dump holds no trace of the body, the attachment's object is gone, and acks still work."""
    clock = MovableClock()
    async with clocked_server(tmp_path, backends, clock, expiry_sweep_interval_seconds=0.2) as (api, server):
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await alice.data(TIMER, c=direct, s=MINUTE)
        await bob.drain()
        secret = f"self-destructing {uuid.uuid4().hex}"
        upload = await alice.upload("plan.pdf", "application/pdf", b"%PDF-1.4\n" + secret.encode())
        sent = await send(alice, direct, secret, [upload])
        await alice.data(EDIT, m=sent["id"], b=f"{secret} (edited)")
        files = tmp_path / "files"
        assert secret in await dump_settings_tables(server.settings)
        assert any(path.is_file() for path in files.rglob("*"))

        clock.advance(MINUTE + 1)

        async def removed() -> bool:
            return secret not in await dump_settings_tables(server.settings)

        await until(removed, "the expiry sweep removing the message and its edit")
        await until(lambda: not any(path.is_file() for path in files.rglob("*")), "the attachment's objects deleted")
        # Its send's record remembers it as gone: nothing can be edited back into the inboxes.
        assert await alice.error(EDIT, m=sent["id"], b="resurrected") == "NOT_FOUND"
        # Its inbox entries went with it: bob's inbox has a gap, which acknowledging passes over.
        assert await pending(bob) == []
        await alice.data(TIMER, c=direct, s=None)
        later = await alice.send(direct, "this one stays")
        events = await pending(bob)
        assert [e["message"]["id"] for e in events if "message" in e] == [later["id"]]
        await bob.acknowledge(str(events[-1]["cursor"]))
        assert await pending(bob) == []


async def test_no_push_goes_out_for_a_message_expired_before_its_notification(tmp_path: Path) -> None:
    """The push worker skips a disappearing message whose expiry passed while its job waited."""
    clock = MovableClock()
    settings = embedded_settings(tmp_path, **{**PUSH_SETTINGS, "push_coalesce_seconds": 1.0})
    with (
        PushEndpoint() as endpoint,
        ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server,
    ):
        api = Api(server.url, server.ws_url, "embedded")
        alice, bob, carol = await api.people("alice", "bob", "carol")
        for person in (bob, carol):
            keys = Subscription()
            await person.data(
                REGISTER_PUSH,
                input={
                    "platform": "WEBPUSH",
                    "endpoint": endpoint.url(person.username),
                    "p256dh": keys.p256dh,
                    "auth": b64url(keys.auth),
                },
            )
        direct = await alice.direct_with(bob)
        await alice.data(TIMER, c=direct, s=MINUTE)
        await alice.send(direct, "gone before the push")
        clock.advance(MINUTE + 1)
        # Queued after the expired message's job, and waiting out the same window: by its push, that job has run.
        await alice.send(await alice.direct_with(carol), "for carol")
        await endpoint.wait_for(1)
        assert [r.path for r in endpoint.received] == [f"/push/{carol.username}"]
