"""Prometheus metrics: a port of their own, Prometheus text that moves with traffic, nothing when off."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from graph.schema import build_schema
from infra.bus import BroadcastBus, Resync
from infra.metrics_server import multiprocess_registry, serve_metrics
from tests.support.helpers import Api, Person
from tests.support.processes import ProcessServer, free_port
from tests.support.push_fakes import PUSH_SETTINGS, REGISTER_PUSH, PushEndpoint, Subscription, b64url
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.waiting import until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

SEND = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id } }"


@dataclass
class Metered:
    """A Parley server with metrics on, and where they are served."""

    api: Api
    metrics_url: str


async def scrape(url: str) -> Samples:
    """Every sample of a scrape, parsed as Prometheus text (a parse error fails the test)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def operations(samples: Samples, field: str, outcome: str, kind: str = "mutation") -> float:
    return value(samples, "parley_operations_total", type=kind, field=field, outcome=outcome)


async def scrape_until(url: str, check: Callable[[Samples], bool], *, timeout: float = 8.0) -> Samples:
    """The first scrape for which `check(samples)` holds (gauges sampled every 2 s, sockets closing asynchronously)."""

    async def matching() -> tuple[Samples] | None:
        samples = await scrape(url)
        return (samples,) if check(samples) else None  # in a tuple: an empty scrape may be the match

    (samples,) = await until(matching, "the metrics to reach the expected state", timeout=timeout, every=0.1)
    return samples


@pytest.fixture(scope="module")
def metered_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = embedded_settings(tmp_path_factory.mktemp("metered"), metrics_port=free_port())
    with ThreadServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def metered_production(migrated_postgres: str, redis_target: RedisTarget) -> Iterator[ThreadServer]:
    with ThreadServer(production_settings(migrated_postgres, redis_target, metrics_port=free_port())) as server:
        yield server


@pytest.fixture(params=["embedded", "production"])
def metered(request: pytest.FixtureRequest) -> Metered:
    server: ThreadServer = request.getfixturevalue(f"metered_{request.param}")
    port = server.settings.metrics_port
    return Metered(Api(server.url, server.ws_url, request.param), f"http://127.0.0.1:{port}/metrics")


async def test_sends_are_counted_by_root_field_and_outcome_and_timed(metered: Metered) -> None:
    alice, bob = await metered.api.people("alice", "bob")
    conversation = await alice.direct_with(bob)
    before = await scrape(metered.metrics_url)

    for n in range(3):
        await alice.send(conversation, f"message {n}")
    refused = await alice.error(SEND, input={"conversationId": conversation, "clientId": "x", "body": "   "})
    assert refused == "BAD_USER_INPUT"

    after = await scrape(metered.metrics_url)
    assert operations(after, "sendMessage", "ok") - operations(before, "sendMessage", "ok") == 3
    assert operations(after, "sendMessage", "BAD_USER_INPUT") - operations(before, "sendMessage", "BAD_USER_INPUT") == 1
    duration = "parley_operation_duration_seconds_count"
    timed = value(after, duration, type="mutation", field="sendMessage")
    assert timed - value(before, duration, type="mutation", field="sendMessage") == 4
    for histogram in ("parley_send_commit_seconds_count", "parley_commit_publish_seconds_count"):
        assert value(after, histogram) - value(before, histogram) == 3, histogram


async def test_labels_come_only_from_the_schema_never_from_clients(metered: Metered) -> None:
    alice = await metered.api.register("alice")
    # A client-chosen operation name, a field the schema lacks, and an alias: none becomes a label.
    await alice.data("query ClientChosenName { mine: me { id } }")
    failed = await alice.http.error("query AnotherClientName { noSuchField }")
    assert failed.code == "BAD_USER_INPUT"

    samples = await scrape(metered.metrics_url)
    schema = build_schema()._schema
    fields = {
        name
        for root in (schema.query_type, schema.mutation_type, schema.subscription_type)
        if root is not None
        for name in root.fields
    }
    labelled = [dict(labels) for name, labels in samples if name == "parley_operations_total"]
    assert {labels["field"] for labels in labelled} <= fields | {"other"}
    assert {labels["type"] for labels in labelled} <= {"query", "mutation", "subscription", "other"}
    every_value = {v for name, labels in samples if name.startswith("parley_") for k, v in labels if k != "le"}
    assert not every_value & {"ClientChosenName", "AnotherClientName", "noSuchField", "mine", alice.user_id}
    assert operations(samples, "me", "ok", kind="query") >= 1
    assert operations(samples, "other", "BAD_USER_INPUT", kind="query") >= 1


async def test_client_mistakes_are_counted_as_client_errors(metered: Metered) -> None:
    """Review 2, item 15: a subscription sent as plain JSON and a mutation over an SSE GET count as
    BAD_USER_INPUT, the client's mistake (they counted as INTERNAL_SERVER_ERROR)."""
    alice = await metered.api.register("alice")
    before = await scrape(metered.metrics_url)
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with httpx.AsyncClient(base_url=metered.api.url, headers=headers, timeout=30) as http:
        await http.post("/graphql", json={"query": "subscription { events { __typename } }"})
        sse = {"Accept": "text/event-stream"}
        await http.get("/graphql", params={"query": "mutation { logout }"}, headers=sse)
    after = await scrape(metered.metrics_url)

    def added(kind: str, field: str, outcome: str) -> float:
        return operations(after, field, outcome, kind) - operations(before, field, outcome, kind)

    assert added("subscription", "events", "BAD_USER_INPUT") == 1
    assert added("mutation", "logout", "BAD_USER_INPUT") == 1
    assert added("subscription", "events", "INTERNAL_SERVER_ERROR") == 0
    assert added("mutation", "logout", "INTERNAL_SERVER_ERROR") == 0


async def test_sockets_and_subscriptions_are_counted_while_open_and_events_as_delivered(metered: Metered) -> None:
    alice, bob = await metered.api.people("alice", "bob")
    conversation = await alice.direct_with(bob)
    url = metered.metrics_url
    before = await scrape(url)
    sockets = value(before, "parley_websockets_open")
    subscriptions = value(before, "parley_subscriptions_open", field="events")

    async with bob.events() as events:
        await alice.send(conversation, "while you listen")
        received = [await events.next(), await events.next()]  # the conversation's creation, then the message
        assert received[1]["events"]["message"]["body"] == "while you listen"
        during = await scrape(url)
        assert value(during, "parley_websockets_open") == sockets + 1
        assert value(during, "parley_subscriptions_open", field="events") == subscriptions + 1
        delivered = value(during, "parley_events_delivered_total") - value(before, "parley_events_delivered_total")
        assert delivered >= 2
        await bob.acknowledge(received[1]["events"]["cursor"])

    after = await scrape_until(url, lambda s: value(s, "parley_websockets_open") == sockets)
    assert value(after, "parley_subscriptions_open", field="events") == subscriptions
    ended = operations(after, "events", "ok", kind="subscription") - operations(before, "events", "ok", "subscription")
    assert ended == 1
    assert operations(after, "acknowledge", "ok") - operations(before, "acknowledge", "ok") == 1


async def test_database_pools_are_reported(metered: Metered) -> None:
    pools = {"sqlalchemy"} if metered.api.mode == "embedded" else {"sqlalchemy", "asyncpg"}
    alice = await metered.api.register("alice")
    await alice.data("{ me { id } }")

    def reported(samples: Samples) -> bool:
        if metered.api.mode == "production" and not open_connections(samples, "asyncpg"):
            return False  # the hot path's pool has opened connections by now: wait for a sample
        return all((("parley_db_pool_max_connections", frozenset({("pool", pool)})) in samples) for pool in pools)

    samples = await scrape_until(metered.metrics_url, reported)
    for pool in pools:
        in_use = value(samples, "parley_db_pool_connections", pool=pool, state="in_use")
        idle = value(samples, "parley_db_pool_connections", pool=pool, state="idle")
        assert 0 <= in_use + idle <= value(samples, "parley_db_pool_max_connections", pool=pool)
        assert value(samples, "parley_db_pool_waiting", pool=pool) == 0  # nothing is waiting on an idle server


def open_connections(samples: Samples, pool: str) -> float:
    return sum(value(samples, "parley_db_pool_connections", pool=pool, state=state) for state in ("in_use", "idle"))


async def test_metrics_are_not_served_on_the_api_port(metered: Metered) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{metered.api.url}/metrics")
    assert response.status_code == 404
    assert "parley_" not in response.text


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (from /proc: its socket inodes in the kernel's tables)."""
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_without_a_metrics_port_only_the_api_listens(tmp_path: Path) -> None:
    for name in ("off", "on"):
        (tmp_path / name).mkdir()
    before = _listening_ports()
    with ThreadServer(embedded_settings(tmp_path / "off")) as server:
        assert _listening_ports() - before == {server.port}
    metrics_port = free_port()
    with ThreadServer(embedded_settings(tmp_path / "on", metrics_port=metrics_port)) as server:
        assert _listening_ports() - before == {server.port, metrics_port}


def _push_registration(person: Person, endpoint: PushEndpoint) -> dict[str, str]:
    subscription = Subscription()
    return {
        "platform": "WEBPUSH",
        "endpoint": endpoint.url(person.username),
        "p256dh": subscription.p256dh,
        "auth": b64url(subscription.auth),
    }


async def test_push_failures_are_counted_by_platform_and_reason(tmp_path: Path) -> None:
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    settings = embedded_settings(tmp_path, metrics_port=metrics_port, **PUSH_SETTINGS)
    with PushEndpoint() as endpoint, ThreadServer(settings) as server:
        alice, bob = await Api(server.url, server.ws_url, "embedded").people("alice", "bob")
        conversation = await alice.direct_with(bob)
        await bob.data(REGISTER_PUSH, input=_push_registration(bob, endpoint))
        before = await scrape(url)
        endpoint.statuses.extend([503, 410])  # unavailable (retried), then gone (forgotten)
        await alice.send(conversation, "are you there?")
        await endpoint.wait_for(2)

        def failure(samples: Samples, reason: str) -> float:
            return value(samples, "parley_push_failures_total", platform="WEBPUSH", reason=reason)

        after = await scrape_until(url, lambda s: failure(s, "gone") > failure(before, "gone"))
        assert failure(after, "retry") - failure(before, "retry") == 1
        assert failure(after, "gone") - failure(before, "gone") == 1
        assert ("parley_push_queue_depth", frozenset()) in after


@asynccontextmanager
async def _workers(count: int, env: dict[str, str], tmp: Path) -> AsyncIterator[list[ProcessServer]]:
    servers = [ProcessServer(env, log_path=tmp / f"worker-{n}.log") for n in range(count)]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        yield servers
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


async def test_processes_sharing_a_metrics_directory_are_served_as_one(
    tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> None:
    """What `parley serve --workers N` does: workers write files, the supervisor serves their sum.

    The supervisor is played by this test (`prepare_multiprocess` does the same, plus
    setting PROMETHEUS_MULTIPROC_DIR in its own environment for the workers to inherit).
    """
    directory = tmp_path / "metrics"
    directory.mkdir()
    metrics_port = free_port()
    supervisor = serve_metrics("127.0.0.1", metrics_port, multiprocess_registry(str(directory)))
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = {
        **suite_process_env(migrated_postgres, redis_target),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        # The workers find the port taken by the supervisor and leave it to it.
        "PARLEY_METRICS_PORT": str(metrics_port),
    }
    try:
        async with _workers(2, env, tmp_path) as (first, second):
            apis = [Api(server.url, server.ws_url, "production") for server in (first, second)]
            alice = await apis[0].register(f"alice_{uuid.uuid4().hex[:6]}")
            bob = await apis[1].register(f"bob_{uuid.uuid4().hex[:6]}")
            conversation = await alice.direct_with(bob)
            bob_on_first = Person(apis[0], bob.username, bob.token, bob.user_id, bob.device_id)
            await alice.send(conversation, "via the first process")
            await Person(apis[1], alice.username, alice.token, alice.user_id, alice.device_id).send(
                conversation, "via the second process"
            )
            async with bob.socket(), bob_on_first.socket():
                samples = await scrape_until(url, lambda s: value(s, "parley_websockets_open") == 2)
                assert operations(samples, "sendMessage", "ok") == 2
                assert value(samples, "parley_send_commit_seconds_count") == 2
                # A worker that dies without closing its sockets: its open-socket gauge goes with it.
                second.send_signal(signal.SIGKILL)
                await asyncio.to_thread(second.wait_exit, 10)
                samples = await scrape_until(url, lambda s: value(s, "parley_websockets_open") == 1)
                # Its counters stay in the sums.
                assert operations(samples, "sendMessage", "ok") == 2
    finally:
        await asyncio.to_thread(supervisor.close)


async def test_a_subscriber_falling_behind_counts_dropped_notices_and_a_resync() -> None:
    def counted() -> tuple[float, float]:
        dropped = REGISTRY.get_sample_value("parley_bus_dropped_notices_total") or 0.0
        resyncs = REGISTRY.get_sample_value("parley_bus_resyncs_total", {"reason": "overflow"}) or 0.0
        return dropped, resyncs

    dropped, resyncs = counted()
    bus = BroadcastBus("memory://", max_queue=3)
    await bus.connect()
    try:
        async with bus.subscribe("slow reader") as feed:
            await bus.publish_many([("slow reader", str(n)) for n in range(10)])  # not read meanwhile
            items = [await asyncio.wait_for(anext(feed), 5)]
            while not isinstance(items[-1], Resync):
                items.append(await asyncio.wait_for(anext(feed), 5))
    finally:
        await bus.disconnect()
    now_dropped, now_resyncs = counted()
    assert now_dropped - dropped >= 3  # a full queue's worth at least
    assert now_resyncs - resyncs >= 1


async def test_workers_under_one_supervisor_share_one_metrics_port(
    tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> None:
    """`parley serve --workers 2`: the supervisor serves every worker's metrics on the one metrics port."""
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = {**suite_process_env(migrated_postgres, redis_target), "PARLEY_METRICS_PORT": str(metrics_port)}
    parley = str(Path(sys.executable).parent / "parley")
    command = [parley, "serve", "--workers", "2"]
    supervisor = ProcessServer(env, log_path=tmp_path / "supervisor.log", command=command)
    async with supervisor:
        api = Api(supervisor.url, supervisor.ws_url, "production")
        alice, bob = await api.people("alice", "bob")
        conversation = await alice.direct_with(bob)
        for n in range(4):
            await alice.send(conversation, f"message {n}")
        async with bob.socket(), bob.socket(), bob.socket():
            samples = await scrape_until(url, lambda s: value(s, "parley_websockets_open") == 3)
            assert operations(samples, "sendMessage", "ok") == 4
            assert operations(samples, "register", "ok") == 2
        await scrape_until(url, lambda s: value(s, "parley_websockets_open") == 0)
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(supervisor.wait_exit, 30) == 0
