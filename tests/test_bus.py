"""The bus on a real, throwaway Redis and in memory: the broadcaster traps of docs/upstream-notes.md."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from infra.bus import BroadcastBus, Bus, BusUnavailable, Resync, Subscription
from resolvers.errors import Unavailable
from tests.support.redis_process import RedisServer

# Generous for a healthy run, short enough that a missing fix fails instead of hanging.
STEP = 3.0
# Reconnect backoff is capped low so that recovery is quick in tests.
RECONNECT = 0.3


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the tests that do not stop it; each bus isolates itself with a prefix."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@asynccontextmanager
async def connected(url: str, *, prefix: str | None = None, max_queue: int = 1000) -> AsyncIterator[BroadcastBus]:
    bus = BroadcastBus(
        url,
        channel_prefix=f"test-{uuid.uuid4().hex}:" if prefix is None else prefix,
        max_queue=max_queue,
        reconnect_max_delay=RECONNECT,
    )
    await bus.connect()
    try:
        yield bus
    finally:
        await bus.disconnect()


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[Bus]:
    async with connected(bus_url) as connected_bus:
        yield connected_bus  # typed as Bus: mypy checks BroadcastBus against the protocol


async def next_item(subscription: AsyncIterator[str | Resync], seconds: float = STEP) -> str | Resync:
    async with asyncio.timeout(seconds):
        return await anext(subscription)


async def assert_silent(subscription: AsyncIterator[str | Resync], seconds: float = 0.2) -> None:
    """Nothing arrives for a while, and the subscription has not ended either."""
    with pytest.raises(TimeoutError):
        await next_item(subscription, seconds)


async def wire_subscribers(url: str, channel: str) -> int:
    """How many Redis connections subscribe to `channel` (the prefixed name)."""
    client = Redis.from_url(url)
    try:
        [(_, count)] = await client.pubsub_numsub(channel)
        return int(count)
    finally:
        await client.aclose()


async def assert_channel_released(url: str, wire_channel: str) -> None:
    """Nothing is left of a channel whose subscribers all left: no task, no Redis subscription."""
    await asyncio.sleep(0)  # let cancelled tasks finish
    pumps = [task for task in asyncio.all_tasks() if task.get_name().startswith("parley.bus.pump")]
    assert pumps == []
    if url.startswith("redis"):
        for _ in range(100):  # UNSUBSCRIBE is sent; Redis may not have processed it yet
            if not await wire_subscribers(url, wire_channel):
                return
            await asyncio.sleep(0.02)
        pytest.fail(f"{wire_channel} is still subscribed on Redis")


async def test_first_subscriber_hears_a_message_published_right_after_subscribing(
    bus: Bus,
) -> None:
    # Trap 1. Every round starts with no channel subscribed, which is when broadcaster loses it.
    for round_ in range(20):
        channel = f"first-{round_}"
        async with bus.subscribe(channel) as subscription:
            await bus.publish_many([(channel, f"hello {round_}")])
            assert await next_item(subscription) == f"hello {round_}"


@pytest.mark.parametrize("count", [2, 10])
async def test_concurrent_first_subscribers_all_hear_every_message_and_leave_cleanly(bus_url: str, count: int) -> None:
    # Trap 2: broadcaster lets the second first subscriber replace the first one's queue set.
    messages = ["one", "two", "three"]
    entered = 0
    everyone_in = asyncio.Event()

    async def listen() -> list[str | Resync]:
        nonlocal entered
        async with crowd_bus.subscribe("crowd") as subscription:
            entered += 1
            if entered == count:
                everyone_in.set()
            return [await next_item(subscription) for _ in messages]

    prefix = f"test-{uuid.uuid4().hex}:"
    async with connected(bus_url, prefix=prefix) as crowd_bus:
        async with asyncio.TaskGroup() as group:
            listeners = [group.create_task(listen()) for _ in range(count)]
            async with asyncio.timeout(STEP):
                await everyone_in.wait()
            await crowd_bus.publish_many([("crowd", message) for message in messages])
        assert [listener.result() for listener in listeners] == [messages] * count

        await assert_channel_released(bus_url, prefix + "crowd")
        async with crowd_bus.subscribe("crowd") as again:  # and the channel can be used again
            await crowd_bus.publish_many([("crowd", "again")])
            assert await next_item(again) == "again"


async def test_subscribers_cancelled_while_subscribing_leave_nothing_behind(bus_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    async with connected(bus_url, prefix=prefix) as bus:

        async def subscribe_forever() -> None:
            async with bus.subscribe("room"):
                await asyncio.Event().wait()

        # Cancelled at every early step of subscribing, several at once.
        for steps in range(8):
            tasks = [asyncio.create_task(subscribe_forever()) for _ in range(3)]
            for _ in range(steps):
                await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            async with asyncio.timeout(STEP):
                results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(result, asyncio.CancelledError) for result in results)

        await assert_channel_released(bus_url, prefix + "room")
        async with bus.subscribe("room") as subscription:
            await bus.publish_many([("room", "still works")])
            assert await next_item(subscription) == "still works"


async def test_subscribers_resync_after_a_redis_restart_then_hear_live_messages(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Trap 3: without supervision the listener dies with the connection and never comes back.
    caplog.set_level(logging.INFO, logger="parley.bus")
    async with (
        connected(own_redis.url) as bus,
        bus.subscribe("a") as a1,
        bus.subscribe("a") as a2,
        bus.subscribe("b") as b,
    ):
        await bus.publish_many([("a", "before"), ("b", "before")])
        assert [await next_item(s) for s in (a1, a2, b)] == ["before"] * 3

        await asyncio.to_thread(own_redis.restart)

        for subscription in (a1, a2, b):
            assert await next_item(subscription) == Resync("reconnected")
        # Live again on the same subscriptions, without subscribing anew.
        await bus.publish_many([("a", "after"), ("b", "after")])
        assert [await next_item(s) for s in (a1, a2, b)] == ["after"] * 3
    messages = [record.getMessage() for record in caplog.records]
    assert any("connection lost" in message for message in messages)
    assert any("reconnected" in message for message in messages)


async def test_while_redis_is_down_publish_fails_fast_and_subscribers_wait_for_resync(
    own_redis: RedisServer,
) -> None:
    async with connected(own_redis.url) as bus, bus.subscribe("a") as early:
        await asyncio.to_thread(own_redis.stop)

        async with asyncio.timeout(STEP):  # no hang on a dead broker
            # The ports' one outage error (UNAVAILABLE to clients), from the Redis error.
            with pytest.raises(Unavailable) as failed:
                await bus.publish_many([("a", "lost")])
            assert isinstance(failed.value, BusUnavailable)
            assert type(failed.value.__cause__).__module__.startswith("redis.")
            with pytest.raises(Unavailable):
                await bus.ping()
        await assert_silent(early)  # not ended by the outage
        async with bus.subscribe("b") as late:  # subscribing during the outage works too
            await asyncio.to_thread(own_redis.start)

            assert await next_item(early) == Resync("reconnected")
            assert await next_item(late) == Resync("reconnected")
            await bus.ping()
            await bus.publish_many([("a", "back"), ("b", "back")])
            assert await next_item(early) == "back"
            assert await next_item(late) == "back"


async def test_a_dropped_pubsub_connection_resyncs_even_though_redis_stayed_up(
    own_redis: RedisServer,
) -> None:
    # redis-py would reconnect and resubscribe on its own here, silently losing what was
    # published in between; the bus must notice and send Resync.
    admin = Redis.from_url(own_redis.url)
    try:
        async with connected(own_redis.url) as bus, bus.subscribe("a") as subscription:
            assert await admin.client_kill_filter(_type="pubsub") == 1
            assert await next_item(subscription) == Resync("reconnected")
            await bus.publish_many([("a", "live")])
            assert await next_item(subscription) == "live"
    finally:
        await admin.aclose()


async def test_a_bus_started_while_redis_is_down_connects_when_it_comes_up(
    own_redis: RedisServer,
) -> None:
    own_redis.stop()
    async with connected(own_redis.url) as bus, bus.subscribe("a") as subscription:
        with pytest.raises(BusUnavailable):
            await bus.ping()
        await asyncio.to_thread(own_redis.start)
        assert await next_item(subscription) == Resync("reconnected")
        await bus.publish_many([("a", "up")])
        assert await next_item(subscription) == "up"


async def test_a_subscriber_that_falls_behind_gets_resync_in_bounded_memory(bus_url: str) -> None:
    # Trap 4: broadcaster's queues grow without bound behind a subscriber that does not read.
    max_queue = 5
    total = 5 * max_queue
    async with (
        connected(bus_url, max_queue=max_queue) as bus,
        bus.subscribe("busy") as slow,
        bus.subscribe("busy") as fast,
    ):
        assert isinstance(slow, Subscription)
        largest = 0
        for number in range(total):
            await bus.publish_many([("busy", str(number))])
            assert await next_item(fast) == str(number)  # the fast one misses nothing
            largest = max(largest, slow.pending)
        assert largest <= max_queue

        assert await next_item(slow) == Resync("overflow")
        rest = [await next_item(slow) for _ in range(slow.pending)]
        assert rest == [str(number) for number in range(total - len(rest), total)]
        # Once it has caught up it gets messages again.
        await bus.publish_many([("busy", "later")])
        assert await next_item(fast) == "later"
        assert await next_item(slow) == "later"


async def test_channel_prefix_isolates_buses_sharing_one_redis(redis_server: RedisServer) -> None:
    run = uuid.uuid4().hex
    async with (
        connected(redis_server.url, prefix=f"one-{run}:") as one,
        connected(redis_server.url, prefix=f"two-{run}:") as two,
        one.subscribe("room") as first,
        two.subscribe("room") as second,
    ):
        await one.publish_many([("room", "for one")])
        assert await next_item(first) == "for one"
        await two.publish_many([("room", "for two")])
        assert await next_item(second) == "for two"  # not "for one"
        await assert_silent(first)
        await assert_silent(second)
        assert await wire_subscribers(redis_server.url, f"one-{run}:room") == 1


async def test_publish_many_delivers_to_several_channels_in_order(bus: Bus) -> None:
    async with bus.subscribe("a") as a, bus.subscribe("b") as b:
        await bus.publish_many([])
        await bus.publish_many([("a", "1"), ("b", "1"), ("a", "2"), ("b", "2"), ("a", "3")])
        assert [await next_item(a) for _ in range(3)] == ["1", "2", "3"]
        assert [await next_item(b) for _ in range(2)] == ["1", "2"]
        await assert_silent(a)
        await assert_silent(b)


async def test_disconnect_ends_subscriptions_and_refuses_publishing(bus_url: str) -> None:
    bus = BroadcastBus(bus_url, channel_prefix=f"test-{uuid.uuid4().hex}:")
    await bus.connect()
    await bus.ping()
    async with bus.subscribe("a") as subscription:
        await bus.disconnect()
        async with asyncio.timeout(STEP):
            assert [item async for item in subscription] == []
    with pytest.raises(BusUnavailable):
        await bus.publish_many([("a", "x")])
    with pytest.raises(BusUnavailable):
        await bus.ping()
    with pytest.raises(BusUnavailable):
        async with bus.subscribe("a"):
            pass
