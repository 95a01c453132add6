"""Push notifications end to end: real servers, real `parley worker` processes and Redis, a local WebPush endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from infra.passwords import Argon2Hasher
from infra.push.queue import GROUP, RedisPushQueue
from resolvers.errors import BadUserInput, Unavailable
from resolvers.outbound import RESOLVER_THREADS
from resolvers.push import check_endpoint
from resolvers.records import PushJob
from tests.support.helpers import Api, Person
from tests.support.push_fakes import (
    HANG,
    PUSH_SETTINGS,
    REGISTER_PUSH,
    VAPID_PUBLIC,
    PushEndpoint,
    Reply,
    Subscription,
    b64url,
    verify_vapid,
)
from tests.support.push_rig import Marker, pushes_before_marker, rig, subscribe
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import production_settings
from tests.support.waiting import until


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> tuple[str, RedisTarget] | None:
    """PostgreSQL and Redis for tests of the production mode (a test's `mode`, else production)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("mode") == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@pytest.fixture
def endpoint() -> Iterator[PushEndpoint]:
    with PushEndpoint() as server:
        yield server


async def pair(api: Api) -> tuple[Person, Person, str]:
    alice, bob = await api.people("alice", "bob")
    return alice, bob, await alice.direct_with(bob)


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_offline_recipient_gets_one_encrypted_push(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends) as setup:
        alice, bob, conversation = await pair(setup.api)
        key = (await bob.data("{ webPushPublicKey }"))["webPushPublicKey"]
        assert key == VAPID_PUBLIC
        subscription = await subscribe(bob, endpoint)
        message = await alice.send(conversation, "see you at noon")

        [push] = await endpoint.wait_for(1)
        assert push.path == f"/push/{bob.username}"
        assert push.headers["content-encoding"] == "aes128gcm"
        assert int(push.headers["ttl"]) > 0
        assert push.headers["urgency"] == "high"
        verify_vapid(push.headers["authorization"], public_key=VAPID_PUBLIC, audience=endpoint.origin)
        assert subscription.decrypt(push.body) == {
            "type": "message",
            "conversationId": conversation,
            "messageId": message["id"],
            "sender": alice.username,  # the display name defaults to the username
            "count": 1,
        }
        assert len(await pushes_before_marker(setup, endpoint, alice)) == 1


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_the_body_is_pushed_only_when_allowed(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends, settings={"push_include_body": True}) as setup:
        alice, bob, conversation = await pair(setup.api)
        subscription = await subscribe(bob, endpoint)
        await alice.send(conversation, "the body, on purpose")
        [push] = await endpoint.wait_for(1)
        assert subscription.decrypt(push.body)["body"] == "the body, on purpose"


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_online_or_muted_recipient_gets_no_push(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends) as setup:
        alice, bob, conversation = await pair(setup.api)
        await subscribe(bob, endpoint)
        async with bob.events() as events:
            await alice.send(conversation, "you are online")
            await events.next()
            # Online until the job was handled (the marker's push comes after it).
            assert await pushes_before_marker(setup, endpoint, alice) == []
        await bob.drain()
        await bob.data(
            "mutation M($c: ID!) { muteConversation(conversationId: $c, muted: true) { muted } }", c=conversation
        )
        await alice.send(conversation, "you muted me")
        assert await pushes_before_marker(setup, endpoint, alice) == []
        # Unmuted and offline again: pushed.
        await bob.data(
            "mutation M($c: ID!) { muteConversation(conversationId: $c, muted: false) { muted } }", c=conversation
        )
        await alice.send(conversation, "now you hear me")
        await until(lambda: any(r.path == f"/push/{bob.username}" for r in endpoint.received), "bob's push")


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_burst_becomes_one_notification_with_a_count(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends, settings={"push_coalesce_seconds": 2.0}) as setup:
        alice, bob, conversation = await pair(setup.api)
        subscription = await subscribe(bob, endpoint)
        marker = await Marker.ready(setup, endpoint, alice)
        sent = [await alice.send(conversation, f"line {n}") for n in range(4)]
        # The burst's push first: the worker sends pushes concurrently, so a marker queued right
        # after the burst could overtake it on the way to the endpoint.
        await until(lambda: any(r.path == f"/push/{bob.username}" for r in endpoint.received), "bob's push")
        await marker.send()
        [push] = await marker.pushes_before()
        note = subscription.decrypt(push.body)
        assert (note["count"], note["messageId"]) == (4, sent[-1]["id"])


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_gone_is_forgotten_and_unavailable_is_retried(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends) as setup:
        alice, bob, conversation = await pair(setup.api)
        carol = await setup.api.register("carol")
        await subscribe(bob, endpoint)
        endpoint.statuses.extend([503, 201])
        await alice.send(conversation, "first")
        first = await endpoint.wait_for(2)
        assert [r.status for r in first] == [503, 201]

        endpoint.statuses.append(410)
        await bob.drain()
        await alice.send(conversation, "second")
        await endpoint.wait_for(3)
        # Forgotten: the next message is not pushed (carol's, in another conversation, is).
        await carol_subscribed(carol, endpoint)
        await bob.drain()
        await alice.send(conversation, "third")
        await alice.send(await alice.direct_with(carol), "to carol")
        pushed = await pushes_before_marker(setup, endpoint, alice)
        assert [r.path for r in pushed[3:]] == [f"/push/{carol.username}"]


async def carol_subscribed(carol: Person, endpoint: PushEndpoint) -> None:
    await subscribe(carol, endpoint)


async def test_a_job_failing_every_attempt_lands_in_the_dead_letter_stream(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends) as setup:
        alice, bob, conversation = await pair(setup.api)
        await subscribe(bob, endpoint)
        endpoint.default_status = 503
        await alice.send(conversation, "nobody home")
        await endpoint.wait_for(3)
        await until(setup.dead_lettered, "a dead letter")
        [dead] = await setup.dead_letters()
        assert b"HTTP 503" in dead[b"reason"]
        # Max attempts, then no more: a dead-lettered job is acknowledged, never handed out again.
        assert len(endpoint.received) == 3
        # The worker's failures are on its own port, for Prometheus.
        assert setup.worker_url is not None
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"{setup.worker_url}/metrics")).text
        failures = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(scraped)
            for sample in family.samples
            if sample.name == "parley_push_failures_total" and sample.labels.get("platform") == "WEBPUSH"
        }
        assert failures, scraped[:2000]
        assert sum(failures.values()) >= 3


async def test_a_killed_worker_leaves_its_job_to_another_that_delivers_it_once(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends, start_worker=False) as setup:
        alice, bob, conversation = await pair(setup.api)
        subscription = await subscribe(bob, endpoint)
        endpoint.statuses.append(HANG)
        async with setup.worker() as first:
            message = await alice.send(conversation, "survive this")
            [held] = await endpoint.wait_for(1)
            # Read and being sent, not acknowledged: killed without a chance to clean up.
            os.kill(first.pid, signal.SIGKILL)
        endpoint.release()
        async with setup.worker():
            received = await endpoint.wait_for(2)
            # Acknowledged: no worker can be handed the job again.
            await until(setup.all_acknowledged, "the job's acknowledgement")
        delivered = [r for r in endpoint.received if r.status == 201]
        assert len(received) == len(endpoint.received) == 2
        assert len(delivered) == 1
        assert subscription.decrypt(delivered[0].body)["messageId"] == message["id"]
        assert subscription.decrypt(held.body)["messageId"] == message["id"]
        assert await setup.dead_letters() == []


async def test_a_stopped_worker_hands_its_unfinished_job_to_another(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    async with rig(tmp_path, backends, start_worker=False) as setup:
        alice, bob, conversation = await pair(setup.api)
        subscription = await subscribe(bob, endpoint)
        endpoint.statuses.append(HANG)
        first = setup.worker(PARLEY_PUSH_SHUTDOWN_GRACE_SECONDS="0.5")
        async with first:
            message = await alice.send(conversation, "in flight")
            await endpoint.wait_for(1)
        # SIGTERM returned (ProcessServer waits for the exit) although the request still hangs.
        async with setup.worker():
            received = await endpoint.wait_for(2)
        endpoint.release()
        assert [r.status for r in received] == [HANG, 201]
        assert subscription.decrypt(received[1].body)["messageId"] == message["id"]


async def test_private_endpoints_are_refused_in_production_at_registration_and_at_send(
    tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    assert backends is not None
    postgres, target = backends
    settings = production_settings(postgres, target, env="production", **PUSH_SETTINGS)
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        bob = await api.register("bob")
        subscription = Subscription()
        for url in (
            endpoint.url(),
            "https://127.0.0.1/push",
            "https://10.1.2.3/push",
            "https://[::1]/push",
            "https://169.254.169.254/latest",
            "https://localhost/push",
            "ftp://example.com/x",
        ):
            error = await bob.error(
                REGISTER_PUSH,
                input={
                    "platform": "WEBPUSH",
                    "endpoint": url,
                    "p256dh": subscription.p256dh,
                    "auth": b64url(subscription.auth),
                },
            )
            assert error == "BAD_USER_INPUT", url
    # A registration accepted earlier (or whose name now resolves privately) is refused at send.
    async with rig(tmp_path, backends, PARLEY_PUSH_ALLOW_PRIVATE_ENDPOINTS="false") as setup:
        alice, bob, conversation = await pair(setup.api)
        await subscribe(bob, endpoint)  # the API server here is in development mode
        await alice.send(conversation, "not for your intranet")
        await until(setup.dead_lettered, "a dead letter")
        [dead] = await setup.dead_letters()
        assert b"endpoint refused" in dead[b"reason"]
        assert endpoint.received == []


async def test_registrations_are_validated_replaced_and_removed(tmp_path: Path, endpoint: PushEndpoint) -> None:
    async with rig(tmp_path, None) as setup:
        alice, bob, conversation = await pair(setup.api)
        sub = Subscription()
        good: dict[str, Any] = {
            "platform": "WEBPUSH",
            "endpoint": endpoint.url("b"),
            "p256dh": sub.p256dh,
            "auth": b64url(sub.auth),
        }
        bad_inputs = [
            {**good, "p256dh": "not base64!"},
            {**good, "p256dh": b64url(b"\x04" + b"x" * 10)},
            {**good, "auth": b64url(b"short")},
            {**good, "endpoint": None},
            {**good, "token": "abc"},
            {"platform": "APNS", "token": "not-hex"},
            {"platform": "APNS", "token": "ab" * 32, "endpoint": endpoint.url()},
            {"platform": "FCM"},
            {"platform": "FCM", "token": "has spaces in it"},
            {**good, "endpoint": "http://no-such-host.invalid/push"},
        ]
        for bad in bad_inputs:
            assert await bob.error(REGISTER_PUSH, input=bad) == "BAD_USER_INPUT", bad
        assert (await bob.data(REGISTER_PUSH, input={"platform": "APNS", "token": "ab" * 32}))["registerPush"]
        assert (await bob.data(REGISTER_PUSH, input={"platform": "FCM", "token": "fcm-token:APA91b_x"}))["registerPush"]
        # The WebPush subscription replaces the FCM token: one registration per device.
        await subscribe(bob, endpoint)
        await alice.send(conversation, "one")
        await endpoint.wait_for(1)
        assert (await bob.data("mutation { unregisterPush }"))["unregisterPush"] is True
        assert (await bob.data("mutation { unregisterPush }"))["unregisterPush"] is True
        await bob.drain()
        await alice.send(conversation, "two")
        # A logged-out device loses its registration with it.
        other = await bob.other_device()
        await subscribe(other, endpoint)
        await other.data("mutation { logout }")
        await alice.send(conversation, "three")
        assert len(await pushes_before_marker(setup, endpoint, alice)) == 1


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_huge_error_body_from_a_push_endpoint_is_not_read_whole(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    """Review 2, item 7: the worker reads a few KiB of an answer and hangs up; the job still completes."""
    async with rig(tmp_path, backends) as setup:
        alice, bob, conversation = await pair(setup.api)
        subscription = await subscribe(bob, endpoint)
        endpoint.statuses.append(Reply(503, body_bytes=64 * 1024 * 1024))
        message = await alice.send(conversation, "are you there")
        first, second = await endpoint.wait_for(2)
        assert (first.status, second.status) == (503, 201)
        assert subscription.decrypt(second.body)["messageId"] == message["id"]
        await until(lambda: endpoint.cut_short == 1, "the worker to hang up on the 64 MiB body")


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_strangers_endpoint_asking_to_retry_in_five_minutes_does_not_hold_up_other_notifications(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    """Review 2, item 7: one sending slot; the job resting until its retry gives it back to the next job.

    Its Retry-After (from no known push service) is not honoured, and the backoff is long
    here: before the fix the job held the only slot for five minutes.
    """
    settings: dict[str, object] = {"push_worker_concurrency": 1, "push_retry_base_seconds": 600}
    async with rig(tmp_path, backends, settings=settings) as setup:
        alice, bob, conversation = await pair(setup.api)
        carol = await setup.api.register("carol")
        await subscribe(bob, endpoint)
        await subscribe(carol, endpoint)
        endpoint.standing[carol.username] = Reply(429, {"Retry-After": "300"})
        await alice.send(await alice.direct_with(carol), "for the stranger")
        [refused] = await endpoint.wait_for(1)
        assert (refused.path, refused.status) == (f"/push/{carol.username}", 429)
        await alice.send(conversation, "for bob")
        received = await endpoint.wait_for(2)
        assert [(r.path, r.status) for r in received] == [
            (f"/push/{carol.username}", 429),
            (f"/push/{bob.username}", 201),
        ]


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_register_push_is_rate_limited_per_user(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None
) -> None:
    """Review 2, item 8: each registerPush may look up a host the client chose; a user gets a few per hour."""
    async with rig(tmp_path, backends, start_worker=False, settings={"push_registrations_per_hour": 3}) as setup:
        alice, bob = await setup.api.people("alice", "bob")
        token = {"platform": "APNS", "token": "ab" * 32}
        for _ in range(3):
            assert (await bob.data(REGISTER_PUSH, input=token))["registerPush"] is True
        assert await bob.error(REGISTER_PUSH, input=token) == "RATE_LIMITED"
        assert (await alice.data(REGISTER_PUSH, input=token))["registerPush"] is True


async def test_hanging_endpoint_lookups_do_not_hold_up_password_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 2, item 8: lookups of endpoint hosts run on threads of their own, not the default executor.

    The default executor (asyncio's getaddrinfo used it) is where password hashes run: with
    it full of hanging lookups, a login waited for them.
    """
    release = threading.Event()
    entered: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.example":
            entered.append(host)
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hasher = Argon2Hasher(fast=True)
    default_threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    lookups = [
        asyncio.create_task(check_endpoint("https://hangs.example/push", allow_private=False))
        for _ in range(default_threads + RESOLVER_THREADS)
    ]
    try:
        await until(lambda: len(entered) >= min(default_threads, RESOLVER_THREADS), "the lookups to hang")
        # The timeout only guards against a hang: before the fix the hash waited behind the lookups.
        hashed = await asyncio.wait_for(hasher.hash("correct horse"), timeout=30)
        assert not release.is_set()
        assert await hasher.verify(hashed, "correct horse")
    finally:
        release.set()
        outcomes = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(outcome, BadUserInput | Unavailable) for outcome in outcomes), outcomes


async def test_nat64_and_6to4_endpoints_reaching_private_addresses_are_refused(
    backends: tuple[str, RedisTarget] | None,
) -> None:
    """Review 2, item 12: addresses embedding an IPv4 address are judged by it (or refused outright)."""
    assert backends is not None
    postgres, target = backends
    with ThreadServer(production_settings(postgres, target, env="production", **PUSH_SETTINGS)) as server:
        bob = await Api(server.url, server.ws_url, "production").register("bob")
        subscription = Subscription()
        keys = {"platform": "WEBPUSH", "p256dh": subscription.p256dh, "auth": b64url(subscription.auth)}
        for url in (
            "https://[64:ff9b::a00:1]/push",  # NAT64 of 10.0.0.1
            "https://[64:ff9b::7f00:1]/push",  # NAT64 of 127.0.0.1
            "https://[64:ff9b::a9fe:a9fe]/latest",  # NAT64 of the cloud metadata address
            "https://[64:ff9b:1::a00:1]/push",  # the local-use NAT64 prefix
            "https://[2002:a9fe:a9fe::1]/latest",  # 6to4 of the cloud metadata address
            "https://[2002:808:808::1]/push",  # 6to4 at all
            "https://[::a00:1]/push",  # IPv4-compatible 10.0.0.1
            "https://[::ffff:a00:1]/push",  # IPv4-mapped 10.0.0.1
        ):
            assert await bob.error(REGISTER_PUSH, input={**keys, "endpoint": url}) == "BAD_USER_INPUT", url
        # A DNS64 network reaches public hosts through NAT64: those stay allowed.
        public = {**keys, "endpoint": "https://[64:ff9b::808:808]/push"}
        assert (await bob.data(REGISTER_PUSH, input=public))["registerPush"] is True


async def entries(redis: Redis, stream: str) -> list[dict[bytes, bytes]]:
    """The fields of a stream's entries."""
    found: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream)  # type: ignore[assignment]
    return [fields for _id, fields in found]


async def test_a_malformed_push_job_is_dead_lettered_and_the_rest_of_its_batch_is_served(
    redis_target: RedisTarget,
) -> None:
    """Review 2, item 11: entries are decoded one by one; one that is no job cannot fail its batch forever."""
    redis = Redis.from_url(redis_target.url)
    prefix = f"{redis_target.prefix}push-{uuid.uuid4().hex[:8]}:"

    def queue(claim_idle_seconds: float) -> RedisPushQueue:
        return RedisPushQueue(
            redis, prefix=prefix, max_length=1000, claim_idle_seconds=claim_idle_seconds, max_attempts=5
        )

    first = queue(60)
    good = [PushJob(n, 1, 2, "alice", time.time()) for n in (1, 2)]
    wrong_types = {"message_id": "3", "conversation_id": 1, "sender_id": 2, "sender_display_name": "a", "sent_at": 0}
    try:
        await first.enqueue(good[0])
        await redis.xadd(first.stream, {"job": b"{not json"})
        await redis.xadd(first.stream, {"other": b"field"})
        await redis.xadd(first.stream, {"job": orjson.dumps(wrong_types)})
        await first.enqueue(good[1])
        jobs = await first.receive("worker-a", count=10, wait_seconds=0.1)
        assert [job.job for job in jobs] == good
        dead = await entries(redis, first.dead_stream)
        assert [fields[b"job"] for fields in dead] == [b"{not json", b"", orjson.dumps(wrong_types)]
        assert all(fields[b"reason"].startswith(b"undecodable") for fields in dead)
        assert (await redis.xpending(first.stream, GROUP))["pending"] == 2  # the bad ones are acknowledged

        # Taken over from a dead worker (XAUTOCLAIM): decoded one by one as well.
        bad = await redis.xadd(first.stream, {"job": b"[]"})
        await redis.xreadgroup(GROUP, "ghost", {first.stream: ">"}, count=10)
        await redis.xclaim(first.stream, GROUP, "ghost", 0, [*(job.id for job in jobs), bad], idle=60_000)
        reclaimed = await queue(1).receive("worker-b", count=10, wait_seconds=0.1)
        assert sorted(job.job.message_id for job in reclaimed) == [1, 2]
        assert all(job.handed_out >= 2 for job in reclaimed)
        assert len(await entries(redis, first.dead_stream)) == 4
        assert (await redis.xpending(first.stream, GROUP))["pending"] == 2
    finally:
        await redis.delete(first.stream, first.dead_stream)
        await redis.aclose()


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_message_deleted_within_the_coalescing_window_is_not_notified(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    """Review 2, item 17: the worker skips a message deleted for everyone before its notification went out."""
    async with rig(tmp_path, backends, settings={"push_coalesce_seconds": 2.0}) as setup:
        alice, bob, conversation = await pair(setup.api)
        carol = await setup.api.register("carol")
        await subscribe(bob, endpoint)
        await subscribe(carol, endpoint)
        sent = await alice.send(conversation, "sent to the wrong person")
        await alice.data("mutation D($m: ID!) { deleteMessage(messageId: $m) }", m=sent["id"])
        # Queued after the deleted message's job: by its push, that job has run.
        await alice.send(await alice.direct_with(carol), "for carol")
        [push] = await endpoint.wait_for(1)
        # Carol's push is the marker (see `Marker`): the deleted message's job was handled before it.
        assert push.path == f"/push/{carol.username}"
        assert [r.path for r in endpoint.received] == [f"/push/{carol.username}"]
