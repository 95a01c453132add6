"""Abuse limits on the unauthenticated surface, secrets kept out of logs, safe startup."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from infra.app import Overrides
from infra.cli import configure_logging
from infra.settings import Settings
from models import Message
from resolvers.services import Services
from tests.support.client import GraphQLFailed, HttpClient
from tests.support.helpers import AUTH, PASSWORD, Api, unique_name
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.waiting import until

LOGIN = f"mutation L($u: String!, $p: String!) {{ login(username: $u, password: $p) {{ {AUTH} }} }}"
REGISTER = f"mutation R($u: String!, $p: String!) {{ register(username: $u, password: $p) {{ {AUTH} }} }}"


@pytest.fixture(params=["embedded", "production"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both modes, for tests that need servers with settings of their own."""
    return str(request.param)


ServerWith = Callable[..., ThreadServer]


@pytest.fixture
def server_with(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> ServerWith:
    """A server with changed settings in the test's mode: `with server_with(x=1) as server:`."""
    if mode == "production":  # set up here, outside the test's event loop
        postgres: str = request.getfixturevalue("migrated_postgres")
        redis: RedisTarget = request.getfixturevalue("redis_target")

    def start(overrides: Overrides | None = None, **changes: object) -> ThreadServer:
        if mode == "embedded":
            directory = tmp_path / unique_name("db")
            directory.mkdir()
            settings = embedded_settings(directory, **changes)
        else:
            # A prefix of its own: this server's rate-limit counters start at zero.
            settings = production_settings(
                postgres, replace(redis, prefix=f"{redis.prefix}{unique_name('abuse')}:"), **changes
            )
        return ThreadServer(settings, overrides)

    return start


async def code_of(url: str, query: str, *, headers: dict[str, str] | None = None, **variables: Any) -> str:
    """`extensions.code` of the first error, or "OK"."""
    body = await HttpClient(url).post(query, variables, headers=headers)
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    return "OK"


async def register(url: str) -> str:
    username = unique_name("user")
    assert await code_of(url, REGISTER, u=username, p=PASSWORD) == "OK"
    return username


# Item 4: password hashes are the expensive thing anyone can ask for.


async def test_item_04_one_login_or_register_per_request(api: Api) -> None:
    person = await api.register("target")
    names = [unique_name("a"), unique_name("b")]
    aliased = (
        "mutation { "
        + " ".join(
            f'l{i}: login(username: "{person.username}", password: "guess number {i}") {{ token }}' for i in range(30)
        )
        + " }"
    )
    two_registers = (
        "mutation { "
        f'a: register(username: "{names[0]}", password: "{PASSWORD}") {{ token }} '
        f'b: register(username: "{names[1]}", password: "{PASSWORD}") {{ token }} }}'
    )
    through_fragments = (
        f'mutation {{ ...A ... on Mutation {{ register(username: "{names[0]}", password: "{PASSWORD}") {{ token }} }} }} '
        f'fragment A on Mutation {{ login(username: "{person.username}", password: "x") {{ token }} }}'
    )
    for query in (aliased, two_registers, through_fragments):
        error: GraphQLFailed = await api.anonymous.error(query)
        assert error.code == "BAD_USER_INPUT"
        assert "one login or register" in error.errors[0]["message"]
    for name in names:
        assert (await api.anonymous.error(LOGIN, u=name, p=PASSWORD)).code == "UNAUTHENTICATED", "nothing ran"
    # One per request is fine, as is one beside other fields.
    assert (await api.anonymous.data(LOGIN, u=person.username, p=PASSWORD))["login"]["token"]


async def test_item_04_attempts_are_limited_per_client_address(server_with: ServerWith) -> None:
    with server_with(auth_attempts_per_address=4) as server:
        for _ in range(3):  # random usernames: the per-username limit never sees a repeat
            assert await code_of(server.url, LOGIN, u=unique_name("nobody"), p=PASSWORD) == "UNAUTHENTICATED"
        await register(server.url)
        assert await code_of(server.url, LOGIN, u=unique_name("nobody"), p=PASSWORD) == "RATE_LIMITED"
        assert await code_of(server.url, REGISTER, u=unique_name("new"), p=PASSWORD) == "RATE_LIMITED"
        # Without trusted proxies a client cannot pick its address.
        spoofed = {"X-Forwarded-For": "203.0.113.9"}
        assert await code_of(server.url, REGISTER, headers=spoofed, u=unique_name("new"), p=PASSWORD) == "RATE_LIMITED"


async def test_item_04_behind_a_trusted_proxy_the_forwarded_address_counts(server_with: ServerWith) -> None:
    with server_with(auth_attempts_per_address=2, trusted_proxies=["127.0.0.0/8"]) as server:

        async def attempt(client: str) -> str:
            # The proxy appends the address it saw; whatever the client sent comes before it.
            headers = {"X-Forwarded-For": f"198.51.100.77, {client}"}
            return await code_of(server.url, LOGIN, headers=headers, u=unique_name("nobody"), p=PASSWORD)

        assert [await attempt("203.0.113.1") for _ in range(3)] == ["UNAUTHENTICATED"] * 2 + ["RATE_LIMITED"]
        assert await attempt("203.0.113.2") == "UNAUTHENTICATED", "another client has attempts of its own"
        # IPv6 clients are counted by their /64: rotating addresses within it does not help.
        assert [await attempt(f"2001:db8:1:2::{n}") for n in range(1, 4)] == ["UNAUTHENTICATED"] * 2 + ["RATE_LIMITED"]


async def test_item_04_parallel_guesses_cannot_pass_the_username_limit(server_with: ServerWith) -> None:
    with server_with(login_max_failures=3) as server:
        username = await register(server.url)
        codes = await asyncio.gather(*(code_of(server.url, LOGIN, u=username, p=f"guess {n}") for n in range(30)))
        assert codes.count("UNAUTHENTICATED") <= 3, codes
        assert set(codes) <= {"UNAUTHENTICATED", "RATE_LIMITED"}, codes


async def test_item_04_parallel_guesses_of_the_old_password_cannot_pass_the_limit(server_with: ServerWith) -> None:
    # A stolen token must not be a way around the login limit: changePassword checks the password too.
    change = "mutation C($old: String!, $new: String!) { changePassword(oldPassword: $old, newPassword: $new) }"
    with server_with(login_max_failures=3) as server:
        body = await HttpClient(server.url).post(REGISTER, {"u": unique_name(), "p": PASSWORD})
        token = body["data"]["register"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        codes = await asyncio.gather(
            *(code_of(server.url, change, headers=headers, old=f"guess {n}", new="new password 1") for n in range(20))
        )
        assert codes.count("UNAUTHENTICATED") <= 3, codes
        assert set(codes) <= {"UNAUTHENTICATED", "RATE_LIMITED"}, codes


async def test_item_04_a_lockout_ends_with_its_window(server_with: ServerWith) -> None:
    with server_with(login_max_failures=2, login_failure_window_seconds=1) as server:
        username = await register(server.url)
        assert await code_of(server.url, LOGIN, u=username, p=PASSWORD) == "OK"
        assert [await code_of(server.url, LOGIN, u=username, p="wrong guess") for _ in range(3)] == [
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "RATE_LIMITED",
        ]
        assert await code_of(server.url, LOGIN, u=username, p=PASSWORD) == "RATE_LIMITED"

        # The stranger keeps guessing; the window still ends when it ends.
        async def owner_back_in() -> bool:
            await code_of(server.url, LOGIN, u=username, p="wrong guess")
            return await code_of(server.url, LOGIN, u=username, p=PASSWORD) == "OK"

        await until(owner_back_in, "the owner able to log in once the window is over", timeout=10, every=0.1)


async def test_item_04_password_hashes_run_a_bounded_number_at_once(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, max_concurrent_password_hashes=1, login_max_failures=1000)
    # Real argon2 (64 MiB, ~0.1 s): with one slot, a burst cannot all be served at once.
    with ThreadServer(settings, Overrides(fast_password_hashing=False)) as server:
        username = await register(server.url)
        codes = await asyncio.gather(*(code_of(server.url, LOGIN, u=username, p=PASSWORD) for _ in range(40)))
        assert "RATE_LIMITED" in codes, codes
        assert "OK" in codes, codes
        assert set(codes) == {"OK", "RATE_LIMITED"}, codes
        # Once the burst is over, logins work again.
        assert await code_of(server.url, LOGIN, u=username, p=PASSWORD) == "OK"


# Item 13: logs must not hold message bodies, passwords or tokens.


class FailingSends:
    """The real delivery store, but `send` runs an INSERT that fails with the body among its parameters."""

    def __init__(self, services: Services) -> None:
        self._inner = services.inbox_store
        self._db = services.db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, *, sender_id: int, conversation_id: int, client_id: str, body: str | None, **_: Any) -> Any:
        async with self._db.session() as session:
            # No such conversation: a foreign key violation, raised with the statement's parameters.
            await session.execute(
                insert(Message).values(conversation_id=2**62, sender_id=sender_id, client_id=client_id, body=body)
            )
            await session.commit()


async def test_item_13_database_errors_and_logins_keep_secrets_out_of_the_log(
    server_with: ServerWith, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging("DEBUG")  # as `parley serve` with PARLEY_LOG_LEVEL=DEBUG
    caplog.set_level(logging.DEBUG)
    overrides = Overrides(wrap=lambda s: replace(s, inbox_store=FailingSends(s)), fast_password_hashing=True)
    with server_with(overrides) as server:
        api = Api(server.url, server.ws_url, "test")
        alice, bob = await api.register("alice"), await api.register("bob")
        await api.login(alice.username)
        assert (await api.anonymous.error(LOGIN, u=alice.username, p="my-secret-wrong-password")).code
        direct = await alice.direct_with(bob)
        body = "the-secret-message-body-0451"
        assert (
            await alice.http.error(
                "mutation S($i: SendMessageInput!) { sendMessage(input: $i) { id } }",
                i={"conversationId": direct, "clientId": "c1", "body": body},
            )
        ).code == "INTERNAL_SERVER_ERROR"
    assert "IntegrityError" in caplog.text, "the failure itself is logged"
    for secret in (body, PASSWORD, "my-secret-wrong-password", alice.token, bob.token):
        assert secret not in caplog.text


# Item 15: no public secret on a public address; security headers.


def test_item_15_development_secret_on_a_public_address(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    from infra.cli import check_secret_exposure  # noqa: PLC0415 - new in this change; the other tests run without it

    database = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    unset = Settings(database_url=database)
    explicit = Settings(database_url=database, env="development")
    with pytest.raises(SystemExit, match="development secret"):
        check_secret_exposure(unset, "0.0.0.0")  # noqa: S104 - the point of the test
    with caplog.at_level(logging.WARNING, logger="parley"):
        for host in ("127.0.0.1", "localhost", "::1"):
            check_secret_exposure(unset, host)
            check_secret_exposure(explicit, host)
        check_secret_exposure(Settings(database_url=database, secret_key="x" * 40), "0.0.0.0")  # noqa: S104
        assert not caplog.records
        check_secret_exposure(explicit, "192.0.2.10")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "development secret" in caplog.text


def test_item_15_parley_serve_refuses_the_development_secret_on_a_public_address(tmp_path: Path) -> None:
    parley = Path(sys.executable).parent / "parley"
    result = subprocess.run(
        [str(parley), "serve", "--host", "0.0.0.0", "--port", "1"],  # noqa: S104
        env={
            "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
            "PATH": "",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this tree's code, whatever is installed
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "development secret" in result.stderr
    assert "PARLEY_SECRET_KEY" in result.stderr


def test_item_15_a_socket_handed_to_parley_serve_is_checked_by_its_own_address(tmp_path: Path) -> None:
    """`parley serve --fd N` on a socket bound to every interface is refused as `--host 0.0.0.0` is (not taken for --host's default)."""
    parley = Path(sys.executable).parent / "parley"
    with socket.socket() as public:
        public.bind(("0.0.0.0", 0))  # noqa: S104 - the point of the test
        result = subprocess.run(
            [str(parley), "serve", "--fd", str(public.fileno())],
            env={
                "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
                "PATH": "",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # this tree's code, whatever is installed
            },
            pass_fds=(public.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert "listening on 0.0.0.0 with the public development secret" in result.stderr


BASE_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


async def test_item_15_responses_carry_security_headers(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        responses = [
            await http.get("/healthz"),
            await http.post("/graphql", json={"query": "{ me { id } }"}),
            await http.post("/graphql", content=b"x" * (2 * 1024 * 1024)),  # refused by the body limit
        ]
    for response in responses:
        for name, value in BASE_HEADERS.items():
            assert response.headers[name] == value
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers, "plain HTTP: HSTS means nothing"


async def test_item_15_graphiql_works_under_its_policy_and_hsts_follows_https(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, trusted_proxies=["127.0.0.1"])
    with ThreadServer(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            page = await http.get("/graphql", headers={"accept": "text/html"})
            https = await http.get("/healthz", headers={"x-forwarded-proto": "https"})
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    for source in re.findall(r'<(?:script|link)[^>]* (?:src|href)="(https://[^/"]+)/', page.text):
        assert source in policy, f"GraphiQL loads from {source}"
    for script in re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy, "the inline script may run"
    assert "'unsafe-eval'" not in policy
    assert https.headers["strict-transport-security"].startswith("max-age=")
