"""Subscription events through graph/executor.py: bounded memory, and projected results identical to execution."""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Annotated, Any, ClassVar

import pytest
import strawberry
from graphql import DirectiveLocation, parse
from graphql.execution import Executor as GraphQLExecutionContext
from strawberry.directive import DirectiveValue
from strawberry.permission import BasePermission
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.execution import ExecutionResult

from graph import types as api
from graph.executor import ProjectingExecutionContext, clear_plan_cache
from graph.projection import OperationPlan, plain_directives_only
from graph.schema import build_schema
from resolvers.privacy import SELF

# --- a schema with every shape the projection handles, and some it must not --------


@strawberry.enum
class Color(Enum):
    RED = "red"
    BLUE = "blue"


class AllowAll(BasePermission):
    message = "never refused"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return True


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Tag:
    label: str
    weight: float | None


@strawberry.type
class Person(Named):
    id: strawberry.ID
    age: int | None
    color: Color
    born: datetime
    tags: list[Tag]
    scores: list[list[int | None]] | None
    friend: Person | None
    nick: str | None = None

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()


@strawberry.type
class Robot(Named):
    serial: int
    active: bool
    secret: str = strawberry.field(default="s3cr3t", permission_classes=[AllowAll])


@strawberry.type
class Note:
    text: str
    at: datetime
    colors: list[Color]


Thing = Annotated[Person | Robot | Note, strawberry.union("Thing")]


@strawberry.type
class Envelope:
    seq: int
    thing: Thing
    owner: Named | None
    extra: Thing | None = None


@strawberry.type
class Query:
    ok: bool = True


@strawberry.directive(locations=[DirectiveLocation.FIELD])
def shouting(value: DirectiveValue[str]) -> str:
    return value.upper()


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def envelopes(self, info: strawberry.Info) -> AsyncGenerator[Envelope, None]:
        for payload in info.context["payloads"]:
            yield payload

    @strawberry.subscription
    async def things(self, info: strawberry.Info) -> AsyncGenerator[Thing, None]:
        for payload in info.context["payloads"]:
            yield payload


class Recording(ProjectingExecutionContext):
    """Remembers the last subscription's executor, to look at its plan and memo."""

    last: ClassVar[GraphQLExecutionContext[Any] | None] = None

    def build_per_event_executor(self, payload: Any) -> ProjectingExecutionContext:
        Recording.last = self
        return super().build_per_event_executor(payload)


class StockRecording(StrawberryGraphQLCoreExecutionContext):
    """strawberry's default executor, remembering the last subscription's executor."""

    last: ClassVar[GraphQLExecutionContext[Any] | None] = None

    def build_per_event_executor(self, payload: Any) -> GraphQLExecutionContext[Any]:
        StockRecording.last = self
        return super().build_per_event_executor(payload)


def make_schema(execution_context_class: type[GraphQLExecutionContext[Any]]) -> strawberry.Schema:
    """The test schema with the given executor."""
    return strawberry.Schema(query=Query, subscription=Subscription, execution_context_class=execution_context_class)


STOCK = make_schema(StrawberryGraphQLCoreExecutionContext)
OURS = make_schema(Recording)
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def plan() -> OperationPlan:
    """The plan of the last subscription run with `Recording`."""
    executor = Recording.last
    assert isinstance(executor, ProjectingExecutionContext)
    assert executor._subscription_plan is not None, "the document was expected to have a plan"
    return executor._subscription_plan


def formatted(result: ExecutionResult) -> str:
    """What a client would receive, as canonical text (byte-for-byte comparable)."""
    return json.dumps(
        {
            "data": result.data,
            "errors": [error.formatted for error in result.errors] if result.errors else None,
            "extensions": result.extensions,
        }
    )


async def run(schema: strawberry.Schema, query: str, payloads: Iterable[Any], **variables: Any) -> list[str]:
    """Every result of a subscription whose resolver yields `payloads`."""
    results = await schema.subscribe(query, variable_values=variables, context_value={"payloads": payloads})
    return [formatted(result) async for result in results]


def person(n: int, **changes: Any) -> Person:
    fields: dict[str, Any] = {
        "id": strawberry.ID(f"p{n}"),
        "name": f"Zoë {n}",
        "age": None if n % 2 else 30 + n,
        "color": Color.BLUE if n % 2 else Color.RED,
        "born": T0 + timedelta(days=n),
        "tags": [Tag(label="a", weight=0.5), Tag(label="ß", weight=None)] if n % 2 else [],
        "scores": [[1, None], [], [3]] if n % 2 else None,
        "friend": None,
    }
    fields.update(changes)
    return Person(**fields)


def payloads() -> list[Envelope]:
    friend = person(1, friend=person(2))
    return [
        Envelope(seq=1, thing=person(3, friend=friend, nick="z"), owner=friend, extra=None),
        Envelope(
            seq=2, thing=Robot(name="r2", serial=2, active=True), owner=None, extra=Note(text="n", at=T0, colors=[])
        ),
        Envelope(
            seq=3,
            thing=Note(text="hi\n\u2028", at=T0, colors=[Color.RED, Color.BLUE]),
            owner=Robot(name="c3", serial=3, active=False),
        ),
        Envelope(seq=4, thing=person(4), owner=person(5), extra=person(6)),
    ]


FULL = """
subscription {
  envelopes {
    seq
    thing {
      __typename
      ... on Person { id name age color born nick tags { label weight } scores friend { id name friend { name color } } }
      ... on Robot { serial active name }
      ... on Note { text at colors }
    }
    owner { __typename name ... on Robot { serial } ... on Person { id } }
    extra { __typename }
  }
}
"""
FRAGMENTS = """
subscription Aliased {
  e: envelopes { n: seq, ...EnvelopeFields thing { ... on Named { nm: name } ...PersonFields } }
}
fragment EnvelopeFields on Envelope { owner { name } seq, other: seq }
fragment PersonFields on Person { id i2: id tags { l: label } friend { ...PersonFields } }
"""
SKIP_INCLUDE = """
subscription Conditional($a: Boolean!, $b: Boolean!) {
  envelopes {
    seq @include(if: $a)
    thing @skip(if: $b) { __typename ... on Note @include(if: $a) { text } ... on Person { id @skip(if: $a) name } }
    owner { name @skip(if: $a) ... @include(if: $b) { __typename } }
  }
}
"""
ROOT_UNION = "subscription { things { __typename ... on Robot { serial } ... on Person { id tags { label } } ... on Note { at } } }"


@pytest.mark.parametrize("query", [FULL, FRAGMENTS, ROOT_UNION])
async def test_projection_is_identical_to_execution(query: str) -> None:
    things = [p.thing for p in payloads()] if "things" in query else payloads()
    expected = await run(STOCK, query, things)
    assert await run(OURS, query, things) == expected
    assert (plan().projected, plan().fallbacks) == (len(things), 0)


@pytest.mark.parametrize(("a", "b"), [(True, True), (True, False), (False, True), (False, False)])
async def test_skip_and_include_follow_the_variables(a: bool, b: bool) -> None:
    expected = await run(STOCK, SKIP_INCLUDE, payloads(), a=a, b=b)
    assert await run(OURS, SKIP_INCLUDE, payloads(), a=a, b=b) == expected
    assert plan().fallbacks == 0


async def test_a_field_with_a_resolver_falls_back_for_its_type_only() -> None:
    query = "subscription { envelopes { seq thing { __typename ... on Person { shout } ... on Robot { serial } } } }"
    expected = await run(STOCK, query, payloads())
    assert await run(OURS, query, payloads()) == expected
    # Persons (seq 1 and 4) need the resolver; the Robot and the Note are projected.
    assert (plan().projected, plan().fallbacks) == (2, 2)


async def test_a_field_with_a_permission_class_falls_back() -> None:
    query = "subscription { envelopes { seq thing { ... on Robot { secret } } } }"
    expected = await run(STOCK, query, payloads())
    assert await run(OURS, query, payloads()) == expected
    assert (plan().projected, plan().fallbacks) == (3, 1)


async def test_middleware_means_normal_execution() -> None:
    # A schema with directives gets strawberry's DirectivesExtension: middleware around every resolver.
    schema = strawberry.Schema(
        query=Query, subscription=Subscription, directives=[shouting], execution_context_class=Recording
    )
    stock = strawberry.Schema(query=Query, subscription=Subscription, directives=[shouting])
    for query in (FULL, "subscription { envelopes { seq thing { ... on Robot { name @shouting } } } }"):
        expected = await run(stock, query, payloads())
        assert await run(schema, query, payloads()) == expected
        assert isinstance(Recording.last, ProjectingExecutionContext)
        assert Recording.last._subscription_plan is None
    assert '"name": "R2"' in expected[1]  # the directive ran


def test_only_skip_and_include_are_understood() -> None:
    schema = STOCK._schema

    def plain(query: str) -> bool:
        executor = GraphQLExecutionContext.build(schema, parse(query), raw_variable_values={"a": True})
        assert isinstance(executor, GraphQLExecutionContext)
        return plain_directives_only(executor.operation, executor.fragments)

    assert plain(
        "subscription($a: Boolean!) { envelopes { seq @skip(if: $a) ...F } } fragment F on Envelope { seq @include(if: true) }"
    )
    assert not plain("subscription { envelopes { seq @other } }")
    assert not plain("subscription @other { envelopes { seq } }")
    assert not plain("subscription { envelopes { ... @defer { seq } } }")
    assert not plain("subscription { envelopes { ...F } } fragment F on Envelope { seq @stream }")


async def test_null_in_a_non_null_field_gives_the_same_error() -> None:
    broken = [Envelope(seq=1, thing=Robot(name=None, serial=1, active=True), owner=None)]  # type: ignore[arg-type]
    expected = await run(STOCK, FULL, broken)
    assert "Cannot return null for non-nullable field" in expected[0]
    assert await run(OURS, FULL, broken) == expected
    assert plan().fallbacks == 1


async def test_a_wrong_type_in_a_union_gives_the_same_error() -> None:
    wrong = [Envelope(seq=1, thing=Tag(label="x", weight=None), owner=None)]  # type: ignore[arg-type]
    expected = await run(STOCK, FULL, wrong)
    assert await run(OURS, FULL, wrong) == expected
    assert plan().fallbacks == 1


async def test_an_object_changed_between_events_is_projected_again() -> None:
    note = Note(text="first", at=T0, colors=[Color.RED])
    robot = Robot(name="R", serial=1, active=True)

    def changing() -> Iterable[Envelope]:
        yield Envelope(seq=1, thing=note, owner=robot)
        yield Envelope(seq=2, thing=note, owner=robot)
        note.text = "second"  # reassigned
        note.colors.append(Color.BLUE)  # changed in place
        robot.active = False
        yield Envelope(seq=3, thing=note, owner=robot)

    query = "subscription { envelopes { seq thing { ... on Note { text colors } } owner { ... on Robot { active } } } }"
    ours = await run(OURS, query, changing())
    note.text, note.colors, robot.active = "first", [Color.RED], True
    assert ours == await run(STOCK, query, changing())
    assert '"text": "second", "colors": ["RED", "BLUE"]' in ours[2]
    assert '"active": false' in ours[2]


# --- bounded memory ---------------------------------------------------------------


@strawberry.type
class Item:
    id: strawberry.ID
    name: str

    @strawberry.field
    def upper(self) -> str:
        return self.name.upper()


@strawberry.type
class ItemSubscription:
    @strawberry.subscription
    async def items(self, count: int) -> AsyncGenerator[Item, None]:
        for n in range(count):
            yield Item(id=strawberry.ID(str(n)), name=f"item {n}")


@dataclass
class Growth:
    bytes_per_event: float
    memo_entries: int


async def growth(execution_context_class: type[Recording | StockRecording], query: str, events: int) -> Growth:
    """Traced memory gained per event while one subscription runs, and its executor's memo size."""
    schema = strawberry.Schema(
        query=Query, subscription=ItemSubscription, execution_context_class=execution_context_class
    )
    warm_up = 200
    results = await schema.subscribe(query, variable_values={"count": events})
    tracemalloc.start()
    try:
        seen = 0
        async for result in results:
            assert not result.errors, result.errors
            seen += 1
            if seen == warm_up:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
            if seen == events:
                gc.collect()
                after = tracemalloc.get_traced_memory()[0]
                # Measured while the subscription is still open: its executor is alive.
                parent = execution_context_class.last
                assert parent is not None
                memo = len(parent._relevant_sub_fields)
    finally:
        tracemalloc.stop()
    return Growth((after - before) / (events - warm_up), memo)


@pytest.mark.parametrize(
    "query",
    [
        "subscription S($count: Int!) { items(count: $count) { id name upper } }",  # executed (a resolver)
        "subscription S($count: Int!) { items(count: $count) { id name } }",  # projected
    ],
)
async def test_a_long_subscription_does_not_grow(query: str) -> None:
    events = 2000
    stock = await growth(StockRecording, query, events)
    # The measurement can fail: graphql-core's executor keeps ≈1 KiB per event here.
    assert stock.bytes_per_event > 500, stock
    assert stock.memo_entries >= events, stock
    ours = await growth(Recording, query, events)
    assert ours.bytes_per_event < 100, ours
    assert ours.memo_entries == 0, ours


def test_an_event_executor_is_graphql_cores_copy_with_fresh_memos() -> None:
    schema = build_schema()
    executor = ProjectingExecutionContext.build(schema._schema, parse("subscription { events { __typename } }"))
    assert isinstance(executor, ProjectingExecutionContext)
    payload = object()
    ours = vars(executor.build_per_event_executor(payload))
    # graphql-core's own per-event executor, built from the same subscription executor.
    theirs = vars(StrawberryGraphQLCoreExecutionContext.build_per_event_executor(executor, payload))
    fresh = {"collected_errors", "_relevant_sub_fields", "groups", "tasks", "streams"}
    assert set(ours) == set(theirs) | {"_event_plan"}
    assert {key for key in theirs if ours[key] is not theirs[key]} == fresh
    assert ours["root_value"] is payload
    assert ours["_relevant_sub_fields"] == {}
    assert not ours["collected_errors"].errors


# --- Parley's own schema ----------------------------------------------------------


class Loader:
    """A DataLoader stand-in answering every key with one value (or raising it)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def load(self, _key: int) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@dataclass
class FakeContext:
    """What graph/types.py resolvers read from the context."""

    payloads: Iterable[Any]
    online: Loader = field(default_factory=lambda: Loader(True))
    last_seen: Loader = field(default_factory=lambda: Loader(None))
    users: Loader = field(default_factory=lambda: Loader(None))
    presence_visibility: Loader = field(default_factory=lambda: Loader(SELF))

    def loaders(self, _info: Any) -> FakeContext:
        """Its own loaders (graph/loaders.py keeps them per operation)."""
        return self


@strawberry.type
class EventsOnly:
    @strawberry.subscription
    async def events(self, info: strawberry.Info, after: str | None = None) -> AsyncGenerator[api.Event, None]:
        for payload in info.context.payloads:
            yield payload


PARLEY_STOCK = build_schema(subscription=EventsOnly, execution_context_class=StrawberryGraphQLCoreExecutionContext)
PARLEY_OURS = build_schema(subscription=EventsOnly, execution_context_class=Recording)
APP_DOCUMENT = """
subscription {
  events {
    __typename
    ... on MessageEvent { cursor message { id clientId conversationId body sentAt sender { id username displayName } } }
    ... on ReceiptEvent { cursor receipt { conversationId messageId status at } }
  }
}
"""


def user(n: int) -> api.User:
    return api.User(id=strawberry.ID(str(n)), username=f"user{n}", display_name=f"Ünïcode {n}")


def message(n: int) -> api.Message:
    return api.Message(
        id=strawberry.ID(f"5.{n}.signed"),
        client_id=f"client-{n}",
        conversation_id=strawberry.ID("5"),
        sender=user(n),
        body=None if n == 0 else f"hello {n} ✓",
        attachments=[],
        sent_at=T0 + timedelta(seconds=n),
    )


def parley_events() -> list[Any]:
    return [
        api.MessageEvent(cursor="10", message=message(1)),
        api.ReceiptEvent(
            cursor="11",
            receipt=api.Receipt(
                conversation_id=strawberry.ID("5"),
                message_id=strawberry.ID("5.1.signed"),
                user=user(2),
                status=api.ReceiptStatus.READ,
                at=T0,
            ),
        ),
        api.MessageEvent(cursor="12", message=message(0)),
        api.TypingEvent(conversation_id=strawberry.ID("5"), user_id=3, typing=True, at=T0),
    ]


async def run_parley(schema: strawberry.Schema, query: str, context: FakeContext, **variables: Any) -> list[str]:
    results = await schema.subscribe(query, variable_values=variables, context_value=context)
    return [formatted(result) async for result in results]


async def test_the_apps_event_document_is_projected() -> None:
    expected = await run_parley(PARLEY_STOCK, APP_DOCUMENT, FakeContext(parley_events()))
    assert await run_parley(PARLEY_OURS, APP_DOCUMENT, FakeContext(parley_events())) == expected
    assert (plan().projected, plan().fallbacks) == (4, 0)


async def test_resolver_fields_of_the_real_schema_fall_back() -> None:
    query = """
    subscription Events($after: String) {
      events(after: $after) {
        __typename
        ... on MessageEvent { cursor message { id body sender { id online lastSeen } } }
        ... on TypingEvent { conversationId typing user { id username } }
        ... on ReceiptEvent { receipt { status } }
      }
    }
    """
    expected = await run_parley(PARLEY_STOCK, query, FakeContext(parley_events()), after="3")
    assert '"online": true' in expected[0]
    assert await run_parley(PARLEY_OURS, query, FakeContext(parley_events()), after="3") == expected
    # `online`, `lastSeen` and TypingEvent.user have resolvers; the receipt is projected.
    assert (plan().projected, plan().fallbacks) == (1, 3)


async def test_errors_are_masked_and_coded_as_before() -> None:
    def context() -> FakeContext:
        broken = api.MessageEvent(cursor=None, message=message(1))  # type: ignore[arg-type]
        return FakeContext([broken, *parley_events()], online=Loader(RuntimeError("database password is hunter2")))

    query = APP_DOCUMENT.replace("displayName", "displayName online")
    expected = await run_parley(PARLEY_STOCK, query, context())
    assert '"code": "INTERNAL_SERVER_ERROR"' in expected[0]
    assert "hunter2" not in "".join(expected)
    assert await run_parley(PARLEY_OURS, query, context()) == expected


async def test_subscribers_of_one_document_share_one_projected_message() -> None:
    clear_plan_cache()
    shared = message(7)
    data: list[dict[str, Any]] = []
    for n in range(100):
        event = api.MessageEvent(cursor=str(n), message=shared)
        results = await PARLEY_OURS.subscribe(APP_DOCUMENT, context_value=FakeContext([event]))
        async for result in results:
            assert result.data is not None
            data.append(result.data["events"])
    assert {event["cursor"] for event in data} == {str(n) for n in range(100)}
    # The parser cache hands every subscription the same document, so they share a
    # plan, and the message is projected once for all of them.
    assert all(event["message"] is data[0]["message"] for event in data)
    stock = await run_parley(PARLEY_STOCK, APP_DOCUMENT, FakeContext([api.MessageEvent(cursor="99", message=shared)]))
    assert json.loads(stock[0])["data"]["events"] == data[-1]
