"""Query amplification (issue 7, item 5): a cost limit per document, paginated lists, bounded loaders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from graphql import (
    FragmentDefinitionNode,
    OperationDefinitionNode,
    get_introspection_query,
    parse,
    validate,
)
from sqlalchemy import event

from graph.cost import cost_limit_rule, operation_cost
from graph.schema import build_schema
from infra.app import Overrides
from infra.db import Database, create_engine
from resolvers import accounts, conversations
from resolvers.ports import Services
from tests.conftest import embedded_settings
from tests.helpers import CONVERSATION_FIELDS, EVENT_FIELDS, Api
from tests.servers import ThreadServer

USER = "user { id username displayName online lastSeen }"
SCHEMA = build_schema()._schema


async def test_item_05_a_costly_query_is_refused_before_it_runs(api: Api) -> None:
    bob = await api.register("bob")
    # 500 events, each with up to 100 members: far past the default limit of 50,000.
    body = await bob.http.post(
        f"{{ pendingEvents(first: 500) {{ ... on ConversationEvent {{ conversation {{ members {{ {USER} }} }} }} }} }}"
    )
    assert "data" not in body or body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["maxCost"] == 50_000
    assert error["extensions"]["cost"] > 50_000
    assert "first" in error["message"]
    # What the app and the test helpers send stays well within it.
    await bob.data(f"{{ conversations {{ {CONVERSATION_FIELDS} }} }}")
    await bob.data(f"query P($first: Int) {{ pendingEvents(first: $first) {{ {EVENT_FIELDS} }} }}", first=500)


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
    services = cast("Services", SimpleNamespace(db=db))
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
