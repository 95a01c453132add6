"""The service around the API: settings, endpoints, GraphiQL, error masking, outages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from infra.push.runtime import build_senders
from infra.push.senders import Outcome, PushContent
from infra.push.webpush import new_vapid_keys
from infra.settings import DEFAULT_SECRET_KEY, Settings
from models import PushPlatform, PushRegistration
from tests.support.client import HttpClient
from tests.support.faults import FaultyBus, replacing
from tests.support.helpers import PASSWORD, Api, unique_name
from tests.support.processes import ProcessServer
from tests.support.push_fakes import PushEndpoint, Subscription, b64url
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import SUITE_LIMITS, TEST_SECRET, embedded_settings, production_settings, suite_process_env

INTROSPECTION = "{ __schema { queryType { name } } }"
REGISTER_PUSH = "mutation P($input: PushRegistrationInput!) { registerPush(input: $input) }"


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="PARLEY_SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="PARLEY_SECRET_KEY"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key=TEST_SECRET).is_production


def test_parley_serve_refuses_to_start_in_production_with_the_default_secret(
    tmp_path: Path,
) -> None:
    parley = Path(sys.executable).parent / "parley"
    result = subprocess.run(
        [str(parley), "serve", "--port", "1"],
        env={
            "PARLEY_ENV": "production",
            "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
            "PATH": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "PARLEY_SECRET_KEY" in result.stderr
    assert DEFAULT_SECRET_KEY not in result.stderr


async def test_health_and_readiness(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "database": "ok", "broker": "ok"}


async def test_graphiql_is_served_to_a_browser_in_development(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    assert (await api.anonymous.post(INTROSPECTION))["data"]["__schema"]["queryType"]["name"] == "Query"


@pytest.fixture(scope="module")
def production_like_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = embedded_settings(tmp_path_factory.mktemp("prod"), env="production")
    with ThreadServer(settings) as server:
        yield server


async def test_production_hides_graphiql_and_introspection(
    production_like_server: ThreadServer,
) -> None:
    async with httpx.AsyncClient(base_url=production_like_server.url) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
    assert "graphiql" not in page.text.lower()
    body = await HttpClient(production_like_server.url).post(INTROSPECTION)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "introspection" in body["errors"][0]["message"].lower()


def _without_parley_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's environment as a deployment that never set PARLEY_ENV (nor any other PARLEY_*)."""
    for name in [name for name in os.environ if name.startswith("PARLEY_")]:
        monkeypatch.delenv(name)


@pytest.fixture(params=["embedded", "production"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, object]]:
    """A mode and the settings of its database (and Redis), nothing else."""
    if request.param == "embedded":
        return request.param, {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"}
    redis: RedisTarget = request.getfixturevalue("redis_target")
    postgres: str = request.getfixturevalue("migrated_postgres")
    return request.param, {"database_url": postgres, "redis_url": redis.url, "redis_prefix": redis.prefix}


async def test_a_server_without_parley_env_hides_graphiql_and_the_web_chat_and_refuses_private_push_endpoints(
    backing: tuple[str, dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 2, item 6: PARLEY_ENV unset may be production: only an explicit `development` turns these on."""
    mode, database = backing
    _without_parley_env(monkeypatch)
    settings = Settings(secret_key=TEST_SECRET, **{**SUITE_LIMITS, **database})  # type: ignore[arg-type]
    subscription = Subscription()
    with ThreadServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            page = await http.get("/graphql", headers={"Accept": "text/html"})
            chat = await http.get("/")
        introspection = await HttpClient(server.url).post(INTROSPECTION)
        alice = await Api(server.url, server.ws_url, mode).register("alice")
        refusals = [
            await alice.error(
                REGISTER_PUSH,
                input={
                    "platform": "WEBPUSH",
                    "endpoint": endpoint,
                    "p256dh": subscription.p256dh,
                    "auth": b64url(subscription.auth),
                },
            )
            # the cloud metadata address, and a plain-http loopback service
            for endpoint in ("https://169.254.169.254/push", "http://127.0.0.1:9/push")
        ]
    assert "graphiql" not in page.text.lower()
    assert chat.status_code == 404
    assert introspection["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert refusals == ["BAD_USER_INPUT", "BAD_USER_INPUT"]


async def test_parley_worker_without_parley_env_sends_nothing_to_a_private_push_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 2, item 6: `parley worker` reads the same settings as `parley serve`, with the same safe defaults."""
    _without_parley_env(monkeypatch)
    monkeypatch.setenv("PARLEY_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("PARLEY_PUSH_VAPID_PRIVATE_KEY", new_vapid_keys()[0])
    subscription = Subscription()
    content = PushContent(conversation_id="7", message_id="m.signed", sender_name="Alice", count=1, body=None)
    outcomes = []
    with PushEndpoint() as endpoint:
        registration = PushRegistration(
            device_id=1,
            user_id=1,
            platform=PushPlatform.WEBPUSH,
            endpoint=endpoint.url(),
            p256dh=subscription.p256dh,
            auth=b64url(subscription.auth),
        )
        for env in (None, "development"):
            if env is not None:
                monkeypatch.setenv("PARLEY_ENV", env)
            # What `parley worker` builds from its environment (infra/push/runtime.py run_worker).
            sender = build_senders(Settings())[PushPlatform.WEBPUSH]
            try:
                outcomes.append((await sender.send(registration, content)).outcome)
            finally:
                await sender.close()
        received = len(endpoint.received)
    assert outcomes == [Outcome.FAILED, Outcome.SENT], "refused unset; allowed only in development"
    assert received == 1


class _BrokenPresence:
    """Presence whose reads fail with a bug-like error (to prove masking)."""

    async def touch(self, user_id: int) -> object:
        raise RuntimeError("secret internal detail: SELECT * FROM users")

    async def last_seen(self, user_ids: object) -> dict[int, object]:
        raise RuntimeError("secret internal detail: SELECT * FROM users")

    async def online(self, user_ids: object) -> set[int]:
        raise RuntimeError("secret internal detail")

    async def connected(self, user_id: int) -> None: ...

    async def disconnected(self, user_id: int) -> None: ...


async def test_unexpected_errors_are_masked_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ThreadServer(embedded_settings(tmp_path), replacing(presence=lambda _: _BrokenPresence())) as server:
        client = HttpClient(server.url)
        registered = await client.data(
            "mutation R($u: String!, $p: String!) { register(username: $u, password: $p) { token } }",
            u=unique_name(),
            p=PASSWORD,
        )
        body = await HttpClient(server.url, registered["register"]["token"]).post("{ me { id lastSeen } }")
    error = body["errors"][0]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    assert error["message"] == "Internal server error."
    assert "SELECT" not in str(body)
    assert any("secret internal detail" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_database_outage_is_unavailable(redis_target: RedisTarget) -> None:
    # A PostgreSQL URL where nothing listens: the database is "down".
    settings = production_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none", redis_target)
    with ThreadServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            ready = await http.get("/readyz")
        body = await HttpClient(server.url).post(
            'mutation { register(username: "someone_new", password: "long enough pw") { token } }'
        )
    assert ready.status_code == 503
    assert ready.json()["database"].startswith("unavailable")
    assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    assert "127.0.0.1" not in str(body), "no connection details leak"


def test_allowed_origins_are_read_comma_separated() -> None:
    settings = Settings(allowed_origins="https://app.example, https://admin.example")
    assert settings.allowed_origins == ["https://app.example", "https://admin.example"]


async def test_browser_websockets_need_an_allowed_origin(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect  # noqa: PLC0415
    from websockets.exceptions import InvalidStatus  # noqa: PLC0415
    from websockets.typing import Origin, Subprotocol  # noqa: PLC0415

    settings = embedded_settings(tmp_path, allowed_origins=["https://app.example"])
    with ThreadServer(settings) as server:
        protocols = [Subprotocol("graphql-transport-ws")]
        async with connect(server.ws_url, subprotocols=protocols, origin=Origin("https://app.example")):
            pass
        with pytest.raises(InvalidStatus):
            async with connect(server.ws_url, subprotocols=protocols, origin=Origin("https://evil.example")):
                pass


async def test_parley_migrate_then_serve_against_postgres_and_redis(
    empty_postgres_url: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    env = suite_process_env(empty_postgres_url, redis_target)
    parley = str(Path(sys.executable).parent / "parley")
    migrated = await asyncio.to_thread(
        subprocess.run,
        [parley, "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    async with ProcessServer(env, log_path=tmp_path / "serve.log") as served:
        api = Api(served.url, served.ws_url, "production")
        person = await api.register("pg")
        again = await api.login(person.username)
        assert (await again.data("{ me { username } }"))["me"]["username"] == person.username


async def test_oversized_request_bodies_are_refused_before_parsing(api: Api) -> None:
    huge = "x" * (1024 * 1024 + 1)
    async with httpx.AsyncClient(base_url=api.url) as http:
        response = await http.post("/graphql", json={"query": "{ me { id } }", "variables": {"pad": huge}})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_sending_is_rate_limited_per_user(tmp_path: Path) -> None:
    await _three_sends_a_minute(embedded_settings(tmp_path, send_rate_per_minute=3), "embedded")


async def test_sending_is_rate_limited_per_user_across_processes_in_redis(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    # A prefix of this test's own: the shared test server's counters do not count here.
    own = RedisTarget(redis_target.url, f"{redis_target.prefix}ratelimit:")
    await _three_sends_a_minute(production_settings(migrated_postgres, own, send_rate_per_minute=3), "production")


async def _three_sends_a_minute(settings: Settings, mode: str) -> None:
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, mode)
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        laptop = await alice.other_device("laptop")
        for n in range(2):
            await alice.send(direct, f"m{n}")
        await laptop.send(direct, "m2")
        send = 'mutation S($c: ID!) { sendMessage(input: {conversationId: $c, clientId: "over", body: "x"}) { id } }'
        assert await laptop.error(send, c=direct) == "RATE_LIMITED", "the limit is per user, across devices"
        await bob.send(direct, "bob is not limited")


async def test_subscription_errors_are_masked_too(tmp_path: Path) -> None:
    from tests.support.client import GraphQLFailed  # noqa: PLC0415

    overrides = replacing(bus=lambda s: FaultyBus(s.bus, subscribe=RuntimeError("secret internal detail of the bus")))
    with ThreadServer(embedded_settings(tmp_path), overrides) as server:
        person = await Api(server.url, server.ws_url, "embedded").register("sub")
        with pytest.raises(GraphQLFailed) as failed:
            async with person.events() as events:
                await events.next()
    assert failed.value.code == "INTERNAL_SERVER_ERROR"
    assert "secret" not in str(failed.value.errors)
