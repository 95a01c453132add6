"""Query amplification (issue 7, item 5): a cost limit per document, paginated lists, bounded loaders.

Review 2, item 1: the limit holds for the request's variable values, on every transport."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
from graphql import (
    FragmentDefinitionNode,
    OperationDefinitionNode,
    get_introspection_query,
    parse,
    validate,
)
from sqlalchemy import event
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from graph.cost import VariableCosts, cost_limit_rule, operation_cost
from graph.schema import build_schema
from infra.app import Overrides
from infra.db import Database, create_engine
from models.columns import utcnow
from resolvers import accounts, conversations
from resolvers.services import Services
from tests.support.helpers import CONVERSATION_FIELDS, EVENT_FIELDS, Api, Person
from tests.support.servers import ThreadServer
from tests.support.settings import embedded_settings

USER = "user { id username displayName online lastSeen }"
SCHEMA = build_schema()._schema


async def test_item_05_a_costly_query_is_refused_before_it_runs(api: Api) -> None:
    bob = await api.register("bob")
    # 500 events, each with up to 100 members: past the default limit of 250,000.
    body = await bob.http.post(
        f"{{ pendingEvents(first: 500) {{ ... on ConversationEvent {{ conversation {{ members {{ {USER} }} }} }} }} }}"
    )
    assert "data" not in body or body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["maxCost"] == 250_000
    assert error["extensions"]["cost"] > 250_000
    assert "first" in error["message"]
    # What the app and the test helpers send stays well within it.
    await bob.data(f"{{ conversations {{ {CONVERSATION_FIELDS} }} }}")
    await bob.data(f"query P($first: Int) {{ pendingEvents(first: $first) {{ {EVENT_FIELDS} }} }}", first=100)


async def test_item_05_the_limit_is_a_setting_and_nothing_runs_past_it(tmp_path: Path) -> None:
    with ThreadServer(embedded_settings(tmp_path, max_query_cost=200)) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="embedded")
        alice, bob = await api.people("alice", "bob")
        costly = (
            f'mutation G($m: [ID!]!) {{ createGroup(title: "costly", memberIds: $m) {{ id members {{ {USER} }} }} }}'
        )
        assert await alice.error(costly, m=[bob.user_id]) == "BAD_USER_INPUT"
        # Refused before execution: no group was created.
        assert (await alice.data("{ conversations { id } }"))["conversations"] == []
        cheap = 'mutation G($m: [ID!]!) { createGroup(title: "cheap", memberIds: $m) { id members(first: 5) { user { id } } } }'
        created = (await alice.data(cheap, m=[bob.user_id]))["createGroup"]
        assert {m["user"]["id"] for m in created["members"]} == {alice.user_id, bob.user_id}


async def test_item_05_members_come_in_pages(api: Api) -> None:
    owner, *others = await api.people("owner", "m1", "m2", "m3", "m4")
    group = await owner.create_group("paged", members=others)
    everyone = [owner.user_id, *(p.user_id for p in others)]

    async def page(**args: Any) -> list[str]:
        given = ", ".join(f"{k}: {v!r}".replace("'", '"') for k, v in args.items())
        query = f"query C($id: ID!) {{ conversation(id: $id) {{ members{f'({given})' if given else ''} {{ user {{ id }} }} }} }}"
        data = await owner.data(query, id=group)
        return [m["user"]["id"] for m in data["conversation"]["members"]]

    assert await page() == everyone, "a group of at most 100 comes whole, in joining order, as before"
    assert await page(first=2) == everyone[:2]
    assert await page(first=2, after=everyone[1]) == everyone[2:4]
    assert await page(first=2, after=everyone[3]) == everyone[4:]
    assert await page(first=2, after=everyone[4]) == []
    listed = await owner.data("{ conversations { id members(first: 3) { user { id } } } }")
    assert [m["user"]["id"] for m in listed["conversations"][0]["members"]] == everyone[:3]
    assert await owner.error("{ conversations { members(first: 101) { role } } }") == "BAD_USER_INPUT"


async def test_item_05_conversations_come_in_pages(api: Api) -> None:
    me, *friends = await api.people("me", "f1", "f2", "f3")
    # Each new conversation is the most recently active one.
    made = [await me.direct_with(friend) for friend in friends]
    newest_first = list(reversed(made))

    async def page(query: str, **variables: Any) -> list[str]:
        return [c["id"] for c in (await me.data(query, **variables))["conversations"]]

    assert await page("{ conversations { id } }") == newest_first
    assert await page("{ conversations(first: 2) { id } }") == newest_first[:2]
    rest = await page("query C($a: ID) { conversations(first: 2, after: $a) { id } }", a=newest_first[1])
    assert rest == newest_first[2:]
    assert await me.error("{ conversations(first: 0) { id } }") == "BAD_USER_INPUT"
    assert await me.error("{ conversations(first: 101) { id } }") == "BAD_USER_INPUT"


async def test_item_05_conversation_events_share_one_lookup(tmp_path: Path) -> None:
    statements: list[str] = []

    def count_statements(services: Services) -> Services:
        engine = cast("Database", services.db).engine  # the real one: the wiring is not replaced here

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        return services

    with ThreadServer(
        embedded_settings(tmp_path), Overrides(wrap=count_statements, fast_password_hashing=True)
    ) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="embedded")
        alice, bob = await api.people("alice", "bob")
        groups = [await alice.create_group(f"g{n}", members=[bob]) for n in range(5)]
        statements.clear()
        events = await bob.pending()
        shown = [e["conversation"]["id"] for e in events if e["__typename"] == "ConversationEvent"]
        assert sorted(shown) == sorted(groups)
        reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        conversation_reads = [s for s in reads if "FROM conversations" in s]
        member_reads = [s for s in reads if "FROM members" in s and "FROM conversations" not in s]
        # One lookup of the five conversations and one of their members, not one of each per event.
        assert len(conversation_reads) == 1, conversation_reads
        assert len(member_reads) <= 2, member_reads


async def test_item_05_loaders_take_more_ids_than_one_statement_may_bind(migrated_postgres: str) -> None:
    """PostgreSQL takes at most 32,767 parameters per statement: batches are split."""
    from resolvers import privacy  # noqa: PLC0415 - new with this fix; the other tests run without it

    db = Database(create_engine(migrated_postgres))
    services = cast("Services", SimpleNamespace(db=db, clock=utcnow))
    try:
        ids = list(range(1_000_000, 1_040_000))
        assert await accounts.get_users(services, ids) == {}
        assert await privacy.presence_visibility(services, 1, ids) == {}
        viewer = accounts.Viewer(user_id=1, device_id=1)
        assert await conversations.conversation_headers(services, viewer, ids) == {}
        pages = await conversations.member_pages(services, ids, first=100, after=None)
        assert len(pages) == len(ids)
        assert not any(pages.values())
    finally:
        await db.close()


# Cheap as the document reads it (sizes 0), 603,030 with the sizes a request gives: 30 * (1 + 100 * (1 + 100 * 2)).
SIZED_BY_VARIABLES = (
    "query Q($n: Int = 0, $m: Int = 0) { "
    + " ".join(f"a{i}: conversations(first: $n) {{ members(first: $m) {{ user {{ username }} }} }}" for i in range(30))
    + " }"
)
# A subscription's single root field holds one list: a size far past its cap makes it costly.
SUBSCRIPTION_SIZED_BY_A_VARIABLE = (
    "subscription S($m: Int = 1) { events { ... on ConversationEvent { conversation { members(first: $m) "
    "{ user { username } } } } } }"
)
COSTLY = {"n": 100, "m": 100}


def refused_for_cost(errors: list[Any]) -> bool:
    extensions = errors[0].get("extensions", {}) if errors else {}
    return extensions.get("code") == "BAD_USER_INPUT" and extensions.get("cost", 0) > extensions.get("maxCost", 0) > 0


async def ws_first_errors(api: Api, person: Person, protocol: str, query: str, variables: dict[str, Any]) -> list[Any]:
    """The errors of the first answer to one operation over a WebSocket subprotocol (None: no answer in 5 s)."""
    subscribe = "subscribe" if protocol == "graphql-transport-ws" else "start"
    async with connect(api.ws_url, subprotocols=[Subprotocol(protocol)]) as socket:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {person.token}"}})
        )
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(
            json.dumps({"id": "1", "type": subscribe, "payload": {"query": query, "variables": variables}})
        )
        try:
            async with asyncio.timeout(5):
                while (message := json.loads(await socket.recv())).get("id") != "1":
                    pass
        except TimeoutError:
            return []  # the operation is running: nothing refused it
    payload = message["payload"]
    if message["type"] == "error":  # a refusal before execution: the error (legacy) or a list of them
        return payload if isinstance(payload, list) else [payload]
    errors: list[Any] = payload.get("errors") or []
    return errors


async def stream_first_errors(
    api: Api, person: Person, accept: str, query: str, variables: dict[str, Any]
) -> list[Any]:
    """The errors of the first result of an HTTP stream (SSE or Apollo multipart); [] when none came in 5 s."""
    headers = {"Authorization": f"Bearer {person.token}", "Accept": accept}
    body = {"query": query, "variables": variables}
    try:
        async with (
            asyncio.timeout(5),
            httpx.AsyncClient(timeout=10) as http,
            http.stream("POST", f"{api.url}/graphql", json=body, headers=headers) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():  # SSE
                    errors: list[Any] = json.loads(line[5:]).get("errors") or []
                    return errors
                if line.startswith('{"payload"'):  # multipart
                    return list(json.loads(line)["payload"].get("errors") or [])
    except TimeoutError:
        pass
    return []


async def test_a_query_costly_through_its_variables_is_refused_on_every_transport(api: Api) -> None:
    """Review 2, item 1: the cost is that of the request's variable values, not of the defaults the document gives.

    Sizes given as variables used to cost as their defaults (0 here), so the query ran.
    """
    alice, bob = await api.people("alice", "bob")
    await alice.direct_with(bob)
    # Cheap values run; costly ones are refused before anything runs, over HTTP POST, GET and in a batch.
    cheap = await alice.http.post(SIZED_BY_VARIABLES, {"n": 1, "m": 1})
    assert "errors" not in cheap
    assert cheap["data"]["a0"][0]["members"][0]["user"]["username"] in {alice.username, bob.username}
    costly = await alice.http.post(SIZED_BY_VARIABLES, COSTLY)
    assert costly["data"] is None
    assert refused_for_cost(costly["errors"])
    assert costly["errors"][0]["extensions"]["cost"] == 603_030
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with httpx.AsyncClient(base_url=api.url, timeout=30, headers=headers) as http:
        params = {"query": SIZED_BY_VARIABLES, "variables": json.dumps(COSTLY)}
        assert refused_for_cost((await http.get("/graphql", params=params)).json()["errors"])
        batch = [
            {"query": SIZED_BY_VARIABLES, "variables": {"n": 1, "m": 1}},
            {"query": SIZED_BY_VARIABLES, "variables": COSTLY},
        ]
        answers = (await http.post("/graphql", json=batch)).json()
        assert "errors" not in answers[0]
        assert refused_for_cost(answers[1]["errors"])
    # Both WebSocket subprotocols and both HTTP streams, for a query and for a subscription.
    assert refused_for_cost(await ws_first_errors(api, alice, "graphql-transport-ws", SIZED_BY_VARIABLES, COSTLY))
    for protocol in ("graphql-transport-ws", "graphql-ws"):  # the legacy one carries subscriptions only
        errors = await ws_first_errors(api, alice, protocol, SUBSCRIPTION_SIZED_BY_A_VARIABLE, {"m": 1_000_000})
        assert refused_for_cost(errors), protocol
    sse = "text/event-stream"
    assert refused_for_cost(await stream_first_errors(api, alice, sse, SIZED_BY_VARIABLES, COSTLY))
    assert refused_for_cost(await stream_first_errors(api, alice, sse, SUBSCRIPTION_SIZED_BY_A_VARIABLE, {"m": 10**6}))
    multipart = "multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json"
    errors = await stream_first_errors(api, alice, multipart, SUBSCRIPTION_SIZED_BY_A_VARIABLE, {"m": 10**6})
    assert refused_for_cost(errors)
    # A subscription of a sensible size still opens (nothing to say yet: no answer).
    assert await ws_first_errors(api, alice, "graphql-transport-ws", SUBSCRIPTION_SIZED_BY_A_VARIABLE, {"m": 10}) == []


def test_the_cost_of_a_variable_size_is_its_value_and_left_out_its_default() -> None:
    """Review 2, item 1: costed with coerced values; a size left out or null costs as the argument's default."""
    document = parse("query Q($n: Int, $m: Int = 3) { conversations(first: $n) { members(first: $m) { role } } }")
    (operation,) = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    assert operation_cost(SCHEMA, operation, {}, variables={"n": 2, "m": 4}) == 1 + 2 * (1 + 4)
    assert operation_cost(SCHEMA, operation, {}, variables={"n": None, "m": None}) == 1 + 50 * (1 + 100)
    assert operation_cost(SCHEMA, operation, {}) == 1 + 50 * (1 + 3)  # without values: the document's defaults
    # The validation rule leaves such operations to the per-request check (it cannot see values).
    assert validate(SCHEMA, document, [cost_limit_rule(100)]) == []
    assert VariableCosts(100).check(SCHEMA, operation, {}, {"n": 2, "m": 4}) is None
    refused = VariableCosts(100).check(SCHEMA, operation, {}, {"n": 100, "m": None})
    assert refused is not None
    assert refused.extensions == {"code": "BAD_USER_INPUT", "cost": 1 + 100 * (1 + 100), "maxCost": 100}


def cost_of(query: str) -> int:
    document = parse(query)
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    (operation,) = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return operation_cost(SCHEMA, operation, fragments)


def test_cost_weighs_fields_by_the_lists_they_sit_in() -> None:
    assert cost_of("{ conversations(first: 10) { id members(first: 5) { role } } }") == 1 + 10 * (1 + 1 + 5)
    # Defaults: conversations 50, members 100; a variable costs as its default.
    assert cost_of("{ conversations { id } }") == 1 + 50
    assert cost_of("query Q($n: Int = 7) { conversations(first: $n) { id } }") == 1 + 7
    assert cost_of("query Q($n: Int) { conversations(first: $n) { id } }") == 1 + 50
    # An event is one of the union's types: the costliest counts, not their sum.
    union = (
        "{ pendingEvents(first: 2) { ... on MessageEvent { cursor } ... on ConversationEvent { cursor change at } } }"
    )
    assert cost_of(union) == 1 + 2 * 3


def test_cost_of_nested_fragments_is_computed_quickly_and_refused() -> None:
    # Each fragment spreads the next twice: 2**40 fields if expanded naively.
    chain = "".join(f"fragment F{n} on User {{ ...F{n + 1} ...F{n + 1} }} " for n in range(40))
    query = f'{chain} fragment F40 on User {{ id }} query {{ searchUsers(prefix: "a") {{ ...F0 }} }}'
    assert cost_of(query) == 1 + 20 * 2**40
    errors = validate(SCHEMA, parse(query), [cost_limit_rule(50_000)])
    assert [e.extensions["code"] for e in errors if e.extensions] == ["BAD_USER_INPUT"]


def test_introspection_is_not_refused() -> None:
    assert validate(SCHEMA, parse(get_introspection_query(descriptions=True)), [cost_limit_rule(50_000)]) == []
