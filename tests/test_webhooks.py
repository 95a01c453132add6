"""Outgoing webhooks: signed with Standard Webhooks, at least once through outages, never slowing sends.

A local receiver (tests/support/webhook_receiver.py) verifies every delivery with the
`standardwebhooks` library. The production mode runs `parley worker` as a process; retry
delays are made small so that an outage costs the test little wall time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from infra.app import Overrides
from resolvers import webhooks
from resolvers.errors import BadUserInput
from resolvers.ids import MessageIds, MessageRef
from resolvers.outbound import check_url
from resolvers.ports import WebhookJob
from resolvers.services import Services
from resolvers.webhook_endpoints import Endpoint, EndpointDirectory, Webhooks, new_secret
from tests.support.helpers import Api, Person
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.waiting import until
from tests.support.webhook_receiver import WebhookReceiver

T = TypeVar("T")

# Retries in tenths of a second: an outage of many attempts takes the test a few seconds.
FAST_RETRIES: dict[str, object] = {
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.3,
    "webhook_max_attempts": 100,
    "webhook_refresh_seconds": 0.2,
    "webhook_claim_idle_seconds": 5,
}
EDIT = "mutation E($m: ID!, $b: String!) { editMessage(messageId: $m, body: $b) }"
REACT = "mutation R($m: ID!, $e: String!) { react(messageId: $m, emoji: $e) }"
DELETE = "mutation D($m: ID!) { deleteMessage(messageId: $m) }"
RENAME = "mutation N($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { id } }"


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> tuple[str, RedisTarget] | None:
    """PostgreSQL and Redis for tests of the production mode (a test's `mode`, else production)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("mode") == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@dataclass
class Rig:
    """A server (and `parley worker` in the production mode), and a way to run code on the server's loop."""

    api: Api
    redis: Redis | None
    prefix: str
    captured: dict[str, Any]

    @property
    def services(self) -> Services:
        return cast("Services", self.captured["services"])

    async def on_server(self, work: Coroutine[Any, Any, T]) -> T:
        """Runs `work` on the server's event loop (its database connections live there)."""
        loop: asyncio.AbstractEventLoop = self.captured["loop"]
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))

    async def dead_reasons(self) -> list[str]:
        assert self.redis is not None
        entries: Any = await self.redis.xrange(f"{self.prefix}webhooks:dead")
        return [fields[b"reason"].decode() for _id, fields in entries]


def hooks_json(*endpoints: tuple[str, str, list[str]]) -> str:
    return json.dumps([{"url": url, "secret": secret, "events": events} for url, secret, events in endpoints])


@asynccontextmanager
async def rig(
    tmp: Path, backends: tuple[str, RedisTarget] | None, hooks: str | None, **settings: object
) -> AsyncIterator[Rig]:
    """A server with these webhook endpoints; in the production mode, with its `parley worker` process."""
    values: dict[str, object] = {
        **FAST_RETRIES,
        "webhook_allow_private_endpoints": True,
        **settings,
        **({"webhooks": hooks} if hooks else {}),
    }
    captured: dict[str, Any] = {}

    def capture(services: Services) -> Services:
        captured.update(services=services, loop=asyncio.get_running_loop())
        return services

    overrides = Overrides(wrap=capture, fast_password_hashing=True)
    if backends is None:
        with ThreadServer(embedded_settings(tmp, **values), overrides) as server:
            yield Rig(Api(server.url, server.ws_url, "embedded"), None, "", captured)
        return
    postgres, target = backends
    prefix = f"{target.prefix}hooks-{uuid.uuid4().hex[:8]}:"
    location = RedisTarget(target.url, prefix)
    env = {
        **suite_process_env(postgres, location),
        **{f"PARLEY_{name.upper()}": str(value) for name, value in values.items()},
        "PARLEY_LOG_LEVEL": "INFO",
    }
    redis = Redis.from_url(target.url)
    try:
        with ThreadServer(production_settings(postgres, location, **values), overrides) as server:
            worker = ProcessServer(
                env,
                log_path=tmp / "worker.log",
                command=[str(Path(sys.executable).parent / "parley"), "worker"],
            )
            async with worker:
                yield Rig(Api(server.url, server.ws_url, "production"), redis, prefix, captured)
    finally:
        await redis.aclose()


async def activity(api: Api) -> tuple[Person, Person, str, dict[str, Any]]:
    """Registers two people and has them do one of each thing a webhook reports; the ids the API gave."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    message = await alice.send(direct, "first")
    await bob.data(REACT, m=message["id"], e="👍")
    await alice.data(EDIT, m=message["id"], b="first, edited")
    await alice.data(DELETE, m=message["id"])
    group = await alice.create_group("plans", members=[bob])
    await alice.data(RENAME, c=group, t="better plans")
    return alice, bob, direct, {"message": message["id"], "group": group}


MUTE_MEMBER = "mutation M($c: ID!, $u: ID!) { muteMember(conversationId: $c, userId: $u) }"
BAN_MEMBER = "mutation B($c: ID!, $u: ID!) { banMember(conversationId: $c, userId: $u) }"
EXPECTED = sorted(
    [
        "user.registered",
        "user.registered",
        "conversation.created",
        "message.sent",
        "reaction.added",
        "message.edited",
        "message.deleted",
        "conversation.created",
        "conversation.changed",
    ]
)


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_each_event_arrives_once_signed_after_a_receiver_outage(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None
) -> None:
    """While the receiver answers 503 nothing is lost: once it is back, each event is accepted exactly once."""
    secret = new_secret()
    async with (
        WebhookReceiver(secret, failing_status=503) as receiver,
        rig(tmp_path, backends, hooks_json((receiver.url, secret, ["*"]))) as setup,
    ):
        alice, bob, direct, ids = await activity(setup.api)

        # The endpoint's lane retries as many as it may hold at once; the others wait their turn.
        await until(lambda: len(receiver.attempts) >= 20, "the receiver to refuse deliveries a while", timeout=60)
        assert all(attempt.verified for attempt in receiver.attempts)
        receiver.failing_status = None
        await until(lambda: len(receiver.delivered()) >= len(EXPECTED), "the events after the outage", timeout=60)

        accepted = receiver.delivered()
        assert sorted(receiver.accepted_types()) == EXPECTED
        assert len({d.id for d in accepted}) == len(accepted)  # each event once
        sent = next(d.event["data"] for d in accepted if d.event["type"] == "message.sent")
        assert sent == {
            "message_id": ids["message"],
            "conversation_id": direct,
            "sender_id": alice.user_id,
            "mention_ids": [],
            "attachment_count": 0,
            "sent_at": sent["sent_at"],
        }  # no body: PARLEY_WEBHOOK_INCLUDE_BODY is off
        reaction = next(d.event["data"] for d in accepted if d.event["type"] == "reaction.added")
        assert reaction["user_id"] == bob.user_id
        assert reaction["emoji"] == "👍"
        renamed = next(d.event["data"] for d in accepted if d.event["type"] == "conversation.changed")
        assert renamed["conversation_id"] == ids["group"]
        assert renamed["change"] == "RENAMED"


async def test_a_tampered_body_or_a_wrong_secret_fails_verification(tmp_path: Path) -> None:
    """A receiver holding the secret can tell a forged or altered delivery from a real one."""
    secret = new_secret()
    async with (
        WebhookReceiver(secret) as receiver,
        rig(tmp_path, None, hooks_json((receiver.url, secret, ["user.registered"]))) as setup,
    ):
        await setup.api.people("carol")
        [delivery] = await until(lambda: receiver.delivered() or None, "the registration's webhook")
    assert delivery.event["type"] == "user.registered"
    assert Webhook(secret).verify(delivery.body, delivery.headers)["data"]["username"].startswith("carol")
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(delivery.body, delivery.headers)
    tampered = delivery.body.replace(b"carol", b"mallory")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, delivery.headers)


async def test_moderators_bans_and_mutes_are_reported(tmp_path: Path) -> None:
    """An integration hears who banned or muted whom, where and until when."""
    secret = new_secret()
    async with (
        WebhookReceiver(secret) as receiver,
        rig(tmp_path, None, hooks_json((receiver.url, secret, ["member.banned", "member.muted"]))) as setup,
    ):
        owner, loud, troll = await setup.api.people("owner", "loud", "troll")
        group = await owner.create_group("calm", members=[loud, troll])
        await owner.data(MUTE_MEMBER, c=group, u=loud.user_id)
        await owner.data(BAN_MEMBER, c=group, u=troll.user_id)
        deliveries = await until(lambda: receiver.delivered() if len(receiver.delivered()) >= 2 else None, "both")
    events = {d.event["type"]: d.event["data"] for d in deliveries}
    assert events["member.muted"] == {
        "conversation_id": group,
        "user_id": loud.user_id,
        "actor_id": owner.user_id,
        "until": None,
    }
    assert events["member.banned"]["user_id"] == troll.user_id
    assert events["member.banned"]["actor_id"] == owner.user_id


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_slow_receiver_slows_neither_sends_nor_other_endpoints(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None
) -> None:
    """Sends complete while a receiver holds its requests, and another endpoint gets every event meanwhile."""
    slow_secret, fast_secret = new_secret(), new_secret()
    async with (
        WebhookReceiver(slow_secret, hold=asyncio.Event()) as slow,
        WebhookReceiver(fast_secret) as fast,
    ):
        hooks = hooks_json((slow.url, slow_secret, ["message.sent"]), (fast.url, fast_secret, ["message.sent"]))
        async with rig(tmp_path, backends, hooks, webhook_request_timeout_seconds=60) as setup:
            alice, bob = await setup.api.people("alice", "bob")
            direct = await alice.direct_with(bob)
            await alice.send(direct, "warm-up")
            await until(lambda: slow.held >= 1, "the slow receiver to hold a delivery")
            started = time.perf_counter()
            for n in range(20):
                await alice.send(direct, f"message {n}")
            elapsed = time.perf_counter() - started
            # Every send returned while the slow receiver still holds what it got: nothing waited for it.
            assert slow.held >= 1
            assert not slow.delivered()
            await until(lambda: len(fast.delivered()) == 21, "the other endpoint's deliveries")
            print(f"20 sends with a receiver holding its requests: {elapsed * 1000 / 20:.1f} ms each")
            assert slow.hold is not None
            slow.hold.set()
            await until(lambda: len(slow.delivered()) == 21, "the slow receiver to catch up", timeout=60)


async def test_a_private_receiver_is_refused_outside_development(
    tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> None:
    """With private endpoints not allowed, a receiver on 127.0.0.1 gets nothing: the delivery is dead-lettered."""
    secret = new_secret()
    async with WebhookReceiver(secret) as receiver:
        url = receiver.url
        hooks = hooks_json((url, secret, ["user.registered"]))
        backends = (migrated_postgres, redis_target)
        async with rig(tmp_path, backends, hooks, webhook_allow_private_endpoints=False) as setup:
            await setup.api.people("dave")
            reasons = await until(setup.dead_reasons, "the refused delivery's dead letter")
            assert "endpoint refused" in reasons[0]  # plain http to 127.0.0.1
            assert receiver.attempts == []
    with pytest.raises(BadUserInput, match="https"):
        await check_url(url, allow_private=False, what="url")
    with pytest.raises(BadUserInput, match="public address"):
        await check_url("https://127.0.0.1/hooks", allow_private=False, what="url")
    with pytest.raises(BadUserInput, match="public address"):
        await check_url("https://[64:ff9b::a00:1]/hooks", allow_private=False, what="url")
    assert await check_url(url, allow_private=True, what="url") == ["127.0.0.1"]


async def test_endpoints_added_disabled_and_dead_letters_replayed_through_the_admin_functions(
    tmp_path: Path,
) -> None:
    """An endpoint added at run time gets events signed with its new secret; a dead letter can be replayed."""
    async with (
        WebhookReceiver("whsec_" + "A" * 44) as receiver,
        rig(tmp_path, None, None, webhook_max_attempts=2) as setup,
    ):
        await setup.api.people("before")  # no endpoint yet: nothing is queued
        view, secret = await setup.on_server(
            webhooks.add_endpoint(setup.services, receiver.url, ["user.registered"], "crm")
        )
        receiver.secret = secret
        assert secret.startswith("whsec_")
        assert view.events == ["user.registered"]
        assert [e.id for e in await setup.on_server(webhooks.list_endpoints(setup.services))] == [view.id]
        with pytest.raises(BadUserInput):
            await setup.on_server(webhooks.add_endpoint(setup.services, receiver.url, ["no.such"], None))

        receiver.failing_status = 500
        await setup.api.people("erin")
        [dead] = await until(lambda: setup.on_server(webhooks.list_dead_letters(setup.services, 10)), "a dead letter")
        assert dead.job.event_type == "user.registered"
        assert "HTTP 500" in dead.reason
        assert len(receiver.attempts) == 2  # webhook_max_attempts
        receiver.failing_status = None
        assert await setup.on_server(webhooks.replay_dead_letter(setup.services, dead.id))
        [delivery] = await until(lambda: receiver.delivered() or None, "the replayed delivery")
        assert delivery.event["data"]["username"].startswith("erin")
        assert delivery.id == dead.job.event_id
        assert await setup.on_server(webhooks.list_dead_letters(setup.services, 10)) == []

        await setup.on_server(webhooks.disable_endpoint(setup.services, view.id))
        await setup.api.people("frank")
        async with WebhookReceiver(new_secret()) as marker:
            _view, marker.secret = await setup.on_server(
                webhooks.add_endpoint(setup.services, marker.url, ["user.registered"])
            )
            await setup.api.people("gina")
            await until(lambda: marker.delivered() or None, "the marker endpoint's delivery")
        assert len(receiver.delivered()) == 1  # nothing after it was disabled


class _CountingQueue:
    def __init__(self) -> None:
        self.jobs: list[WebhookJob] = []

    async def enqueue(self, jobs: Sequence[WebhookJob]) -> None:
        self.jobs += jobs

    async def dead_letters(self, limit: int) -> list[Any]:
        return []

    async def replay(self, dead_id: str) -> bool:
        return False


def _services(directory: EndpointDirectory, queue: _CountingQueue, *, include_body: bool = False) -> Services:
    hooks = Webhooks(queue=queue, directory=directory, ids=MessageIds("k" * 32), include_body=include_body)
    return cast("Services", type("S", (), {"webhooks": hooks})())


async def test_emit_queues_nothing_without_endpoints_and_public_ids_with_one() -> None:
    """Without an endpoint emit queues nothing (and costs about a microsecond); with one, the API's ids, no body."""
    queue = _CountingQueue()
    services = _services(EndpointDirectory(), queue)
    ref = MessageRef(7, 3, 2)
    payload = webhooks.message_payload(ref, mentions=[5], attachment_count=1, body="secret words")
    calls = 20_000
    started = time.perf_counter()
    for _ in range(calls):
        await webhooks.emit(services, "message.sent", payload)
    per_call = (time.perf_counter() - started) / calls
    print(f"emit without endpoints: {per_call * 1e6:.2f} µs per call")
    assert queue.jobs == []

    endpoint = Endpoint("cfg-0", "https://hooks.example/in", new_secret(), frozenset({"message.sent"}))
    await webhooks.emit(_services(EndpointDirectory([endpoint]), queue), "message.sent", payload)
    await webhooks.emit(_services(EndpointDirectory([endpoint]), queue), "user.registered", {"user_id": 9})
    [job] = queue.jobs
    event = json.loads(job.body)
    assert event["type"] == "message.sent"
    assert job.event_id.startswith("msg_")
    assert event["data"] == {
        "message_id": MessageIds("k" * 32).encode(ref),
        "conversation_id": "3",
        "sender_id": "2",
        "mention_ids": ["5"],
        "attachment_count": 1,
    }
    await webhooks.emit(_services(EndpointDirectory([endpoint]), queue, include_body=True), "message.sent", payload)
    assert json.loads(queue.jobs[-1].body)["data"]["body"] == "secret words"
