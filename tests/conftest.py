"""Fixtures: backing services for the run, and a real Parley server per mode.

API tests take the `api` fixture and run twice: against the embedded mode
(SQLite, in-process bus) and the production mode (PostgreSQL + Redis).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.helpers import Api
from tests.support.servers import ThreadServer
from tests.support.services import (
    MissingService,
    RedisTarget,
    fresh_database,
    fresh_redis,
    postgres_server,
    redis_server,
)
from tests.support.settings import embedded_settings, production_settings


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for this run (the machine's, or a throwaway one)."""
    try:
        with postgres_server() as server:
            yield server
    except MissingService as missing:
        pytest.exit(f"cannot run the PostgreSQL tests: {missing}", returncode=3)


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of this run's own."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def empty_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of this test's own (not migrated)."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    """A Redis DB number and key prefix of this run's own."""
    try:
        with redis_server() as server, fresh_redis(server) as target:
            yield target
    except MissingService as missing:
        pytest.exit(f"cannot run the Redis tests: {missing}", returncode=3)


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    """This run's PostgreSQL database after `parley migrate`."""
    import asyncio  # noqa: PLC0415

    from infra.migrate import migrate  # noqa: PLC0415

    asyncio.run(migrate(postgres_url))
    return postgres_url


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with ThreadServer(embedded_settings(tmp_path_factory.mktemp("embedded"))) as server:
        yield server


@pytest.fixture(scope="session")
def production_server(migrated_postgres: str, redis_target: RedisTarget) -> Iterator[ThreadServer]:
    with ThreadServer(production_settings(migrated_postgres, redis_target)) as server:
        yield server


@pytest.fixture(params=["embedded", "production"])
def api(request: pytest.FixtureRequest) -> Api:
    """A running Parley server, once per mode."""
    server: ThreadServer = request.getfixturevalue(f"{request.param}_server")
    return Api(url=server.url, ws_url=server.ws_url, mode=request.param)


# The tiers (`pytest -m "not servers and not clients"` is the fast loop; CI runs all): a test
# is marked by what it reaches, so nobody has to remember to mark it. A server is any real one:
# Parley in process or as a process, PostgreSQL, Redis, S3.
_SERVER_FIXTURES = frozenset({"api", "embedded_server", "production_server", "postgres_server_url", "redis_target"})
_SERVER_CLASSES = ("ThreadServer", "ProcessServer", "RedisServer", "S3Server", "PostgresServer", "RedisCluster")
_CLIENT_MODULES = frozenset({"test_browser", "test_node_clients", "test_frontend_kit"})
# Runs the benchmark harness, which starts every server itself.
_SERVER_MODULES = frozenset({"test_bench"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        module = item.module
        name = module.__name__.rsplit(".", 1)[-1]
        if name in _CLIENT_MODULES:
            item.add_marker(pytest.mark.clients)
        starts_servers = name in _SERVER_MODULES or any(cls in vars(module) for cls in _SERVER_CLASSES)
        if starts_servers or set(item.fixturenames) & _SERVER_FIXTURES:
            item.add_marker(pytest.mark.servers)
