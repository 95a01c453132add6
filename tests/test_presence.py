"""Presence (issue 8): the registry across processes, dead and stopping processes, the `presence` stream, last seen."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from infra.bus import BroadcastBus, Resync
from infra.presence_hub import PresenceHub
from infra.presence_redis import RedisPresence
from resolvers.records import PresenceChange
from tests.support.client import Json, Subscription
from tests.support.database_dump import dump_all_tables
from tests.support.helpers import Api, Person
from tests.support.processes import ProcessServer
from tests.support.services import RedisTarget
from tests.support.settings import suite_process_env
from tests.support.streams import PRESENCE, next_state, watching

SEEN = "query U($id: ID!) { user(id: $id) { online lastSeen } }"


async def online_seen(sub: Subscription) -> Json:
    """The first state showing the user online.

    The watch and the user's socket open concurrently: the watch's first state may be taken
    just before the socket counts (offline), and the transition follows.
    """
    state = await next_state(sub)
    if state["online"] is False:
        state = await next_state(sub)
    return state


async def refusal(sub: Subscription) -> str:
    """The error code a subscription ended with."""
    message = await asyncio.wait_for(sub.queue.get(), 10)
    errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
    assert errors, f"expected a refusal, got {message}"
    return str(errors[0]["extensions"]["code"])


def parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


def processes(tmp_path: Path, env: dict[str, str], *names: str) -> list[ProcessServer]:
    return [ProcessServer(env, log_path=tmp_path / f"{name}.log") for name in names]


async def test_a_watcher_on_another_process_sees_online_then_offline(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    one, two = processes(tmp_path, suite_process_env(migrated_postgres, redis_target), "one", "two")
    async with one, two:
        alice = await Api(one.url, one.ws_url, "production").register("alice")
        bob = await Api(two.url, two.ws_url, "production").register("bob")
        await alice.direct_with(bob)
        async with watching(bob, alice) as presence:
            first = await next_state(presence)
            assert first["user"]["id"] == alice.user_id
            assert first["online"] is False
            async with alice.socket():
                online = await next_state(presence)
                assert online["online"] is True
                assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is True
                # Transitions only: activity while online is not an event. One it caused would be
                # published before the offline transition below, and read in its place.
                await alice.data("mutation { heartbeat }")
            offline = await next_state(presence)
            assert offline["online"] is False
            assert offline["lastSeen"] is not None
            assert parsed(offline["lastSeen"]) >= parsed(online["lastSeen"])
            assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is False


async def test_a_killed_process_drops_out_within_the_bound(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    # Liveness TTL 2 s: a dead process's users are offline within about 2.7 s (TTL + a refresh period).
    env = {**suite_process_env(migrated_postgres, redis_target), "PARLEY_PRESENCE_NODE_TTL_SECONDS": "2"}
    one, two = processes(tmp_path, env, "doomed", "survivor")
    async with one, two:
        alice = await Api(one.url, one.ws_url, "production").register("alice")
        bob = await Api(two.url, two.ws_url, "production").register("bob")
        await alice.direct_with(bob)
        async with watching(bob, alice) as presence, alice.socket():
            assert (await online_seen(presence))["online"] is True
            os.kill(one.pid, signal.SIGKILL)
            offline = await next_state(presence, timeout=15)
            assert offline["online"] is False
            assert offline["lastSeen"] is not None
            assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is False


async def test_a_stopping_process_takes_its_users_offline(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    # A TTL far beyond the test: only the clean shutdown itself can take alice offline in time.
    env = {**suite_process_env(migrated_postgres, redis_target), "PARLEY_PRESENCE_NODE_TTL_SECONDS": "600"}
    one, two = processes(tmp_path, env, "stopping", "staying")
    async with one, two:
        alice = await Api(one.url, one.ws_url, "production").register("alice")
        bob = await Api(two.url, two.ws_url, "production").register("bob")
        await alice.direct_with(bob)
        async with watching(bob, alice) as presence, alice.socket():
            assert (await online_seen(presence))["online"] is True
            await asyncio.to_thread(one.stop)
            assert (await next_state(presence, timeout=10))["online"] is False
            assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is False


async def test_two_devices_keep_a_user_online_until_both_leave(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    laptop = await alice.other_device("laptop")
    await alice.direct_with(bob)
    async with watching(bob, alice) as presence:
        assert (await next_state(presence))["online"] is False
        async with laptop.socket():
            async with alice.socket():
                assert (await next_state(presence))["online"] is True
            # The laptop is still connected. No signal follows the server's handling of the closed
            # socket (the close handshake ends before it), so a wrong "offline" gets a bounded moment.
            await presence.expect_silence(0.5)
            assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is True
        assert (await next_state(presence))["online"] is False


async def test_heartbeat_updates_last_seen_and_writes_nothing_to_the_database(
    api: Api, request: pytest.FixtureRequest
) -> None:
    alice, bob = await api.people("alice", "bob")
    await alice.direct_with(bob)
    before = (await bob.data(SEEN, id=alice.user_id))["user"]["lastSeen"]
    assert before is not None
    rows = await dump_all_tables(api, request)
    stored = (await alice.data("mutation { heartbeat }"))["heartbeat"]
    assert await dump_all_tables(api, request) == rows
    after = (await bob.data(SEEN, id=alice.user_id))["user"]["lastSeen"]
    assert parsed(after) == parsed(stored)
    assert parsed(after) > parsed(before)


async def test_watching_a_stranger_or_too_many_users_is_refused(api: Api) -> None:
    alice, bob, eve = await api.people("alice", "bob", "eve")
    await alice.direct_with(bob)
    async with eve.socket() as socket:
        assert await refusal(await socket.subscribe(PRESENCE, ids=[alice.user_id])) == "FORBIDDEN"
        # A partner among strangers, or an id that names nobody: refused all the same.
        assert await refusal(await socket.subscribe(PRESENCE, ids=[eve.user_id, "999999999"])) == "FORBIDDEN"
    async with bob.socket() as socket:
        too_many = [alice.user_id] + [str(10**9 + n) for n in range(100)]
        assert await refusal(await socket.subscribe(PRESENCE, ids=too_many)) == "BAD_USER_INPUT"
        # Watching oneself and a partner is fine; 100 ids (repeats count once) too.
        allowed = await socket.subscribe(PRESENCE, ids=[bob.user_id] + [alice.user_id] * 100)
        states = {(await next_state(allowed))["user"]["id"] for _ in range(2)}
        assert states == {bob.user_id, alice.user_id}


async def test_presence_events_follow_the_privacy_rules(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    await alice.direct_with(bob)
    await carol.direct_with(bob)
    await alice.data("mutation { setPrivacy(hideLastSeen: true) { id } }")
    await carol.data("mutation B($u: ID!) { blockUser(userId: $u) }", u=bob.user_id)
    async with watching(bob, alice, carol) as presence:
        initial = {s["user"]["id"]: s for s in [await next_state(presence), await next_state(presence)]}
        assert initial[alice.user_id]["lastSeen"] is None
        # carol blocked bob: he is not told, she just never shows online.
        assert initial[carol.user_id] == {"online": False, "lastSeen": None, "user": {"id": carol.user_id}}
        # A socket is counted, and its transition published, before it is acknowledged: a state of
        # carol's would come before alice's below.
        async with carol.socket():
            async with alice.socket():
                assert await next_state(presence) == {"online": True, "lastSeen": None, "user": {"id": alice.user_id}}
            assert await next_state(presence) == {"online": False, "lastSeen": None, "user": {"id": alice.user_id}}


async def _close_code(socket: ClientConnection) -> int | None:
    """Reads (and drops) messages until the server closes; its close code."""
    try:
        async for _ in socket:  # keep-alives
            pass
    except ConnectionClosed:
        pass
    return socket.close_code


async def _client_closes(api: Api, alice: Person) -> None:
    async with alice.socket():
        pass


async def _second_init(api: Api, alice: Person, protocol: str) -> None:
    init = json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {alice.token}"}})
    async with connect(api.ws_url, subprotocols=[Subprotocol(protocol)]) as socket:
        await socket.send(init)
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(init)
        assert await _close_code(socket) == 4429


async def _transport_ws_second_init(api: Api, alice: Person) -> None:
    await _second_init(api, alice, "graphql-transport-ws")


async def _legacy_second_init(api: Api, alice: Person) -> None:
    await _second_init(api, alice, "graphql-ws")


async def _crash_mid_handshake(api: Api, alice: Person) -> None:
    async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket:
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {alice.token}"}}
        await socket.send(json.dumps(init))
        socket.transport.abort()  # gone before the server could answer


async def _refused_token(api: Api, alice: Person) -> None:
    async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer nope"}}))
        assert await _close_code(socket) == 4403


async def _ended_by(api: Api, alice: Person, end: Callable[[Person], Awaitable[object]]) -> None:
    other = await alice.other_device("tablet")
    async with other.socket() as socket:
        await end(other)
        code, _ = await asyncio.wait_for(socket.closed, 10)
        assert code == 4403


async def _logout(api: Api, alice: Person) -> None:
    await _ended_by(api, alice, lambda other: other.data("mutation { logout }"))


async def _revoked(api: Api, alice: Person) -> None:
    async def revoke(other: Person) -> None:
        await alice.data("mutation R($id: ID!) { revokeDevice(id: $id) }", id=other.device_id)

    await _ended_by(api, alice, revoke)


WAYS: dict[str, Callable[[Api, Person], Awaitable[None]]] = {
    "client close": _client_closes,
    "second connection_init": _transport_ws_second_init,
    "second connection_init (legacy graphql-ws)": _legacy_second_init,
    "crash mid-handshake": _crash_mid_handshake,
    "refused token": _refused_token,
    "logout": _logout,
    "revoked device": _revoked,
}


@pytest.mark.parametrize("way", list(WAYS))
async def test_every_way_a_socket_ends_leaves_the_count_exact(api: Api, way: str) -> None:
    alice, bob = await api.people("alice", "bob")
    await alice.direct_with(bob)
    async with watching(bob, alice) as presence:
        assert (await next_state(presence))["online"] is False
        async with alice.socket():  # keeps alice online: one decrement too many would show her offline
            assert (await next_state(presence))["online"] is True
            await WAYS[way](api, alice)
            # No signal follows the server's handling of a socket's end (an abort has no handshake at
            # all), so a wrong "offline" gets a bounded moment to show.
            await presence.expect_silence(0.5)
            assert (await bob.data(SEEN, id=alice.user_id))["user"]["online"] is True
        # One increment too many would keep her online for good.
        assert (await next_state(presence))["online"] is False


async def test_a_swept_node_that_is_still_alive_registers_again(redis_target: RedisTarget) -> None:
    redis = Redis.from_url(redis_target.url)
    prefix = f"{redis_target.prefix}presence-{uuid.uuid4().hex[:8]}:"
    paused, other, third = (RedisPresence(redis, prefix=prefix, node_id=name) for name in ("paused", "other", "third"))
    try:
        for node in (paused, other, third):
            await node.refresh()
        await paused.connected(1)
        await paused.connected(1)
        await paused.connected(2)
        await other.connected(2)
        assert await other.online([1, 2, 3]) == {1, 2}
        # `paused` misses its refreshes: its liveness key expires, two processes sweep at once.
        await redis.delete(f"{prefix}node:paused")
        swept = [*await other.sweep(), *await third.sweep()]
        assert [(c.user_id, c.online) for c in swept] == [(1, False)], "announced once, and 2 is still on `other`"
        assert (await other.states([1]))[1].last_seen is not None
        assert await other.online([1, 2]) == {2}
        # It was only paused: its next refresh puts its sockets back.
        await paused.refresh()
        assert await other.online([1, 2]) == {1, 2}
        await paused.disconnected(1)
        assert await other.online([1]) == {1}
        await paused.disconnected(1)
        await paused.disconnected(1)  # one more than counted: ignored
        assert await other.online([1]) == set()
        # A clean shutdown takes its users with it, and a stopped node counts nothing more.
        await other.close()
        assert await paused.online([2]) == {2}
        await paused.close()
        await paused.connected(2)
        assert await third.online([1, 2]) == set()
    finally:
        await redis.aclose()


async def test_a_watcher_that_falls_behind_is_told_to_read_again() -> None:
    bus = BroadcastBus("memory://")
    await bus.connect()
    hub = PresenceHub(bus, max_queue=2)
    try:
        async with hub.watch([1]) as feed, hub.watch([2]) as other:
            await hub.publish([PresenceChange(1, online, None, seq) for seq, online in enumerate([True, False] * 3, 1)])
            await hub.publish([PresenceChange(2, True, None, 1)])
            assert isinstance(await anext(feed), Resync), "three changes for a queue of two: read the state again"
            batch = await anext(other)
            assert not isinstance(batch, Resync), "nobody else is held up"
            assert [c.seq for c in batch] == [1]
    finally:
        await bus.disconnect()


async def test_a_stranger_watching_you_sees_you_offline_until_you_write_in_their_group(api: Api) -> None:
    """Review 2, item 9: the presence stream follows the same rule as `user { online lastSeen }`.

    Her first message there is no transition, yet the open stream shows her at once.
    """
    alice, eve, carol = await api.people("alice", "eve", "carol")
    group = await eve.create_group("not your friends", members=[alice])
    await alice.direct_with(carol)  # carol's stream shows when alice's transitions have happened
    async with watching(eve, alice) as presence, watching(carol, alice) as friend:
        assert await next_state(presence) == {"online": False, "lastSeen": None, "user": {"id": alice.user_id}}
        assert (await next_state(friend))["online"] is False
        async with alice.socket():
            assert (await online_seen(friend))["online"] is True
            # Alice is online and eve is not told: a state told now would come before the one her
            # message shows, and the last one read below would not be the offline one.
            await alice.send(group, "who are you?")
            shown = await next_state(presence)
            assert (shown["online"], shown["lastSeen"] is not None) == (True, True)
            async with watching(eve, alice) as fresh:
                now = await next_state(fresh)
                assert (now["online"], now["lastSeen"] is not None) == (True, True)
        assert (await next_state(friend))["online"] is False
        assert (await next_state(presence))["online"] is False
