"""Accounts and devices over the real API, in both modes."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.support.client import HttpClient, ws_connect
from tests.support.helpers import AUTH, PASSWORD, USER_FIELDS, Api, unique_name

REGISTER = f"mutation R($u: String!, $p: String!, $n: String) {{ register(username: $u, password: $p, displayName: $n) {{ {AUTH} }} }}"
LOGIN = f"mutation L($u: String!, $p: String!) {{ login(username: $u, password: $p) {{ {AUTH} }} }}"
ME = f"{{ me {{ {USER_FIELDS} }} }}"


async def test_register_login_me_round_trip(api: Api) -> None:
    username = unique_name("alice")
    registered = (await api.anonymous.data(REGISTER, u=username, p=PASSWORD, n="Alice A."))["register"]
    assert registered["user"]["username"] == username
    assert registered["user"]["displayName"] == "Alice A."

    logged_in = (await api.anonymous.data(LOGIN, u=username.upper(), p=PASSWORD))["login"]
    assert logged_in["user"]["id"] == registered["user"]["id"]
    assert logged_in["device"]["id"] != registered["device"]["id"], "each login is a new device"
    assert logged_in["token"] != registered["token"]

    me = (await HttpClient(api.url, logged_in["token"]).data(ME))["me"]
    assert me["id"] == registered["user"]["id"]
    assert me["lastSeen"] is not None, "activity records last seen"


async def test_taken_username_is_a_conflict(api: Api) -> None:
    username = unique_name("bob")
    await api.anonymous.data(REGISTER, u=username, p=PASSWORD)
    error = await api.anonymous.error(REGISTER, u=username.upper(), p=PASSWORD)
    assert error.code == "CONFLICT"
    assert "taken" in error.errors[0]["message"]


@pytest.mark.parametrize(
    ("username", "password", "mentions"),
    [
        ("ab", PASSWORD, "Usernames"),
        ("has space", PASSWORD, "Usernames"),
        ("x" * 33, PASSWORD, "Usernames"),
        ("valid_name", "short", "Passwords"),
        ("valid_name", "p" * 257, "Passwords"),
    ],
)
async def test_bad_registration_input_is_explained(api: Api, username: str, password: str, mentions: str) -> None:
    error = await api.anonymous.error(REGISTER, u=username, p=password)
    assert error.code == "BAD_USER_INPUT"
    assert mentions in error.errors[0]["message"]


async def test_too_long_display_name_is_refused(api: Api) -> None:
    error = await api.anonymous.error(REGISTER, u=unique_name(), p=PASSWORD, n="n" * 65)
    assert error.code == "BAD_USER_INPUT"


async def test_wrong_password_and_unknown_user_fail_alike(api: Api) -> None:
    person = await api.register("carol")
    wrong = await api.anonymous.error(LOGIN, u=person.username, p="not the password")
    unknown = await api.anonymous.error(LOGIN, u=unique_name("nobody"), p=PASSWORD)
    assert wrong.code == unknown.code == "UNAUTHENTICATED"
    assert wrong.errors[0]["message"] == unknown.errors[0]["message"]


async def test_repeated_failed_logins_are_rate_limited(api: Api) -> None:
    person = await api.register("dave")
    for _ in range(10):
        assert (await api.anonymous.error(LOGIN, u=person.username, p="guessing wrong")).code == "UNAUTHENTICATED"
    limited = await api.anonymous.error(LOGIN, u=person.username, p=PASSWORD)
    assert limited.code == "RATE_LIMITED", "even the right password waits out the window"


async def test_operations_need_a_token(api: Api) -> None:
    assert (await api.anonymous.error(ME)).code == "UNAUTHENTICATED"
    assert (await HttpClient(api.url, "forged-token").error(ME)).code == "UNAUTHENTICATED"
    body = await api.anonymous.post(ME, headers={"Authorization": "Basic abc"})
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_logout_revokes_only_that_device(api: Api) -> None:
    phone = await api.register("erin")
    laptop = await phone.other_device("laptop")
    assert (await phone.data("mutation { logout }"))["logout"] is True
    assert await phone.error(ME) == "UNAUTHENTICATED"
    assert (await laptop.data(ME))["me"]["id"] == phone.user_id


async def test_user_lookup_and_search(api: Api) -> None:
    viewer = await api.register("finder")
    target = await api.register("zeta")
    found = (await viewer.data(f"query U($id: ID!) {{ user(id: $id) {{ {USER_FIELDS} }} }}", id=target.user_id))["user"]
    assert found["username"] == target.username
    assert (await viewer.data('{ user(id: "999999999") { id } }'))["user"] is None
    assert (await viewer.data('{ user(id: "not-an-id") { id } }'))["user"] is None

    hits = await viewer.data("query S($p: String!) { searchUsers(prefix: $p) { username } }", p=target.username[:12])
    assert [h["username"] for h in hits["searchUsers"]] == [target.username]
    wildcard = await viewer.data('{ searchUsers(prefix: "%") { username } }')
    assert wildcard["searchUsers"] == [], "LIKE wildcards are matched literally"
    assert await viewer.error('{ searchUsers(prefix: "z", first: 1000) { id } }') == "BAD_USER_INPUT"
    assert await viewer.error('{ searchUsers(prefix: "") { id } }') == "BAD_USER_INPUT"


async def test_too_deep_query_is_rejected(api: Api) -> None:
    person = await api.register("deep")

    def nested(depth: int) -> str:
        # Depth as graphql-depth-limit counts it: root fields are at depth 0. It is
        # counted on the document, so the fields need not exist for the limit to apply.
        query = "id"
        for level in range(depth):
            query = f"f{level} {{ {query} }}"
        return f"{{ {query} }}"

    too_deep = await person.http.error(nested(11))
    assert too_deep.code == "BAD_USER_INPUT"
    assert any("exceeds maximum operation depth of 10" in e["message"] for e in too_deep.errors)
    allowed = await person.http.error(nested(10))
    assert not any("depth" in e["message"] for e in allowed.errors)


async def test_too_many_aliases_or_tokens_are_rejected(api: Api) -> None:
    person = await api.register("greedy")
    aliases = " ".join(f"a{n}: me {{ id }}" for n in range(31))
    too_many = await person.http.error(f"{{ {aliases} }}")
    assert too_many.code == "BAD_USER_INPUT"
    assert any("aliases" in e["message"] for e in too_many.errors)
    assert await person.data(f"{{ {' '.join(f'a{n}: me {{ id }}' for n in range(30))} }}")

    huge = await person.http.error("{ me { " + "id " * 2000 + "} }")
    assert huge.code == "BAD_USER_INPUT"
    assert any("tokens" in e["message"] for e in huge.errors)


async def test_invalid_query_gets_a_code_and_no_internals(api: Api) -> None:
    body = await api.anonymous.post("{ me { nonexistentField } }")
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    body = await api.anonymous.post("{ me { ")
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_websocket_with_wrong_token_is_closed_with_4403(api: Api) -> None:
    for payload in ({"authorization": "Bearer wrong"}, {}, {"Authorization": 42}):
        async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket:
            await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
            with pytest.raises(ConnectionClosed):
                await socket.recv()
            assert socket.close_code == 4403


async def test_websocket_accepts_the_token_under_either_spelling(api: Api) -> None:
    person = await api.register("ws")
    for key in ("authorization", "Authorization"):
        async with ws_connect(api.ws_url, None, payload={key: f"Bearer {person.token}"}) as socket:
            sub = await socket.subscribe(f"query {{ me {{ {USER_FIELDS} }} }}")
            assert (await sub.next())["me"]["id"] == person.user_id
