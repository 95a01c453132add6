"""Delivery across processes and through failures: real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.app import Overrides
from tests.support.clock import MovableClock
from tests.support.faults import FaultyBus, replacing
from tests.support.helpers import Api
from tests.support.processes import ProcessServer
from tests.support.redis_process import RedisServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.streams import bodies, next_of
from tests.support.waiting import until


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
