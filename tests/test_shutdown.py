"""Graceful shutdown (issue 11): SIGTERM drains, closes sockets with 1012, lets requests finish, exits 0; `--workers`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from redis.asyncio import Redis

from tests.support.client import WsClient, ws_connect
from tests.support.helpers import EVENTS, MESSAGE_FIELDS, Api, Person
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import suite_process_env
from tests.support.streams import next_state, watching
from tests.support.waiting import until

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]
PARLEY = str(Path(sys.executable).parent / "parley")
# What each process logs when SIGTERM starts its drain (infra/server.py).
DRAIN_STARTED = "shutting down: /readyz answers 503"
SEND = f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE_FIELDS} }} }}"


def shutdown_env(postgres: str, redis: RedisTarget, *, drain: float, grace: float) -> dict[str, str]:
    # A presence TTL far beyond the test: only the clean shutdown itself can take users offline in time.
    return {
        **suite_process_env(postgres, redis),
        "PARLEY_SHUTDOWN_DRAIN_SECONDS": str(drain),
        "PARLEY_SHUTDOWN_GRACE_SECONDS": str(grace),
        "PARLEY_PRESENCE_NODE_TTL_SECONDS": "600",
    }


async def readyz(url: str) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{url}/readyz")
    body: dict[str, object] = response.json()
    return response.status_code, body


async def refused(url: str) -> bool:
    """Whether a new connection to `url` is refused (the process stopped listening)."""
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            await http.get(f"{url}/healthz")
    except httpx.ConnectError:
        return True
    return False


async def in_flight(server: ProcessServer, length: int, *, headers: bytes = b"") -> StreamPair:
    """A POST /graphql announcing a body of `length` bytes, none sent yet, once the app has begun reading it.

    The request says `Expect: 100-continue`: uvicorn answers `100 Continue` when the app first
    asks for the body, the signal that the request is in the app's hands.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /graphql HTTP/1.1\r\nHost: parley\r\nContent-Type: application/json\r\n"
        + headers
        + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % length
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    return reader, writer


async def exit_status(server: ProcessServer, timeout: float = 20) -> int:
    return await asyncio.to_thread(server.wait_exit, timeout)


async def close_code(socket: WsClient, timeout: float = 10) -> int | None:
    code, _reason = await asyncio.wait_for(asyncio.shield(socket.closed), timeout)
    return code


async def test_sigterm_drains_then_closes_sockets_with_1012_takes_users_offline_and_exits_0(
    migrated_postgres: str, redis_target: RedisTarget, production_server: ThreadServer, tmp_path: Path
) -> None:
    env = shutdown_env(migrated_postgres, redis_target, drain=1, grace=5)
    server = ProcessServer(env, log_path=tmp_path / "serve.log")
    async with server:
        alice = await Api(server.url, server.ws_url, "production").register("alice")
        bob = await Api(production_server.url, production_server.ws_url, "production").register("bob")
        await alice.direct_with(bob)
        async with watching(bob, alice) as presence, ws_connect(server.ws_url, alice.token) as socket:
            await socket.subscribe(EVENTS)
            while not (await next_state(presence))["online"]:
                pass
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The drain: not ready at once, while everything else still works.
            assert await readyz(server.url) == (503, {"ready": False, "draining": True})
            assert (await alice.data("{ me { id } }"))["me"]["id"] == alice.user_id
            # Sampled across the drain, a real-time window of another process: nothing to wait for.
            while time.monotonic() - signalled < 0.7:
                assert (await readyz(server.url))[0] == 503
                await asyncio.sleep(0.1)
            assert not socket.closed.done()

            # Then sockets close with 1012 (service restart), not an abrupt drop.
            assert await close_code(socket) == 1012
            assert time.monotonic() - signalled >= 0.9  # not before the drain ended
            # The user is offline for others right away (the registry's liveness TTL is 10 minutes).
            assert (await next_state(presence, timeout=5))["online"] is False
            assert (await bob.data("query U($id: ID!) { user(id: $id) { online } }", id=alice.user_id))["user"][
                "online"
            ] is False
        assert await exit_status(server) == 0


async def test_a_request_in_flight_finishes_while_new_connections_are_refused(
    migrated_postgres: str, redis_target: RedisTarget, production_server: ThreadServer, tmp_path: Path
) -> None:
    env = shutdown_env(migrated_postgres, redis_target, drain=0, grace=10)
    server = ProcessServer(env, log_path=tmp_path / "serve.log")
    async with server:
        alice = await Api(server.url, server.ws_url, "production").register("alice")
        bob = await Api(production_server.url, production_server.ws_url, "production").register("bob")
        direct = await alice.direct_with(bob)
        await bob.drain()
        payload = json.dumps(
            {"query": SEND, "variables": {"input": {"conversationId": direct, "clientId": "slow-1", "body": "late"}}}
        ).encode()
        # A slow mobile link: the headers are in, the body is still on its way.
        reader, writer = await in_flight(
            server, len(payload), headers=b"Authorization: Bearer %s\r\n" % alice.token.encode()
        )
        server.send_signal(signal.SIGTERM)
        await until(lambda: refused(server.url), "new connections refused", timeout=5)
        writer.write(payload)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        assert length is not None, head
        response = json.loads(await asyncio.wait_for(reader.readexactly(int(length[1])), 30))
        writer.close()  # only now: closing drops what the transport has not yet read
        assert response["data"]["sendMessage"]["body"] == "late"
        assert await exit_status(server) == 0
    (event,) = await bob.pending()
    assert event["message"]["clientId"] == "slow-1"


async def test_requests_and_subscriptions_cannot_hold_the_shutdown_past_the_grace_period(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    env = shutdown_env(migrated_postgres, redis_target, drain=0, grace=1)
    server = ProcessServer(env, log_path=tmp_path / "serve.log")
    async with server:
        alice = await Api(server.url, server.ws_url, "production").register("alice")
        async with ws_connect(server.ws_url, alice.token) as socket:
            await socket.subscribe(EVENTS)
            # A client that sends its headers and never the body it announced.
            reader, writer = await in_flight(server, 100)
            writer.write(b"{")
            await writer.drain()
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await close_code(socket) == 1012
            assert await exit_status(server, timeout=15) == 0
            # Generous bound: about the 1 s grace plus the lifespan shutdown, never "until the client gives up".
            assert time.monotonic() - signalled < 8
            await asyncio.wait_for(reader.read(), 5)  # its connection was closed, not left open
            writer.close()


async def node_ids(redis: Redis, prefix: str) -> set[str]:
    """The nodes of the presence registry under `prefix`."""
    nodes: set[str] = set()
    async for key in redis.scan_iter(match=f"{prefix}*nodes"):
        nodes.update(k if isinstance(k, str) else k.decode() for k in await redis.hkeys(key))
    return nodes


async def nodes_holding(redis: Redis, prefix: str, user: Person) -> int:
    """How many nodes of the registry count a socket of `user`."""
    count = 0
    async for key in redis.scan_iter(match=f"{prefix}*node-users*"):
        count += int(await redis.hexists(key, user.user_id))
    return count


async def test_two_workers_share_the_port_each_a_node_and_both_drain_on_sigterm(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    prefix = f"{redis_target.prefix}workers-{uuid.uuid4().hex[:8]}:"  # this test's registry only
    env = {
        **shutdown_env(migrated_postgres, redis_target, drain=1, grace=5),
        "PARLEY_REDIS_PREFIX": prefix,
        "PARLEY_LOG_LEVEL": "INFO",  # each worker logs the start of its drain: the test waits for both
    }
    log_path = tmp_path / "serve.log"
    server = ProcessServer(env, log_path=log_path, command=[PARLEY, "serve", "--workers", "2"])
    redis = Redis.from_url(redis_target.url)

    async def both_registered() -> bool:
        return len(await node_ids(redis, prefix)) == 2

    try:
        async with server:
            await until(both_registered, "two workers registered", timeout=30, every=0.1)
            alice = await Api(server.url, server.ws_url, "production").register("alice")
            async with contextlib.AsyncExitStack() as stack:
                # The kernel hands each new connection to one of the workers: both take some.
                sockets: list[WsClient] = []
                while len(sockets) < 40 and await nodes_holding(redis, prefix, alice) < 2:
                    sockets.append(await stack.enter_async_context(ws_connect(server.ws_url, alice.token)))
                assert await nodes_holding(redis, prefix, alice) == 2
                server.send_signal(signal.SIGTERM)
                # The supervisor passes SIGTERM on (it looks at signals twice a second); each worker
                # then drains (readyz 503) before it closes its sockets with 1012.
                await until(lambda: log_path.read_text().count(DRAIN_STARTED) == 2, "both workers draining", timeout=5)
                for _ in range(4):
                    assert (await readyz(server.url))[0] == 503
                codes = [await close_code(socket) for socket in sockets]
                assert set(codes) == {1012}
                assert await exit_status(server) == 0
            assert await node_ids(redis, prefix) == set()  # both left the registry cleanly
    finally:
        await redis.aclose()


def test_workers_are_refused_in_the_embedded_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [PARLEY, "serve", "--workers", "2", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "refusing to start 2 workers in the embedded mode" in result.stderr
    assert "PARLEY_REDIS_URL" in result.stderr
    assert not (tmp_path / "parley.db").exists()  # refused before anything was created
