"""Cost of one subscription event: graphql-core's executor vs graph/executor.py (projection), in µs.

Run: .venv/bin/python -m bench.projection [--events 5000] [--messages 50] [--repeat 5]

Uses Parley's schema (its extensions, parser and validation caches, error codes) with
a subscription root that yields prepared events in-process, and the document the apps
subscribe with. Prints, per executor, µs per event through strawberry's `subscribe`
and through the per-event executor alone (without strawberry's per-result machinery):
  - 1:1: every event has its own Message (nothing to share);
  - group: 100 subscribers each get their own MessageEvent around one shared Message,
    round-robin, as a group send fans out (µs per delivery);
and the JSON encoding of one graphql-transport-ws `next` frame (json vs orjson).
Each number is the best of `--repeat` runs: on a shared machine the slower runs
measure the neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import strawberry
from graphql import parse
from graphql.execution import Executor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from graph import types as api
from graph.executor import ProjectingExecutionContext
from graph.schema import build_schema

DOCUMENT = """
subscription {
  events {
    __typename
    ... on MessageEvent { cursor message { id clientId conversationId body sentAt sender { id username displayName } } }
    ... on ReceiptEvent { cursor receipt { conversationId messageId status at } }
  }
}
"""
SUBSCRIBERS = 100
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@dataclass
class Source:
    """The context: what the bench subscription yields."""

    payloads: Iterable[Any]


@strawberry.type
class BenchEvents:
    @strawberry.subscription
    async def events(self, info: strawberry.Info, after: str | None = None) -> AsyncGenerator[api.Event, None]:
        for payload in info.context.payloads:
            yield payload


def message(n: int) -> api.Message:
    """A representative message: signed id, a sentence of body, a sender with a display name."""
    return api.Message(
        id=strawberry.ID(f"5.{n}.42.Zx8kq1Vw3mB7"),
        client_id=f"3f1c2a9e-{n:04d}-4b7e-9d2a-7c1e5b0f8a6d",
        conversation_id=strawberry.ID("5"),
        sender=api.User(id=strawberry.ID("42"), username="alice", display_name="Alice Example"),
        body=f"See you at the station at {n % 24}:15, I'll be by the clock.",
        attachments=[],
        sent_at=T0 + timedelta(milliseconds=n),
    )


async def per_event(schema: strawberry.Schema, events: int) -> tuple[float, Any]:
    """µs per event of one subscription receiving `events` messages of its own, and the first result."""
    payloads = [api.MessageEvent(cursor=str(n), message=message(n)) for n in range(events)]
    results = await schema.subscribe(DOCUMENT, context_value=Source(payloads))
    first = await anext(results)
    gc.collect()
    started = time.perf_counter()
    async for _ in results:
        pass
    return (time.perf_counter() - started) / (events - 1) * 1e6, first.data


async def per_delivery(schema: strawberry.Schema, messages: int) -> float:
    """µs per delivery when each message goes to SUBSCRIBERS subscriptions of the same document."""
    shared = [message(n) for n in range(messages)]
    streams = []
    for s in range(SUBSCRIBERS):
        own = [api.MessageEvent(cursor=f"{s}.{n}", message=shared[n]) for n in range(messages)]
        streams.append(await schema.subscribe(DOCUMENT, context_value=Source(own)))
    for stream in streams:  # start every subscription before measuring
        await anext(stream)
    gc.collect()
    started = time.perf_counter()
    for _ in range(1, messages):
        for stream in streams:
            await anext(stream)
    elapsed = time.perf_counter() - started
    for stream in streams:
        await stream.aclose()
    return elapsed / ((messages - 1) * SUBSCRIBERS) * 1e6


def executor_only(
    schema: strawberry.Schema, executor_class: type[Executor[Any]], events: int, subscribers: int = 1
) -> float:
    """µs per event of the per-event executor alone (build and execute), each message to `subscribers`."""
    document = parse(DOCUMENT)  # one document, as the parser cache hands out
    executors = [executor_class.build(schema._schema, document) for _ in range(subscribers)]
    messages = [message(n) for n in range(events // subscribers)]
    payloads = [
        [api.MessageEvent(cursor=f"{s}.{n}", message=shared) for s in range(subscribers)]
        for n, shared in enumerate(messages)
    ]
    gc.collect()
    started = time.perf_counter()
    for fan_out in payloads:
        for executor, payload in zip(executors, fan_out, strict=True):
            assert isinstance(executor, Executor)
            result = executor.build_per_event_executor(payload).execute_operation(False)
            assert not asyncio.iscoroutine(result)
    return (time.perf_counter() - started) / (len(messages) * subscribers) * 1e6


def per_call(function: Callable[[], object], calls: int) -> float:
    """µs per call."""
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


async def measure(
    schema: strawberry.Schema, executor_class: type[Executor[Any]], events: int, messages: int, repeat: int
) -> tuple[float, float, float, float]:
    """The best of `repeat` runs of each measurement: 1:1, group, executor only 1:1 and group."""
    best = [float("inf")] * 4
    for _ in range(repeat):
        runs = (
            (await per_event(schema, events))[0],
            await per_delivery(schema, messages),
            executor_only(schema, executor_class, events),
            executor_only(schema, executor_class, events, SUBSCRIBERS),
        )
        best = [min(a, b) for a, b in zip(best, runs, strict=True)]
    return best[0], best[1], best[2], best[3]


async def run(events: int, messages: int, repeat: int) -> None:
    """Measures and prints every row."""
    schemas = {
        "graphql-core executor": (
            build_schema(subscription=BenchEvents, execution_context_class=StrawberryGraphQLCoreExecutionContext),
            StrawberryGraphQLCoreExecutionContext,
        ),
        "projection (ours)": (build_schema(subscription=BenchEvents), ProjectingExecutionContext),
    }
    firsts = []
    print(f"{'':24}{'subscribe() 1:1':>16}{'subscribe() group':>19}{'executor 1:1':>15}{'executor group':>17}")
    for name, (schema, executor_class) in schemas.items():
        firsts.append((await per_event(schema, 2))[1])
        numbers = await measure(schema, executor_class, events, messages, repeat)
        print(f"{name:24}" + "".join(f"{n:{w}.1f} µs" for n, w in zip(numbers, (13, 16, 12, 14), strict=True)))
    assert firsts[0] == firsts[1], "the two executors disagree"
    frame = {"id": "1", "type": "next", "payload": {"data": firsts[1]}}
    encoded = len(json.dumps(frame, separators=(",", ":")))
    json_us = min(per_call(lambda: json.dumps(frame, separators=(",", ":")), events) for _ in range(repeat))
    orjson_us = min(per_call(lambda: orjson.dumps(frame).decode(), events) for _ in range(repeat))
    print(f"encode one {encoded}-byte frame: json {json_us:.2f} µs, orjson {orjson_us:.2f} µs")


def main() -> None:
    """Parses the arguments and runs the benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000, help="events per 1:1 measurement")
    parser.add_argument("--messages", type=int, default=50, help=f"messages to {SUBSCRIBERS} subscribers")
    parser.add_argument("--repeat", type=int, default=5, help="runs per number (the best is printed)")
    args = parser.parse_args()
    asyncio.run(run(args.events, args.messages, args.repeat))


if __name__ == "__main__":
    main()
