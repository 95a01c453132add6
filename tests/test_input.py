"""Odd input is the client's fault, never an internal error: ids, cursors, text (both modes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.support.client import HttpClient
from tests.support.helpers import AUTH, PASSWORD, Api, unique_name

REGISTER = (
    f"mutation R($u: String!, $p: String!, $n: String, $d: String) "
    f"{{ register(username: $u, password: $p, displayName: $n, deviceName: $d) {{ {AUTH} }} }}"
)
GROUP = "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { id title } }"
RENAME = "mutation N($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { id title } }"
DIRECT = "mutation D($u: ID!) { startDirectConversation(userId: $u) { id } }"
CONVERSATION = "query C($id: ID!) { conversation(id: $id) { id } }"
LOGIN = f"mutation L($u: String!, $p: String!) {{ login(username: $u, password: $p) {{ {AUTH} }} }}"
USER = "query U($id: ID!) { user(id: $id) { id } }"
PENDING = "query P($after: String, $first: Int) { pendingEvents(after: $after, first: $first) { __typename } }"
ACK = "mutation A($c: String!) { acknowledge(cursor: $c) }"
READ = "mutation R($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }"

# Digits `str.isdigit` accepts but `int` does not, and numbers past PostgreSQL's bigint.
NOT_NUMBERS = ["²", "1²", "١٢", "9223372036854775808", "99999999999999999999", "1" * 40]


async def test_item_12_odd_ids_name_nothing(api: Api) -> None:
    alice = await api.register("alice")
    for value in NOT_NUMBERS:
        assert (await alice.data(USER, id=value))["user"] is None, value
        assert await alice.error(DIRECT, u=value) == "NOT_FOUND", value
        assert await alice.error(CONVERSATION, id=value) == "NOT_FOUND", value


async def test_item_12_odd_cursors_and_message_ids_are_bad_input(api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    direct = await alice.direct_with(bob)
    number, conversation, sender, signature = (await alice.send(direct, "hi"))["id"].split(".")
    for value in NOT_NUMBERS:
        assert await alice.error(PENDING, after=value) == "BAD_USER_INPUT", value
        assert await alice.error(ACK, c=value) == "BAD_USER_INPUT", value
        for forged in (
            f"{value}.{conversation}.{sender}.{signature}",
            f"{number}.{value}.{sender}.{signature}",
            f"{number}.{conversation}.{sender}.{value}",
        ):
            assert await bob.error(READ, c=direct, m=[forged]) == "BAD_USER_INPUT", forged


async def test_item_12_integers_past_32_bits_are_bad_input(api: Api) -> None:
    alice = await api.register("alice")
    for first in (2**31, 2**63, 2**70, -(2**70)):
        assert await alice.error(PENDING, first=first) == "BAD_USER_INPUT"
    assert await alice.error(PENDING, first=2**31 - 1) == "BAD_USER_INPUT", "past the page limit"


async def error_code(url: str, token: str | None, query: str, **variables: Any) -> str:
    """The error code of a call whose JSON may hold lone surrogates (as `\\udXXX` escapes, as JSON allows)."""
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{url}/graphql", content=json.dumps({"query": query, "variables": variables}), headers=headers
        )
    errors = response.json()["errors"]
    code: str = errors[0]["extensions"]["code"]
    return code


@pytest.mark.parametrize("bad", ["nul\x00byte", "lone \ud800 surrogate", "\udfff"])
async def test_item_12_nul_and_lone_surrogates_are_bad_input(api: Api, bad: str) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    direct = await alice.direct_with(bob)
    send = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id } }"
    codes = [
        await error_code(api.url, alice.token, send, input={"conversationId": direct, "clientId": "c", "body": bad}),
        await error_code(api.url, alice.token, send, input={"conversationId": direct, "clientId": bad, "body": "x"}),
        await error_code(api.url, alice.token, GROUP, t=bad, m=[bob.user_id]),
        await error_code(api.url, alice.token, "query S($p: String!) { searchUsers(prefix: $p) { id } }", p=bad),
        await error_code(api.url, None, REGISTER, u=unique_name(), p=PASSWORD, n=bad),
        await error_code(api.url, None, REGISTER, u=unique_name(), p=PASSWORD + bad),
        await error_code(api.url, None, LOGIN, u=alice.username, p=PASSWORD + bad),
        await error_code(api.url, alice.token, USER, id=bad),
    ]
    assert codes == ["BAD_USER_INPUT"] * len(codes)
    assert all(event["__typename"] != "MessageEvent" for event in await bob.pending()), "nothing was stored"


async def test_item_12_nul_in_an_inline_literal_is_bad_input(api: Api) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    literal = f'mutation {{ createGroup(title: "a\\u0000b", memberIds: ["{bob.user_id}"]) {{ id }} }}'
    assert await alice.error(literal) == "BAD_USER_INPUT"
    block = f'mutation {{ createGroup(title: """a\x00b""", memberIds: ["{bob.user_id}"]) {{ id }} }}'
    assert await alice.error(block) == "BAD_USER_INPUT"
    default = 'mutation G($t: String! = "\\u0000", $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { id } }'
    assert await alice.error(default, m=[bob.user_id]) == "BAD_USER_INPUT"


INVISIBLE = [
    "evil\u202egnp.exe",  # right-to-left override
    "a\u202ab",
    "a\u2066b\u2069",  # isolates
    "zero\u200bwidth",
    "zw\u200dj",
    "word\u2060joiner",
    "\ufeffbom",
    "soft\u00adhyphen",
    "bell\x07",
]


@pytest.mark.parametrize("name", INVISIBLE)
async def test_item_12_names_refuse_bidi_and_zero_width_characters(api: Api, name: str) -> None:
    alice, bob = await api.register("alice"), await api.register("bob")
    assert (await api.anonymous.error(REGISTER, u=unique_name(), p=PASSWORD, n=name)).code == "BAD_USER_INPUT"
    assert (await api.anonymous.error(REGISTER, u=unique_name(), p=PASSWORD, d=name)).code == "BAD_USER_INPUT"
    assert await alice.error(GROUP, t=name, m=[bob.user_id]) == "BAD_USER_INPUT"
    group = (await alice.data(GROUP, t="fine", m=[bob.user_id]))["createGroup"]["id"]
    assert await alice.error(RENAME, c=group, t=name) == "BAD_USER_INPUT"


async def test_item_12_names_in_any_script_are_fine(api: Api) -> None:
    bob = await api.register("bob")
    for name in ("Zoë Ødegård", "日本語の名前", "مرحبا", "Ünïcödé 🎉", "tab\tand\nnewline"):
        registered = (await api.anonymous.data(REGISTER, u=unique_name(), p=PASSWORD, n=name, d=name))["register"]
        assert registered["user"]["displayName"] == " ".join(name.split())
        group = await HttpClient(api.url, registered["token"]).data(GROUP, t=name, m=[bob.user_id])
        assert group["createGroup"]["title"] == " ".join(name.split())


async def test_item_12_lone_surrogate_in_a_socket_token_is_refused_cleanly(api: Api) -> None:
    async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=10) as socket:
        # json.dumps writes the surrogate as a `\udXXX` escape, which JSON allows.
        await socket.send(json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer x\ud800"}}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403, "refused as a bad token, not dropped by a crash"
