"""What clients receive on the wire: JSON text encoded by orjson, text WebSocket frames, no deflate."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from graph.schema import build_schema
from graph.view import ParleyGraphQL
from infra import cli
from infra.server import ParleyServer
from resolvers.ids import MessageIds
from tests.support.helpers import EVENTS, Api
from tests.support.processes import bound_socket

NOT_ASCII = 'Zoë said "hi" \\ 🎉 ✓ \u2028 \t\x01 ß'


@pytest.fixture(scope="module")
def view() -> ParleyGraphQL:
    def no_services() -> Any:
        raise AssertionError("encoding needs no services")

    return ParleyGraphQL(build_schema(), services=no_services, ids=MessageIds("x" * 48))


@pytest.mark.parametrize(
    "value",
    [
        {"id": "1", "type": "next", "payload": {"data": {"events": {"__typename": "MessageEvent", "body": NOT_ASCII}}}},
        {
            "data": None,
            "errors": [
                {"message": "m", "locations": [{"line": 1, "column": 2}], "path": ["a", 0], "extensions": {"code": "X"}}
            ],
        },
        {
            "floats": [0.1, 1e-7, 1e300, -0.0, 2.5],
            "ints": [0, -(2**63), 2**64 - 1, 2**53 + 1],
            "flags": [True, False, None],
        },
        [[], {}, "", [[[]]]],
    ],
)
def test_json_means_what_it_meant(view: ParleyGraphQL, value: Any) -> None:
    encoded = view.encode_json(value)
    assert isinstance(encoded, str)  # text: bytes would go out as a binary WebSocket frame
    assert json.loads(encoded) == json.loads(json.dumps(value))


@pytest.mark.parametrize("value", [{1: "a", None: "b", 2.5: "c"}, {"big": 2**70}, {"lone": "\ud800"}])
def test_what_orjson_refuses_is_encoded_as_before(view: ParleyGraphQL, value: Any) -> None:
    assert view.encode_json(value) == json.dumps(value, separators=(",", ":"))


async def test_http_responses_are_utf8_json(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    query = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { body } }"
    variables = {"input": {"conversationId": direct, "clientId": "transport-1", "body": NOT_ASCII}}
    async with httpx.AsyncClient(timeout=30) as http:
        ok = await http.post(
            f"{api.url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {alice.token}"},
        )
        bad = await http.post(f"{api.url}/graphql", json={"query": "{ nope }"})
    assert ok.headers["content-type"].startswith("application/json")
    assert json.loads(ok.content.decode("utf-8")) == {"data": {"sendMessage": {"body": NOT_ASCII}}}
    error = json.loads(bad.content)
    assert error["data"] is None
    assert error["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert error["errors"][0]["locations"] == [{"line": 1, "column": 3}]


async def _text_frame(socket_: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(socket_.recv(), 10)
    assert isinstance(raw, str), f"binary frame: {raw!r}"
    message: dict[str, Any] = json.loads(raw)
    return message


@pytest.mark.parametrize(
    ("protocol", "subscribe", "data"),
    [("graphql-transport-ws", "subscribe", "next"), ("graphql-ws", "start", "data")],
)
async def test_websocket_frames_are_text(api: Api, protocol: str, subscribe: str, data: str) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    async with connect(api.ws_url, subprotocols=[Subprotocol(protocol)]) as socket_:
        await socket_.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {bob.token}"}}))
        assert (await _text_frame(socket_))["type"] == "connection_ack"
        await socket_.send(json.dumps({"id": "1", "type": subscribe, "payload": {"query": EVENTS}}))
        await alice.send(direct, NOT_ASCII)
        while True:
            message = await _text_frame(socket_)
            if message["type"] == data and message["payload"]["data"]["events"]["__typename"] == "MessageEvent":
                break
        assert message["id"] == "1"
        assert message["payload"]["data"]["events"]["message"]["body"] == NOT_ASCII
        # An error frame too (an operation the server refuses).
        await socket_.send(json.dumps({"id": "2", "type": subscribe, "payload": {"query": "subscription { nope }"}}))
        while (message := await _text_frame(socket_)).get("id") != "2":
            pass
        assert message["type"] == "error"


@contextmanager
def _serving(app: Any, options: dict[str, Any]) -> Iterator[str]:
    """uvicorn with exactly `options` in a thread; yields the WebSocket URL."""
    # Bound and listening before uvicorn runs: no other process can take the port, and a client
    # connecting early waits in the backlog until uvicorn accepts, so there is nothing to wait for.
    listener = bound_socket()
    listener.listen()
    port = int(listener.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, **{**options, "port": port, "log_level": "warning"}))
    thread = threading.Thread(target=partial(server.run, sockets=[listener]), daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


async def _negotiated_extensions(ws_url: str) -> str | None:
    # websockets offers permessage-deflate unless told not to.
    async with connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as socket_:
        assert socket_.response is not None
        return socket_.response.headers.get("Sec-WebSocket-Extensions")


async def test_parley_serve_turns_off_per_message_deflate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    configs: list[uvicorn.Config] = []

    def run(self: ParleyServer, sockets: Any = None) -> None:
        configs.append(self.config)

    monkeypatch.setattr(ParleyServer, "run", run)
    monkeypatch.setenv("PARLEY_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}")
    monkeypatch.delenv("PARLEY_REDIS_URL", raising=False)
    cli.serve("127.0.0.1", 0)
    (config,) = configs
    app = config.app
    served: dict[str, Any] = {"ws": config.ws, "ws_per_message_deflate": config.ws_per_message_deflate}
    assert served["ws_per_message_deflate"] is False
    with _serving(app, served) as ws_url:
        assert await _negotiated_extensions(ws_url) is None
    # The check can fail: the same client gets deflate when the server allows it.
    with _serving(app, {**served, "ws_per_message_deflate": True}) as ws_url:
        assert "permessage-deflate" in (await _negotiated_extensions(ws_url) or "")
