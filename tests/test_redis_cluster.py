"""The messaging behaviours across two Parley processes on a three-master Redis Cluster.

Both processes run `parley serve` with `PARLEY_REDIS_CLUSTER=true` and the URL of one
node; the bus, the presence registry, the rate limits and the shared pipelines must
all work against the cluster, and the live notices must travel on sharded pub/sub,
spread over the masters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis
from prometheus_client import REGISTRY

from infra.bus import BusUnavailable, Resync
from infra.fanout import DEFAULT_SHARDS
from infra.presence_redis import RedisPresence
from infra.redis_cluster import ClusterBus, cluster_client, hash_tagged
from tests.support.client import Subscription
from tests.support.helpers import PASSWORD, Api, Person, unique_name
from tests.support.processes import ProcessServer
from tests.support.redis_cluster import ThrowawayCluster
from tests.support.services import RedisTarget
from tests.support.settings import suite_process_env
from tests.support.streams import before_marker, next_of
from tests.support.waiting import until

PREFIX = "parley-cluster-test:"
LOGIN = "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }"
PRESENCE = "subscription P($ids: [ID!]!) { presence(userIds: $ids) { online lastSeen user { id } } }"
TYPING = "mutation T($c: ID!) { setTyping(conversationId: $c, typing: true) }"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    """Three masters, no replicas, on loopback ports of their own."""
    with ThrowawayCluster() as started:
        yield started


@pytest.fixture(scope="module")
def apis(
    cluster: ThrowawayCluster, migrated_postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, Api]]:
    """Two `parley serve` processes on the cluster (given the first node's URL only) and the suite's PostgreSQL."""
    env = {
        **suite_process_env(migrated_postgres, RedisTarget(url=cluster.url, prefix=PREFIX)),
        "PARLEY_REDIS_CLUSTER": "true",
        "PARLEY_LOGIN_MAX_FAILURES": "3",
    }
    logs = tmp_path_factory.mktemp("cluster")
    with ProcessServer(env, log_path=logs / "one.log") as one, ProcessServer(env, log_path=logs / "two.log") as two:
        yield Api(one.url, one.ws_url, "production"), Api(two.url, two.ws_url, "production")


@asynccontextmanager
async def all_events(people: list[Person]) -> AsyncIterator[list[Subscription]]:
    """The live event streams of all these people, each on its own socket to its own process."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(person.events()) for person in people]


def on(api: Api, person: Person) -> Person:
    """The same device, talking to another process."""
    return Person(api, person.username, person.token, person.user_id, person.device_id)


async def test_a_direct_message_crosses_processes_with_delivered_and_read_receipts(apis: tuple[Api, Api]) -> None:
    one, two = apis
    alice, bob = await one.register("alice"), await two.register("bob")
    direct = await alice.direct_with(bob)
    async with alice.events() as alice_events, bob.events() as bob_events:
        sent = await alice.send(direct, "hello across the cluster")
        received = await next_of(bob_events, "MessageEvent")
        assert received["message"]["id"] == sent["id"]
        assert received["message"]["body"] == "hello across the cluster"

        await bob.acknowledge(str(received["cursor"]))
        delivered = await next_of(alice_events, "ReceiptEvent")
        assert (delivered["receipt"]["status"], delivered["receipt"]["messageId"]) == ("DELIVERED", sent["id"])
        await bob.mark_read(direct, sent["id"])
        read = await next_of(alice_events, "ReceiptEvent")
        assert (read["receipt"]["status"], read["receipt"]["messageId"]) == ("READ", sent["id"])


async def test_a_group_message_reaches_members_connected_to_either_process(apis: tuple[Api, Api]) -> None:
    one, two = apis
    owner = await one.register("owner")
    # Six members: their inbox channels (user id mod 16) fall on several masters.
    members = [await (one if n % 2 else two).register(f"member{n}") for n in range(6)]
    group = await owner.create_group("cluster", members=members)
    async with all_events(members) as streams:
        sent = await owner.send(group, "to everyone")
        for stream in streams:
            assert (await next_of(stream, "MessageEvent"))["message"]["id"] == sent["id"]


async def test_an_offline_recipient_replays_in_order_from_the_other_process(apis: tuple[Api, Api]) -> None:
    one, two = apis
    alice, bob = await one.register("alice"), await one.register("bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    for n in range(10):
        await alice.send(direct, f"message {n}")
    async with on(two, bob).events() as replay:
        bodies = [(await next_of(replay, "MessageEvent"))["message"]["body"] for _ in range(10)]
        assert await before_marker(replay, alice, direct) == []
    assert bodies == [f"message {n}" for n in range(10)]


async def test_typing_crosses_processes(apis: tuple[Api, Api]) -> None:
    one, two = apis
    alice, bob = await one.register("alice"), await two.register("bob")
    direct = await alice.direct_with(bob)
    async with bob.events() as bob_events:
        # Typing is not stored: the stream must be listening first, as a message sent now shows.
        await before_marker(bob_events, alice, direct)
        await alice.data(TYPING, c=direct)
        typing = await next_of(bob_events, "TypingEvent")
        assert (typing["user"]["id"], typing["typing"]) == (alice.user_id, True)


async def test_presence_is_seen_from_the_other_process(apis: tuple[Api, Api]) -> None:
    one, two = apis
    alice, bob = await one.register("alice"), await two.register("bob")
    await alice.direct_with(bob)
    async with bob.socket() as socket:
        presence = await socket.subscribe(PRESENCE, ids=[alice.user_id])
        assert (await presence.next())["presence"]["online"] is False
        async with alice.socket():
            assert (await presence.next())["presence"]["online"] is True
            seen = await bob.data("query U($id: ID!) { user(id: $id) { online } }", id=alice.user_id)
            assert seen["user"]["online"] is True
        offline = (await presence.next())["presence"]
        assert offline["online"] is False
        assert offline["lastSeen"] is not None


async def test_login_failures_are_counted_across_processes(apis: tuple[Api, Api]) -> None:
    one, two = apis
    person = await one.register("target")
    guesses = [await (one, two)[n % 2].anonymous.error(LOGIN, u=person.username, p=f"guess {n}") for n in range(4)]
    assert [g.code for g in guesses] == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]
    refused = await two.anonymous.error(LOGIN, u=person.username, p=PASSWORD)
    assert refused.code == "RATE_LIMITED", "locked out on both processes, even with the right password"


async def test_live_notices_use_sharded_channels_spread_over_the_masters(
    apis: tuple[Api, Api], cluster: ThrowawayCluster
) -> None:
    one, two = apis
    people = [await (one, two)[n % 2].register(f"listener{n}") for n in range(8)]
    async with all_events(people):
        # Each stream subscribes its shard's channel (on its process) before its replay runs.
        wanted = {f"{PREFIX}inbox:{int(person.user_id) % DEFAULT_SHARDS}" for person in people}
        await until(
            lambda: wanted <= set().union(*(shard_channels(port, PREFIX) for port in cluster.ports)),
            "every stream's shard channel",
        )
        inbox = {port: {c for c in shard_channels(port, PREFIX) if ":inbox:" in c} for port in cluster.ports}
        classic = set().union(*(classic_channels(port, PREFIX) for port in cluster.ports))
    assert sum(1 for channels in inbox.values() if channels) >= 2, f"inbox channels on one master only: {inbox}"
    assert len(set().union(*inbox.values())) >= 4, inbox
    assert all(cluster.port_of(c) == port for port, channels in inbox.items() for c in channels), (
        "each on its slot's master"
    )
    assert classic == set(), "nothing on classic pub/sub, which every node of the cluster would carry"


async def test_a_restarted_master_resyncs_its_channels_subscribers_only(cluster: ThrowawayCluster) -> None:
    prefix = f"{unique_name('bus')}:"
    channels = [f"c{n}" for n in range(30)]
    masters = {cluster.port_of(prefix + channel): channel for channel in channels}
    assert len(masters) == 3
    doomed, spared = masters[cluster.ports[0]], masters[cluster.ports[1]]
    bus = ClusterBus(cluster.url, channel_prefix=prefix, reconnect_max_delay=0.5)
    await bus.connect()
    try:
        async with bus.subscribe(doomed) as hit, bus.subscribe(spared) as untouched:
            await asyncio.to_thread(cluster.restart, cluster.ports[0])
            notice = await asyncio.wait_for(anext(hit), 10)
            assert isinstance(notice, Resync), "a subscriber whose master restarted may have missed notices"
            await publish_soon(bus, [(doomed, "after"), (spared, "elsewhere")])
            assert await asyncio.wait_for(anext(hit), 5) == "after"
            assert await asyncio.wait_for(anext(untouched), 5) == "elsewhere", "no Resync where nothing was lost"
    finally:
        await bus.disconnect()


async def test_a_subscriber_that_falls_behind_gets_one_resync(cluster: ThrowawayCluster) -> None:
    bus = ClusterBus(cluster.url, channel_prefix=f"{unique_name('bus')}:", max_queue=3)
    await bus.connect()
    try:
        async with bus.subscribe("slow") as slow:
            before = overflows()
            await bus.publish_many([("slow", str(n)) for n in range(10)])
            await until(lambda: overflows() > before, "the subscriber's queue to overflow")
            assert slow.pending <= 3
            assert isinstance(await asyncio.wait_for(anext(slow), 5), Resync)
    finally:
        await bus.disconnect()


def overflows() -> float:
    """Resyncs raised in this process because a subscriber's queue was full."""
    return REGISTRY.get_sample_value("parley_bus_resyncs_total", {"reason": "overflow"}) or 0.0


async def publish_soon(bus: ClusterBus, items: list[tuple[str, str]], within: float = 10) -> None:
    """Publishes once the cluster takes it again (a restarted master refuses for a moment)."""

    async def published() -> bool:
        try:
            await bus.publish_many(items)
        except BusUnavailable:
            return False
        return True

    await until(published, "the cluster to take a publish again", timeout=within, every=0.1)


async def test_a_channel_follows_its_slot_to_another_master(cluster: ThrowawayCluster) -> None:
    prefix = f"{unique_name('bus')}:"
    home, away = cluster.ports[0], cluster.ports[1]
    channel = next(f"c{n}" for n in range(100) if cluster.port_of(f"{prefix}c{n}") == home)
    bus = ClusterBus(cluster.url, channel_prefix=prefix, reconnect_max_delay=0.5)
    await bus.connect()
    try:
        async with bus.subscribe(channel) as feed:
            await asyncio.to_thread(cluster.move_slot, prefix + channel, away)
            try:
                notice = await asyncio.wait_for(anext(feed), 10)
                assert isinstance(notice, Resync), "notices published during the move may be lost"
                await publish_soon(bus, [(channel, "after the move")])
                assert await asyncio.wait_for(anext(feed), 5) == "after the move"
                assert prefix + channel in shard_channels(away, prefix)
                assert shard_channels(home, prefix) == set()
            finally:
                await asyncio.to_thread(cluster.move_slot, prefix + channel, home)
    finally:
        await bus.disconnect()


def shard_channels(port: int, prefix: str) -> set[str]:
    """The sharded channels with this prefix that the master on `port` has subscribers for."""
    node = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return {str(channel) for channel in node.pubsub_shardchannels(f"{prefix}*")}
    finally:
        node.close()


def classic_channels(port: int, prefix: str) -> set[str]:
    """The classic (cluster-wide) pub/sub channels with this prefix that the node on `port` has subscribers for."""
    node = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return {str(channel) for channel in node.pubsub_channels(f"{prefix}*")}
    finally:
        node.close()


async def test_a_dead_nodes_users_are_swept_offline_on_the_cluster(cluster: ThrowawayCluster) -> None:
    # The registry's scripts reach keys they build themselves: all must share the hash-tagged slot.
    client = cluster_client(cluster.url)
    prefix = hash_tagged(f"{unique_name('presence')}:", "presence")
    dead = RedisPresence(client, prefix=prefix, node_id="dead", node_ttl=0.3)
    alive = RedisPresence(client, prefix=prefix, node_id="alive")
    try:
        await dead.connected(1)
        await dead.connected(2)
        await alive.connected(2)
        assert await alive.online([1, 2, 3]) == {1, 2}

        # The dead node stops refreshing: its liveness key expires (Redis's clock: polled, not injected).
        async def expired() -> bool:
            return not await client.exists(f"{prefix}node:dead")

        await until(expired, "the dead node's liveness key to expire")
        await alive.refresh()
        assert [(c.user_id, c.online) for c in await alive.sweep()] == [(1, False)]
        assert await alive.online([1, 2]) == {2}, "still connected through the live node"
    finally:
        await client.aclose()
