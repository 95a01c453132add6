"""Delivery across processes and through failures: real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from graph.errors import UNAVAILABLE_MESSAGE
from infra.app import Overrides
from infra.persisted_queries import RedisPersistedQueries
from infra.presence_redis import RedisPresence
from infra.push.queue import RedisPushQueue
from infra.rate_limit import RedisRateLimiter
from resolvers.errors import Unavailable
from resolvers.records import PushJob
from tests.support.client import HttpClient
from tests.support.clock import MovableClock
from tests.support.faults import FaultyBus, replacing
from tests.support.helpers import PASSWORD, Api
from tests.support.processes import ProcessServer
from tests.support.redis_process import RedisServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.streams import bodies, next_of
from tests.support.waiting import until

LOGIN = "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }"


async def test_two_server_processes_deliver_and_route_receipts(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    env = suite_process_env(migrated_postgres, redis_target)
    async with (
        ProcessServer(env, log_path=tmp_path / "one.log") as one,
        ProcessServer(env, log_path=tmp_path / "two.log") as two,
    ):
        on_one = Api(one.url, one.ws_url, "production")
        on_two = Api(two.url, two.ws_url, "production")
        alice = await on_one.register("alice")
        bob = await on_two.register("bob")
        direct = await alice.direct_with(bob)
        async with alice.events() as alice_events, bob.events() as bob_events:
            sent = await alice.send(direct, "across processes")
            received = await next_of(bob_events, "MessageEvent")
            assert received["message"]["id"] == sent["id"]
            await bob.acknowledge(str(received["cursor"]))
            assert (await next_of(alice_events, "ReceiptEvent"))["receipt"]["status"] == "DELIVERED"
            await bob.mark_read(direct, sent["id"])
            assert (await next_of(alice_events, "ReceiptEvent"))["receipt"]["status"] == "READ"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may restart."""
    with RedisServer() as server:
        yield server


async def test_redis_restart_resumes_live_delivery_and_loses_nothing(
    migrated_postgres: str, own_redis: RedisServer
) -> None:
    settings = production_settings(migrated_postgres, RedisTarget(f"{own_redis.url}/0", "restart:"))
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        async with bob.events() as bob_events:
            await alice.send(direct, "before")
            assert (await next_of(bob_events, "MessageEvent"))["message"]["body"] == "before"

            await asyncio.to_thread(own_redis.stop)
            await alice.send(direct, "while redis is down")  # stored; its notice is lost
            await asyncio.to_thread(own_redis.start)

            during = await next_of(bob_events, "MessageEvent", timeout=20)
            assert during["message"]["body"] == "while redis is down"
            await alice.send(direct, "after")
            assert (await next_of(bob_events, "MessageEvent"))["message"]["body"] == "after"


async def test_a_redis_outage_answers_unavailable_where_nothing_fails_open(
    migrated_postgres: str, own_redis: RedisServer
) -> None:
    """Logins (counted in Redis, never unchecked) and heartbeats answer UNAVAILABLE, masked, while sending fails open."""
    settings = production_settings(migrated_postgres, RedisTarget(f"{own_redis.url}/0", "outage:"))
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)

        await asyncio.to_thread(own_redis.stop)
        login = await HttpClient(server.url).post(LOGIN, {"u": alice.username, "p": PASSWORD})
        heartbeat = await alice.http.post("mutation { heartbeat }")
        for body in (login, heartbeat):
            assert body["errors"][0]["extensions"] == {"code": "UNAVAILABLE"}, body
            assert body["errors"][0]["message"] == UNAVAILABLE_MESSAGE
            assert str(own_redis.port) not in str(body), "no connection details leak"
        await alice.send(direct, "the rate limit fails open")

        await asyncio.to_thread(own_redis.start)

        async def logged_in() -> bool:
            # A pooled connection from before the restart may fail once more (UNAVAILABLE too).
            answer = await HttpClient(server.url).post(LOGIN, {"u": alice.username, "p": PASSWORD})
            codes = {error["extensions"]["code"] for error in answer.get("errors", [])}
            assert codes <= {"UNAVAILABLE"}, answer
            return not codes

        await until(logged_in, "the same process to serve logins again")
        assert "the rate limit fails open" in bodies(await bob.pending())


@pytest.fixture
async def refusing_redis() -> AsyncIterator[Redis]:
    """A Redis client for a local port nothing listens on, without retries: every command is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}/0", retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_redis_adapters_raise_unavailable_from_the_redis_error(refusing_redis: Redis) -> None:
    """Rate limits, presence reads, persisted queries and the push queue each raise the ports' `Unavailable`."""
    limiter = RedisRateLimiter(refusing_redis, prefix="t:")
    presence = RedisPresence(refusing_redis, prefix="t:", node_id="n1")
    queries = RedisPersistedQueries(refusing_redis, "t:apq:", max_entries=10)
    queue = RedisPushQueue(refusing_redis, prefix="t:", max_length=10, claim_idle_seconds=1, max_attempts=3)
    job = PushJob(message_id=1, conversation_id=1, sender_id=1, sender_display_name="a", sent_at=0.0)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "rate limit hit": lambda: limiter.hit("k", window_seconds=60),
        "rate limit count": lambda: limiter.count("k"),
        "rate limit reset": lambda: limiter.reset("k"),
        "touch": lambda: presence.touch(1),
        "last seen": lambda: presence.last_seen([1]),
        "online": lambda: presence.online([1]),
        "states": lambda: presence.states([1]),
        "persisted query get": lambda: queries.get("0" * 64),
        "persisted query put": lambda: queries.put("0" * 64, "{ me { id } }"),
        "push enqueue": lambda: queue.enqueue(job),
    }
    for name, call in calls.items():
        with pytest.raises(Unavailable) as failed:
            await call()
        assert type(failed.value.__cause__).__module__.startswith("redis."), name
    await presence.connected(1)  # counted locally and registered again later: never raises


async def test_failed_publish_after_commit_loses_nothing(tmp_path: Path) -> None:
    overrides = replacing(bus=lambda s: FaultyBus(s.bus, publish=ConnectionError("injected publish failure")))
    with ThreadServer(embedded_settings(tmp_path), overrides) as server:
        api = Api(server.url, server.ws_url, "embedded")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        async with bob.events() as live:
            sent = await alice.send(direct, "published into the void")
            with pytest.raises(TimeoutError):
                await next_of(live, "MessageEvent", timeout=0.5)
        assert bodies(await bob.pending()) == ["published into the void"]
        async with bob.events() as resubscribed:
            assert (await next_of(resubscribed, "MessageEvent"))["message"]["id"] == sent["id"]


async def test_inactive_devices_expire_with_their_pending_events(tmp_path: Path) -> None:
    from tests.support.database_dump import dump_settings_tables  # noqa: PLC0415

    # Devices idle for more than a day expire; the sweep runs every 0.2 s, on a clock the test moves.
    clock = MovableClock()
    settings = embedded_settings(tmp_path, device_inactivity_days=1, sweep_interval_seconds=0.2)
    with ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        api = Api(server.url, server.ws_url, "embedded")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        secret = f"never-read-{uuid.uuid4().hex}"
        await alice.send(direct, secret)
        assert secret in await dump_settings_tables(settings)
        clock.advance(2 * 86400)

        async def swept() -> bool:
            return secret not in await dump_settings_tables(settings)

        await until(swept, "the sweep to remove the idle devices and their pending message")
        assert await bob.error("{ me { id } }") == "UNAUTHENTICATED"
