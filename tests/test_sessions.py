"""Sessions: a revoked device loses its sockets everywhere, devices can be listed and revoked,
a password change logs out every other device, sockets count as activity, and the legacy
WebSocket protocol takes one connection_init, in time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from infra.migrate import migrate
from tests.support.client import Subscription, WsClient, ws_connect
from tests.support.database_dump import dump_all_tables, dump_settings_tables
from tests.support.helpers import EVENTS, PASSWORD, USER_FIELDS, Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.waiting import until

ME = "query { me { id } }"
DEVICES = "query { devices { id name createdAt lastActiveAt current } }"
REVOKE = "mutation R($id: ID!) { revokeDevice(id: $id) }"
CHANGE = "mutation C($old: String!, $new: String!) { changePassword(oldPassword: $old, newPassword: $new) }"
NEW_PASSWORD = "a brand new horse battery"


async def outcome(socket: WsClient, sub: Subscription, timeout: float = 10) -> str:
    """How an operation on a socket went: "data", its error code, or "closed <code>"."""
    get = asyncio.ensure_future(sub.queue.get())
    either: list[asyncio.Future[Any]] = [get, socket.closed]
    done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if get not in done:
        get.cancel()
        assert socket.closed.done(), "neither an answer nor a close"
        return f"closed {socket.closed.result()[0]}"
    message: dict[str, Any] = get.result()
    errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
    if not errors:
        return "data"
    return str(errors[0].get("extensions", {}).get("code"))


async def attempt(socket: WsClient, query: str) -> str:
    """Sends an operation and tells how it went (see `outcome`), also when the socket is closed already."""
    try:
        sub = await socket.subscribe(query)
    except ConnectionClosed:
        return f"closed {(await asyncio.shield(socket.closed))[0]}"
    return await outcome(socket, sub)


async def closed_with(socket: WsClient, timeout: float = 10) -> int | None:
    """The close code the server ended the socket with (fails if it stays open)."""
    code, _ = await asyncio.wait_for(asyncio.shield(socket.closed), timeout)
    return code


async def login(api: Api, username: str, password: str = PASSWORD, *, device_name: str = "laptop") -> Person:
    data = await api.anonymous.data(
        "mutation L($u: String!, $p: String!, $d: String) { login(username: $u, password: $p, deviceName: $d) "
        "{ token user { id } device { id } } }",
        u=username,
        p=password,
        d=device_name,
    )
    payload = data["login"]
    return Person(api, username, payload["token"], payload["user"]["id"], payload["device"]["id"])


@pytest.fixture
def shared_production(empty_postgres_url: str, redis_target: RedisTarget) -> str:
    """A migrated PostgreSQL database of this test's own (servers sharing it may sweep it)."""
    asyncio.run(migrate(empty_postgres_url))
    return empty_postgres_url


# Item 1: a revoked device loses its open WebSockets at once.


async def test_item_01_logout_over_http_closes_the_devices_sockets(api: Api) -> None:
    phone = await api.register("alice")
    laptop = await phone.other_device("laptop")
    async with phone.socket() as phone_socket, laptop.socket() as laptop_socket:
        await phone_socket.subscribe(EVENTS)
        assert await outcome(laptop_socket, await laptop_socket.subscribe(ME)) == "data"
        await phone.data("mutation { logout }")
        assert await closed_with(phone_socket) == 4403
        # The other device keeps its socket.
        assert await outcome(laptop_socket, await laptop_socket.subscribe(ME)) == "data"


async def test_item_01_operations_on_a_socket_after_its_logout_are_refused(api: Api) -> None:
    person = await api.register("bob")
    async with person.socket() as socket:
        assert await outcome(socket, await socket.subscribe("mutation { logout }")) in {"data", "closed 4403"}
        # Sent right after the answer, on the same socket: it races the close.
        assert await attempt(socket, ME) in {"UNAUTHENTICATED", "closed 4403"}
        assert await closed_with(socket) == 4403
    assert await person.error(ME) == "UNAUTHENTICATED"


async def test_item_01_revocation_closes_sockets_on_every_process(
    shared_production: str, redis_target: RedisTarget
) -> None:
    settings = production_settings(shared_production, redis_target)
    with ThreadServer(settings) as first, ThreadServer(settings) as second:
        on_first = Api(url=first.url, ws_url=first.ws_url, mode="production")
        on_second = Api(url=second.url, ws_url=second.ws_url, mode="production")
        phone = await on_second.register("carol")
        laptop = await login(on_first, phone.username, device_name="laptop")
        tablet = await login(on_first, phone.username, device_name="tablet")
        async with laptop.socket() as laptop_socket, tablet.socket() as tablet_socket:
            laptop_events = await laptop_socket.subscribe(EVENTS)
            assert await outcome(tablet_socket, await tablet_socket.subscribe(ME)) == "data"
            # Revoked through the other process: the socket on this one closes.
            assert (await phone.data(REVOKE, id=laptop.device_id))["revokeDevice"] is True
            assert await outcome(laptop_socket, laptop_events) in {"UNAUTHENTICATED", "closed 4403"}
            assert await closed_with(laptop_socket) == 4403
            assert await outcome(tablet_socket, await tablet_socket.subscribe(ME)) == "data"
            await phone.data(CHANGE, old=PASSWORD, new=NEW_PASSWORD)
            assert await closed_with(tablet_socket) == 4403
        async with phone.socket() as phone_socket:
            await phone.data("mutation { logout }")  # through the second process
            assert await closed_with(phone_socket) == 4403


async def test_item_01_expired_devices_lose_their_sockets(shared_production: str, redis_target: RedisTarget) -> None:
    # The socket's process keeps its devices active only every few minutes; the other
    # process expires devices idle for two seconds.
    settings = production_settings(shared_production, redis_target)
    sweeping = production_settings(
        shared_production, redis_target, device_inactivity_days=2 / 86400, sweep_interval_seconds=0.5
    )
    with ThreadServer(settings) as holder:
        api = Api(url=holder.url, ws_url=holder.ws_url, mode="production")
        person = await api.register("dave")
        async with person.socket() as socket:
            await socket.subscribe(EVENTS)
            with ThreadServer(sweeping):
                assert await closed_with(socket, timeout=20) == 4403
        assert await person.error(ME) == "UNAUTHENTICATED"


# Item 2: a user sees their devices and cuts off a stolen token.


async def test_item_02_devices_lists_the_viewers_own_devices(api: Api) -> None:
    phone = await api.register("erin", device_name="phone")
    laptop = await phone.other_device("laptop")
    stranger = await api.register("frank")
    devices = (await phone.data(DEVICES))["devices"]
    assert {(d["id"], d["name"], d["current"]) for d in devices} == {
        (phone.device_id, "phone", True),
        (laptop.device_id, "laptop", False),
    }
    assert all(d["createdAt"] and d["lastActiveAt"] for d in devices)
    assert [d["id"] for d in (await stranger.data(DEVICES))["devices"]] == [stranger.device_id]
    assert [d["current"] for d in (await laptop.data(DEVICES))["devices"] if d["id"] == laptop.device_id] == [True]


async def test_item_02_revoke_device_cuts_off_a_stolen_token(api: Api, request: pytest.FixtureRequest) -> None:
    owner, sender = await api.people("grace", "heidi")
    thief = await owner.other_device("stolen laptop")
    direct = await sender.direct_with(owner)
    secret = f"pending-for-the-thief-{json.dumps(thief.device_id)}-{owner.username}"
    await sender.send(direct, secret)
    await owner.drain()
    assert secret in await dump_all_tables(api, request), "the stolen device has not received it yet"
    async with thief.socket() as socket:
        stream = await socket.subscribe(EVENTS)
        while (await stream.next())["events"]["__typename"] != "MessageEvent":
            pass  # the thief's replay, up to the pending message
        assert (await owner.data(REVOKE, id=thief.device_id))["revokeDevice"] is True
        assert await outcome(socket, stream) in {"UNAUTHENTICATED", "closed 4403"}
        assert await closed_with(socket) == 4403
    assert await thief.error(ME) == "UNAUTHENTICATED"
    assert await thief.error(REVOKE, id=owner.device_id) == "UNAUTHENTICATED"
    assert secret not in await dump_all_tables(api, request), "the revoked device's pending events are dropped"
    assert [d["id"] for d in (await owner.data(DEVICES))["devices"]] == [owner.device_id]
    # Only the viewer's own devices.
    assert await owner.error(REVOKE, id=sender.device_id) == "NOT_FOUND"
    assert await owner.error(REVOKE, id=thief.device_id) == "NOT_FOUND"
    assert await owner.error(REVOKE, id="nonsense") == "NOT_FOUND"
    assert (await sender.data(ME))["me"]["id"] == sender.user_id


async def test_item_02_change_password_logs_out_every_other_device(api: Api) -> None:
    phone = await api.register("ivan")
    thief = await phone.other_device("stolen")
    assert await phone.error(CHANGE, old="not the password", new=NEW_PASSWORD) == "UNAUTHENTICATED"
    assert await phone.error(CHANGE, old=PASSWORD, new="short") == "BAD_USER_INPUT"
    assert (await thief.data(ME))["me"]["id"] == thief.user_id, "failed changes revoke nothing"
    async with thief.socket() as socket:
        assert (await phone.data(CHANGE, old=PASSWORD, new=NEW_PASSWORD))["changePassword"] is True
        assert await closed_with(socket) == 4403
    assert await thief.error(ME) == "UNAUTHENTICATED"
    assert (await phone.data(ME))["me"]["id"] == phone.user_id, "the current device stays logged in"
    assert [d["current"] for d in (await phone.data(DEVICES))["devices"]] == [True]
    assert (
        await api.anonymous.error(
            "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
            u=phone.username,
            p=PASSWORD,
        )
    ).code == "UNAUTHENTICATED"
    assert (await login(api, phone.username, NEW_PASSWORD)).user_id == phone.user_id


# Item 3: a device active only over its WebSocket is not swept as idle.


@pytest.fixture
def quick_expiry(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = embedded_settings(tmp_path, device_inactivity_days=4 / 86400, sweep_interval_seconds=0.5)
    with ThreadServer(settings) as server:
        yield server


async def test_item_03_a_device_holding_a_socket_stays_active(quick_expiry: ThreadServer) -> None:
    api = Api(url=quick_expiry.url, ws_url=quick_expiry.ws_url, mode="embedded")
    connected = await api.register("connected")
    idle_name = f"idle {connected.username}"
    await connected.other_device(idle_name)
    async with connected.socket() as socket:
        await socket.subscribe(EVENTS)

        # Watched in the database: a request of the idle device would count as activity.
        async def idle_expired() -> bool:
            return idle_name not in await dump_settings_tables(quick_expiry.settings)

        await until(idle_expired, "the idle device to expire", timeout=20, every=0.2)
        assert not socket.closed.done(), "the connected device's socket was closed"
    assert (await connected.data(ME))["me"]["id"] == connected.user_id


# Item 14: the legacy graphql-ws protocol takes one connection_init, and in time.


async def test_item_14_legacy_protocol_refuses_a_second_connection_init(api: Api) -> None:
    person, watcher = await api.people("judy", "watcher")
    await person.direct_with(watcher)  # online status is shown to whom the person engaged with
    init = json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {person.token}"}})
    async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-ws")]) as socket:
        await socket.send(init)
        assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "connection_ack"
        await socket.send(init)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), 10)
        assert socket.close_code == 4429
    # Counted once, so gone once closed.
    query = f"query U($id: ID!) {{ user(id: $id) {{ {USER_FIELDS} }} }}"
    async with person.socket():
        assert (await watcher.data(query, id=person.user_id))["user"]["online"], "online is visible to the watcher"

    async def offline() -> bool:
        return not (await watcher.data(query, id=person.user_id))["user"]["online"]

    await until(offline, "the user to show offline after the socket closed", timeout=5, every=0.1)


@pytest.mark.parametrize("protocol", ["graphql-ws", "graphql-transport-ws"])
async def test_item_14_sockets_that_never_init_are_closed(tmp_path: Path, protocol: str) -> None:
    with ThreadServer(embedded_settings(tmp_path, connection_init_timeout_seconds=0.5)) as server:
        async with connect(server.ws_url, subprotocols=[Subprotocol(protocol)]) as socket:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
            assert socket.close_code == 4408
        # A socket that does init in time stays open.
        person = await Api(url=server.url, ws_url=server.ws_url, mode="embedded").register("kim")
        async with ws_connect(server.ws_url, person.token) as ws:
            # The marker: a socket opened after it that never inits. Once the server closed that
            # one, this one's timeout would have run out too, had the init not stopped it.
            async with connect(server.ws_url, subprotocols=[Subprotocol(protocol)]) as later:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(later.recv(), 10)
                assert later.close_code == 4408
            assert await outcome(ws, await ws.subscribe(ME)) == "data"
