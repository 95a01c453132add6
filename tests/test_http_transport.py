"""GraphQL over HTTP as clients other than graphql-ws speak it: media types and status codes,
batches, Apollo persisted queries and the allow-list, multipart and SSE subscriptions, and the
`connection_init` shapes clients send."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from graph.persisted_queries import Allowlist, sha256_hex
from infra.app import OPERATIONS_DIR
from tests.support.client import ws_connect
from tests.support.helpers import EVENTS, PASSWORD, Api, Person, unique_name
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings
from tests.support.waiting import until

Json = dict[str, Any]
GRAPHQL_RESPONSE = "application/graphql-response+json"
ME = "query { me { id username } }"


async def post(api: Api, body: object, *, token: str | None = None, accept: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept:
        headers["Accept"] = accept
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{api.url}/graphql", json=body, headers=headers)


# --- media types and status codes ---------------------------------------------------------


async def test_graphql_response_media_type_answers_request_errors_with_400(api: Api) -> None:
    (alice,) = await api.people("alice")
    cases = [
        ({"query": "{ me { id "}, 400),  # parse error
        ({"query": "{ nope }"}, 400),  # validation error
        ({"query": "query Q($n: Int!) { pendingEvents(first: $n) { __typename } }", "variables": {"n": "x"}}, 400),
        ({"query": ME}, 200),
    ]
    for body, status in cases:
        response = await post(api, body, token=alice.token, accept=f"{GRAPHQL_RESPONSE}, application/json;q=0.9")
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"].startswith(GRAPHQL_RESPONSE)
        payload = response.json()
        if status == 400:
            assert "data" not in payload  # a request error never executed
            assert payload["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        else:
            assert payload["data"]["me"]["username"] == alice.username


async def test_an_executed_request_with_field_errors_is_200_in_both_media_types(api: Api) -> None:
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        response = await post(api, {"query": ME}, accept=accept)  # no token: the field fails, the request ran
        assert response.status_code == 200
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_application_json_stays_the_default_and_always_200(api: Api) -> None:
    for accept in (None, "application/json", "*/*", f"application/json, {GRAPHQL_RESPONSE};q=0.5"):
        response = await post(api, {"query": "{ nope }"}, accept=accept)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["data"] is None


async def test_client_mistakes_are_answered_as_client_errors(api: Api) -> None:
    """Review 2, item 15: a subscription as plain JSON, a mutation over GET, a syntax error on a stream or a
    socket are the client's mistakes: BAD_USER_INPUT (and a 4xx status), never INTERNAL_SERVER_ERROR."""
    (alice,) = await api.people("alice")
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as http:
        # A subscription needs a stream: it used to run and fail as a server error.
        for accept in ("application/json", GRAPHQL_RESPONSE):
            answer = await http.post("/graphql", json={"query": EVENTS}, headers={"Accept": accept})
            assert answer.status_code == 400, answer.text
            assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
            assert "WebSocket" in answer.json()["errors"][0]["message"]
        # A mutation over GET: 405 with Allow, as the GraphQL-over-HTTP spec asks (it was a plain-text 400).
        answer = await http.get("/graphql", params={"query": "mutation { logout }"})
        assert answer.status_code == 405
        assert answer.headers["allow"] == "POST"
        assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        answer = await http.post("/graphql", json={"variables": {}})
        assert answer.status_code == 400
        assert answer.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        # On an SSE stream: a syntax error broke the response off, a GET mutation was a server error.
        sse = {"Accept": "text/event-stream"}
        for method, query in (("POST", "{ me { id "), ("GET", "mutation { logout }")):
            if method == "POST":
                answer = await http.post("/graphql", json={"query": query}, headers=sse)
            else:
                answer = await http.get("/graphql", params={"query": query}, headers=sse)
            data = next(line[5:] for line in answer.text.splitlines() if line.startswith("data:") and line[5:].strip())
            assert json.loads(data)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", (method, data)
    # On a WebSocket: graphql-transport-ws closes with 4400 and the parser's message (it closed nothing
    # and the operation failed in the server's log).
    async with ws_connect(api.ws_url, alice.token) as socket:
        await socket.subscribe("subscription { events { __typename ")
        code, reason = await asyncio.wait_for(socket.closed, 10)
    assert code == 4400
    assert reason.startswith("Syntax Error")


# --- batching --------------------------------------------------------------------------------


SEND = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { body } }"


def send_op(conversation: str, body: str) -> Json:
    return {"query": SEND, "variables": {"input": {"conversationId": conversation, "clientId": body, "body": body}}}


async def test_a_batch_runs_its_operations_in_order_each_held_to_the_limits(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    aliased = "query { " + " ".join(f"a{i}: me {{ id }}" for i in range(31)) + " }"  # max_aliases = 30
    batch = [send_op(direct, f"m{i}") for i in range(5)] + [{"query": aliased}, {"query": ME}]
    response = await post(api, batch, token=alice.token)
    assert response.status_code == 200
    results = response.json()
    assert [r["data"]["sendMessage"]["body"] for r in results[:5]] == [f"m{i}" for i in range(5)]
    assert results[5]["data"] is None
    assert results[5]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # too many aliases, on its own
    assert results[6]["data"]["me"]["id"] == alice.user_id
    received = [e["message"]["body"] for e in await bob.pending() if e["__typename"] == "MessageEvent"]
    assert received == [f"m{i}" for i in range(5)]  # stored in the batch's order


async def test_a_batch_over_the_limit_is_refused_whole(api: Api) -> None:
    (alice,) = await api.people("alice")
    response = await post(api, [{"query": ME}] * 11, token=alice.token)  # max_batch_operations = 10
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "at most 10" in error["message"]


# --- automatic persisted queries --------------------------------------------------------------


def persisted(query: str | None, sha256: str, **variables: Any) -> Json:
    body: Json = {"variables": variables, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256}}}
    if query is not None:
        body["query"] = query
    return body


async def test_an_unknown_hash_asks_for_the_query_then_the_hash_alone_runs(api: Api) -> None:
    (alice,) = await api.people("alice")
    query = f"query Mine {{ me {{ id }} }} # {alice.username}"  # a text no other test registered
    sha256 = sha256_hex(query)
    first = await post(api, persisted(None, sha256), token=alice.token)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "private, no-cache, must-revalidate"
    assert first.json()["errors"] == [
        {"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}
    ]
    # Also under the spec's media type: Apollo's links retry on it, so it stays a 200.
    again = await post(api, persisted(None, sha256), token=alice.token, accept=GRAPHQL_RESPONSE)
    assert again.status_code == 200
    registered = await post(api, persisted(query, sha256), token=alice.token)
    assert registered.json() == {"data": {"me": {"id": alice.user_id}}}
    by_hash = await post(api, persisted(None, sha256), token=alice.token)
    assert by_hash.json() == {"data": {"me": {"id": alice.user_id}}}


async def test_production_keeps_persisted_queries_in_redis_with_a_ttl(
    production_server: ThreadServer, redis_target: RedisTarget
) -> None:
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    (alice,) = await api.people("alice")
    query = f"query Kept {{ me {{ id }} }} # {alice.username}"
    sha256 = sha256_hex(query)
    await post(api, persisted(query, sha256), token=alice.token)
    redis = Redis.from_url(redis_target.url)
    try:
        assert await redis.get(f"{redis_target.prefix}apq:{sha256}") == query.encode()
        assert 0 < await redis.ttl(f"{redis_target.prefix}apq:{sha256}") <= 7 * 86400
    finally:
        await redis.aclose()


async def test_a_hash_that_does_not_match_its_query_is_refused_and_not_stored(api: Api) -> None:
    (alice,) = await api.people("alice")
    sha256 = sha256_hex(f"something else {alice.username}")
    wrong = await post(api, persisted(ME, sha256), token=alice.token)
    assert wrong.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    later = await post(api, persisted(None, sha256), token=alice.token)
    assert later.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


async def test_an_oversized_query_runs_but_is_not_kept(api: Api) -> None:
    (alice,) = await api.people("alice")
    query = f"query Big {{ me {{ id }} }} # {alice.username} " + "x" * 40_000  # a comment: no tokens
    sha256 = sha256_hex(query)
    ran = await post(api, persisted(query, sha256), token=alice.token)
    assert ran.json() == {"data": {"me": {"id": alice.user_id}}}
    later = await post(api, persisted(None, sha256), token=alice.token)
    assert later.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


@pytest.fixture(scope="module")
def allowlist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = embedded_settings(tmp_path_factory.mktemp("allowlist"), persisted_queries="allowlist")
    with ThreadServer(settings) as server:
        yield server


def listed(name: str) -> str:
    """An operation of frontend_schema/operations with its fragments, as an app sends it."""
    for text in Allowlist.from_directory(OPERATIONS_DIR).by_hash.values():
        if re.match(rf"(query|mutation|subscription) {name}\b", text):
            return text
    raise AssertionError(f"no operation {name}")


async def test_allowlist_runs_only_the_kits_operations(allowlist_server: ThreadServer) -> None:
    api = Api(url=allowlist_server.url, ws_url=allowlist_server.ws_url, mode="embedded")
    register = listed("Register")
    variables = {"username": unique_name("allow"), "password": PASSWORD}
    response = await post(api, {"query": register, "variables": variables})
    token = response.json()["data"]["register"]["token"]
    # A listed operation by its hash alone (as the kit prints it), and with Apollo's __typename added.
    me = listed("Me")
    by_hash = await post(api, persisted(None, sha256_hex(me)), token=token)
    assert by_hash.json()["data"]["me"]["username"] == variables["username"]
    with_typename = me.replace("me {", "me {\n    __typename", 1)
    accepted = await post(api, persisted(with_typename, sha256_hex(with_typename)), token=token)
    assert accepted.json()["data"]["me"]["__typename"] == "User"
    # Anything else is refused, by text, by hash, over WebSocket too.
    refused = await post(api, {"query": ME}, token=token)
    assert refused.json()["errors"][0]["extensions"]["code"] == "OPERATION_NOT_ALLOWED"
    refused = await post(api, persisted(ME, sha256_hex(ME)), token=token, accept=GRAPHQL_RESPONSE)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "OPERATION_NOT_ALLOWED"
    async with ws_connect(api.ws_url, token) as socket:
        subscription = await socket.subscribe(EVENTS)
        message = await asyncio.wait_for(subscription.queue.get(), 10)
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["code"] == "OPERATION_NOT_ALLOWED"
        listed_events = await socket.subscribe(listed("Events"))
        # Accepted, nothing pending: nothing is sent. No marker can follow it here (the allowlist
        # refuses the helpers' own send), so a refusal is given a bounded moment to show.
        await listed_events.expect_silence(0.3)


# --- multipart and SSE subscriptions ----------------------------------------------------------


MULTIPART_ACCEPT = "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json"


@asynccontextmanager
async def http_stream(api: Api, person: Person, accept: str, query: str = EVENTS) -> AsyncIterator[httpx.Response]:
    headers = {"Authorization": f"Bearer {person.token}", "Accept": accept}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=15)) as http,
        http.stream("POST", f"{api.url}/graphql", json={"query": query}, headers=headers) as response,
    ):
        yield response


async def multipart_payloads(response: httpx.Response) -> AsyncIterator[Json]:
    """The `payload`s of an Apollo multipart subscription response (heartbeats skipped)."""
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        *parts, buffer = buffer.split("\r\n--graphql")
        for part in parts:
            _, _, body = part.partition("\r\n\r\n")
            if body.strip() and body.strip() not in ("{}", "--"):
                yield json.loads(body)["payload"]


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, line[5:].strip()


async def is_online(watcher: Person, person: Person) -> bool:
    data = await watcher.data("query U($id: ID!) { user(id: $id) { online } }", id=person.user_id)
    return bool(data["user"]["online"])


async def test_multipart_subscription_delivers_live_events_and_counts_presence(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await bob.direct_with(alice)  # bob starts it: alice sees his presence (resolvers/privacy.py)
    await bob.drain()
    async with http_stream(api, bob, MULTIPART_ACCEPT) as response:
        assert response.status_code == 200
        # What Apollo Router sends, and what Apollo iOS, Kotlin and Client all parse.
        assert response.headers["content-type"] == 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0'
        await until(lambda: is_online(alice, bob), "bob online for alice")
        payloads = multipart_payloads(response)
        await alice.send(direct, "over multipart")
        async for payload in payloads:
            event = payload["data"]["events"]
            if event["__typename"] == "MessageEvent":
                assert event["message"]["body"] == "over multipart"
                break
    await until(lambda: _not(is_online(alice, bob)), "bob offline for alice")


async def _not(check: Any) -> bool:
    return not await check


async def test_sse_subscription_delivers_live_events(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await bob.direct_with(alice)  # bob starts it: alice sees his presence
    await bob.drain()
    async with http_stream(api, bob, "text/event-stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        await until(lambda: is_online(alice, bob), "bob online for alice")
        events = sse_events(response)
        await alice.send(direct, "over sse")
        async for kind, data in events:
            assert kind == "next"
            event = json.loads(data)["data"]["events"]
            if event["__typename"] == "MessageEvent":
                assert event["message"]["body"] == "over sse"
                break


async def test_sse_runs_queries_and_mutations_too(api: Api) -> None:
    (alice,) = await api.people("alice")
    async with http_stream(api, alice, "text/event-stream", ME) as response:
        events = [(kind, data) async for kind, data in sse_events(response)]
    assert events[0][0] == "next"
    assert json.loads(events[0][1])["data"]["me"]["id"] == alice.user_id
    assert events[-1] == ("complete", "")


async def test_http_streams_refuse_a_bad_token_and_respect_the_subscription_limit(api: Api) -> None:
    (alice,) = await api.people("alice")
    impostor = Person(api, "x", "not-a-token", "0", "0")
    async with http_stream(api, impostor, "text/event-stream") as refused:
        assert refused.status_code == 401
        await refused.aread()
        assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    async with (
        http_stream(api, alice, MULTIPART_ACCEPT) as first,
        http_stream(api, alice, "text/event-stream") as second,
    ):
        assert first.status_code == second.status_code == 200


async def test_a_revoked_device_loses_its_http_stream_at_once(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    await bob.direct_with(alice)  # bob starts it: alice sees his presence
    async with http_stream(api, bob, "text/event-stream") as response:
        await until(lambda: is_online(alice, bob), "bob online for alice")
        await bob.data("mutation { logout }")
        frames = [(kind, data) async for kind, data in sse_events(response)]
    await until(lambda: _not(is_online(alice, bob)), "bob offline for alice")
    last_next = [json.loads(data) for kind, data in frames if kind == "next"][-1]
    assert last_next["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert frames[-1][0] == "complete"


@pytest.fixture(scope="module")
def one_stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = embedded_settings(tmp_path_factory.mktemp("streams"), max_subscriptions_per_connection=1)
    with ThreadServer(settings) as server:
        yield server


async def test_a_device_holds_no_more_http_streams_than_a_socket_holds_subscriptions(
    one_stream_server: ThreadServer,
) -> None:
    api = Api(url=one_stream_server.url, ws_url=one_stream_server.ws_url, mode="embedded")
    (alice,) = await api.people("alice")
    async with http_stream(api, alice, "text/event-stream") as first:
        assert first.status_code == 200
        async with http_stream(api, alice, MULTIPART_ACCEPT) as second:
            assert second.status_code == 429
            await second.aread()
            assert second.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    async with http_stream(api, alice, MULTIPART_ACCEPT) as after:  # the first one was released
        assert after.status_code == 200


# --- connection_init shapes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        lambda token: {"headers": {"Authorization": f"Bearer {token}"}},
        lambda token: {"headers": {"authorization": f"Bearer {token}"}},
        lambda token: {"AUTHORIZATION": f"Bearer {token}"},
    ],
    ids=["headers-Authorization", "headers-authorization", "upper-case"],
)
async def test_connection_init_accepts_the_headers_shape_clients_send(api: Api, shape: Any) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    async with ws_connect(api.ws_url, None, payload=shape(bob.token)) as socket:
        events = await socket.subscribe(EVENTS)
        await alice.send(direct, "hello")
        assert (await events.next())["events"]["message"]["body"] == "hello"
