"""PostgreSQL going away and coming back: quick UNAVAILABLE answers, recovery without a restart, nothing lost."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from graphql import GraphQLError
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from graph.errors import UNAVAILABLE_MESSAGE, error_code, shape_errors
from infra.db import CommitOutcomeUnknown, Database, create_engine
from infra.migrate import migrate
from infra.outages import is_outage, outage_boundary
from infra.pg_inbox_store import PgInboxStore, StoreUnavailable
from resolvers.errors import Unavailable
from tests.support.client import GraphQLFailed
from tests.support.helpers import Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import PostgresServer, RedisTarget, fresh_database
from tests.support.settings import production_settings
from tests.support.streams import bodies, next_of

# Generous: the settings below allow 1 s for a connection; the defaults this replaced were 30 and 60 s.
QUICK = 5.0


@pytest.fixture(scope="module")
def postgres_to_stop() -> Iterator[PostgresServer]:
    """A PostgreSQL server of these tests' own (initdb takes seconds: one for the module)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def own_postgres(postgres_to_stop: PostgresServer) -> Iterator[PostgresServer]:
    """That server, running, for a test that stops it hard and starts it again."""
    yield postgres_to_stop
    if not postgres_to_stop.running:  # the test failed while it was down
        postgres_to_stop.start()


@pytest.fixture
def own_database(own_postgres: PostgresServer) -> Iterator[str]:
    """A migrated database on that server."""
    with fresh_database(own_postgres.url) as url:
        asyncio.run(migrate(url))
        yield url


async def _code_of(error: Exception) -> str:
    """The `extensions.code` a client gets when an adapter call fails with `error` (through its outage boundary)."""
    try:
        async with outage_boundary("PostgreSQL"):
            raise error
    except Exception as raised:  # what the adapter raised, as graph/ sees it
        return error_code(GraphQLError("failed", original_error=raised))
    raise AssertionError("unreachable")


async def _timed_failure(call: Callable[[], Awaitable[Any]]) -> tuple[str, float]:
    """The error code of a call that must fail, and how long it took to fail."""
    started = time.monotonic()
    with pytest.raises(GraphQLFailed) as failed:
        await call()
    return failed.value.code, time.monotonic() - started


async def _until_it_works(call: Callable[[], Awaitable[Any]], *, within: float) -> tuple[Any, set[str]]:
    """Retries `call` until it succeeds; returns its result and the codes of the failures before."""
    codes: set[str] = set()
    deadline = time.monotonic() + within
    while True:
        try:
            return await call(), codes
        except GraphQLFailed as failed:
            codes.add(failed.code)
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.01)


async def test_requests_during_a_postgres_outage_are_unavailable_and_service_resumes_by_itself(
    own_postgres: PostgresServer, own_database: str, redis_target: RedisTarget
) -> None:
    redis = RedisTarget(redis_target.url, f"{redis_target.prefix}pg-outage-{uuid.uuid4().hex[:6]}:")
    settings = production_settings(
        own_database,
        redis,
        database_pool_timeout_seconds=1,
        database_connect_timeout_seconds=1,
    )
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        before = [f"before {n}" for n in range(5)]
        async with bob.events() as bob_events:
            for body in before:
                await alice.send(direct, body)
            assert (await next_of(bob_events, "MessageEvent"))["message"]["body"] == "before 0"
            cursor = (await bob.pending())[0]["cursor"]

            await asyncio.to_thread(own_postgres.stop)

            during: dict[str, Callable[[], Awaitable[Any]]] = {
                "sendMessage": lambda: alice.send(direct, "while the database is down"),
                "pendingEvents": bob.pending,
                "acknowledge": lambda: bob.acknowledge(cursor),
                "login": lambda: api.login(alice.username),
            }
            for name, call in during.items():
                code, seconds = await _timed_failure(call)
                assert code == "UNAVAILABLE", name
                assert seconds < QUICK, f"{name} took {seconds:.1f} s to fail"
            # A new socket is told to come back later (1013), not that its token is bad (4403).
            async with connect(server.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
                await ws.send(
                    json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {bob.token}"}})
                )
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), QUICK)
                assert ws.close_code == 1013
            async with httpx.AsyncClient(base_url=server.url) as http:
                started = time.monotonic()
                ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"].startswith("unavailable")
            assert time.monotonic() - started < QUICK
            # An HTTP stream, like a socket, is told to come back later, not that its token is bad (401).
            async with httpx.AsyncClient(base_url=server.url, timeout=QUICK) as http:
                refused = await http.post(
                    "/graphql",
                    json={"query": "subscription { events { __typename } }"},
                    headers={"Authorization": f"Bearer {bob.token}", "Accept": "text/event-stream"},
                )
            assert refused.status_code == 503
            assert refused.json()["errors"] == [{"message": UNAVAILABLE_MESSAGE, "extensions": {"code": "UNAVAILABLE"}}]

            # Back after crash recovery; meanwhile it refuses with "the database system is starting
            # up" (57P03): that is UNAVAILABLE too, never an internal error.
            await asyncio.to_thread(own_postgres.start, wait=False)
            # Both drivers at once (sends run on asyncpg, logins on SQLAlchemy), retried as apps do.
            client_id = uuid.uuid4().hex
            (_, send_codes), (_, login_codes) = await asyncio.gather(
                _until_it_works(lambda: alice.send(direct, "after the outage", client_id=client_id), within=20),
                _until_it_works(lambda: api.login(alice.username), within=20),
            )
            assert send_codes <= {"UNAVAILABLE"}
            assert login_codes <= {"UNAVAILABLE"}

            # The same process serves again: live delivery, and nothing stored before was lost.
            later = await next_of(bob_events, "MessageEvent", timeout=20)
            while later["message"]["body"] != "after the outage":
                later = await next_of(bob_events, "MessageEvent", timeout=20)
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/readyz")).status_code == 200
        assert bodies(await bob.pending()) == [*before, "after the outage"]


async def test_the_starting_up_window_is_classified_unavailable(own_postgres: PostgresServer) -> None:
    """Real errors of a PostgreSQL in crash recovery, from both drivers Parley uses, map to UNAVAILABLE."""
    engine = create_engine(f"{own_postgres.url.replace('postgresql://', 'postgresql+asyncpg://')}/postgres")
    seen: list[Exception] = []
    try:
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.to_thread(own_postgres.start, wait=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
                break
            except Exception as error:  # every error of the window is collected and checked below
                seen.append(error)
            try:
                connection = await asyncpg.connect(f"{own_postgres.url}/postgres")  # type: ignore[no-untyped-call]
                await connection.close()
            except Exception as error:  # as above
                seen.append(error)
            await asyncio.sleep(0.005)
    finally:
        await engine.dispose()
    starting_up = [e for e in seen if "starting up" in str(e) or "not yet accepting" in str(e)]
    assert starting_up, f"the starting-up window was not seen: {seen!r}"
    assert {type(e).__name__ for e in starting_up} >= {"DBAPIError", "CannotConnectNowError"}
    assert all(is_outage(e) for e in seen), seen
    assert {await _code_of(e) for e in seen} == {"UNAVAILABLE"}


async def test_connection_class_database_errors_are_unavailable() -> None:
    """Shutdown, crash, too many connections and pool timeouts, raw or raised from, leave an adapter as UNAVAILABLE."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout  # noqa: PLC0415

    errors: list[Exception] = [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        PoolTimeout("QueuePool limit of size 10 overflow 20 reached, connection timed out, timeout 2.00"),
        ConnectionRefusedError(111, "Connect call failed"),
        StoreUnavailable("PostgreSQL is unavailable"),
    ]
    for error in errors:
        assert await _code_of(error) == "UNAVAILABLE", repr(error)
        wrapper = RuntimeError("wrapped")
        wrapper.__cause__ = error
        assert await _code_of(wrapper) == "UNAVAILABLE", f"raised from {error!r}"
    assert await _code_of(asyncpg.exceptions.UniqueViolationError("duplicate key")) == "INTERNAL_SERVER_ERROR"


async def test_the_boundary_translates_outages_only() -> None:
    """An outage leaves as `Unavailable` raised from the driver's error; any other error leaves unchanged."""
    refused = ConnectionRefusedError(111, "Connect call failed")
    with pytest.raises(Unavailable) as translated:
        async with outage_boundary("PostgreSQL"):
            raise refused
    assert translated.value.__cause__ is refused
    assert translated.value.code == "UNAVAILABLE"
    duplicate = asyncpg.exceptions.UniqueViolationError("duplicate key")
    with pytest.raises(asyncpg.exceptions.UniqueViolationError) as untouched:
        async with outage_boundary("PostgreSQL"):
            raise duplicate
    assert untouched.value is duplicate


def test_graph_maps_the_ports_errors_and_knows_no_driver() -> None:
    """`Unavailable` (raw or raised from) is UNAVAILABLE with a message naming no host; a raw driver error is internal."""

    def code(error: Exception) -> str:
        return error_code(GraphQLError("failed", original_error=error))

    outage = Unavailable("PostgreSQL is unavailable (OSError: connect to 10.0.0.7:5432 failed)")
    wrapper = RuntimeError("wrapped")
    wrapper.__cause__ = outage
    assert code(outage) == code(wrapper) == "UNAVAILABLE"
    # Adapters translate at their boundary: an outage error that escaped one is a bug, shown as such.
    assert code(ConnectionRefusedError(111, "Connect call failed")) == "INTERNAL_SERVER_ERROR"
    (shaped,) = shape_errors([GraphQLError("failed", original_error=outage, path=["sendMessage"])])
    assert shaped.formatted == {
        "message": UNAVAILABLE_MESSAGE,
        "path": ["sendMessage"],
        "extensions": {"code": "UNAVAILABLE"},
    }


def test_a_commit_of_unknown_outcome_says_so_to_the_client() -> None:
    """A connection lost during COMMIT may have stored the change: the client is told to check, not "nothing was stored"."""
    unknown = CommitOutcomeUnknown()
    (shaped,) = shape_errors([GraphQLError(unknown.message, original_error=unknown, path=["createGroup"])])
    assert shaped.formatted["extensions"] == {"code": "UNAVAILABLE"}
    assert "may have been stored" in shaped.formatted["message"]
    assert shaped.formatted["message"] != UNAVAILABLE_MESSAGE


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_database_adapters_raise_unavailable_when_postgres_refuses(closed_port: int) -> None:
    """Sessions, transactions, ping and the asyncpg store all raise the ports' `Unavailable`, from the driver's error."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/parley"
    db = Database(create_engine(url, pool_timeout=1, connect_timeout=1))
    store = await PgInboxStore.connect(url, pool_timeout=1, connect_timeout=1)

    async def select_one(session: Any) -> object:
        return await session.execute(text("SELECT 1"))

    async def read() -> None:
        async with db.session() as session:
            await select_one(session)

    async def write() -> None:
        await db.transaction(select_one)

    calls: list[Callable[[], Awaitable[None]]] = [read, write, db.ping]
    try:
        for call in calls:
            with pytest.raises(Unavailable) as failed:
                await call()
            assert is_outage(failed.value.__cause__), repr(failed.value.__cause__)
        with pytest.raises(StoreUnavailable) as lost:
            await store.positions(1)
        assert isinstance(lost.value, Unavailable)
        # Not an outage: the caller's own error passes through the session unchanged.
        with pytest.raises(LookupError):
            async with db.session():
                raise LookupError("no such row")
    finally:
        await store.close()
        await db.close()


@pytest.fixture
def silent_database() -> Iterator[str]:
    """A "database" that accepts TCP connections and never answers (a hung server, a black-holed route)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{listener.getsockname()[1]}/parley"


async def test_a_database_that_never_answers_is_unavailable_within_the_connect_timeout(
    silent_database: str, redis_target: RedisTarget
) -> None:
    settings = production_settings(
        silent_database, redis_target, database_pool_timeout_seconds=1, database_connect_timeout_seconds=1
    )
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        someone = Person(api, "someone", "not-a-real-token", "1", "1")
        for call in (lambda: api.register("hung"), someone.pending):
            code, seconds = await _timed_failure(call)
            assert code == "UNAVAILABLE"
            assert seconds < QUICK, f"took {seconds:.1f} s, not about the 1 s connect timeout"
