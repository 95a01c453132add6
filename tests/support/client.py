"""Clients that speak to a real server: GraphQL over HTTP, and graphql-transport-ws."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

Json = dict[str, Any]
# Building an SSL context costs ~30 ms; httpx would build one per client, even for plain http.
_SSL = ssl.create_default_context()


class GraphQLFailed(AssertionError):
    """A GraphQL response carried errors where the test expected data."""

    def __init__(self, errors: list[Json]) -> None:
        super().__init__(json.dumps(errors, indent=1))
        self.errors = errors

    @property
    def code(self) -> str:
        return str(self.errors[0].get("extensions", {}).get("code"))


@dataclass
class HttpClient:
    """GraphQL over HTTP POST, optionally with a bearer token."""

    url: str
    token: str | None = None

    async def post(self, query: str, variables: Json | None = None, *, headers: dict[str, str] | None = None) -> Json:
        """The whole JSON response."""
        all_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        all_headers.update(headers or {})
        async with httpx.AsyncClient(timeout=30, verify=_SSL) as http:
            response = await http.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables or {}},
                headers=all_headers,
            )
        assert response.headers["content-type"].startswith("application/json"), response.text
        body: Json = response.json()
        return body

    async def data(self, query: str, **variables: Any) -> Json:
        """`data` of a response that must have no errors."""
        body = await self.post(query, variables)
        if body.get("errors"):
            raise GraphQLFailed(body["errors"])
        data: Json = body["data"]
        return data

    async def error(self, query: str, **variables: Any) -> GraphQLFailed:
        """The errors of a response that must fail."""
        body = await self.post(query, variables)
        assert body.get("errors"), f"expected an error, got {body}"
        return GraphQLFailed(body["errors"])


class Subscription:
    """One `subscribe` on a graphql-transport-ws connection."""

    def __init__(self, socket: WsClient, op_id: str) -> None:
        self._socket = socket
        self.id = op_id
        self.queue: asyncio.Queue[Json] = asyncio.Queue()

    async def next(self, timeout: float = 10) -> Json:
        """The next `next` payload's data (fails on an error message)."""
        message = await asyncio.wait_for(self.queue.get(), timeout)
        if message["type"] != "next":
            raise AssertionError(f"subscription ended: {message}")
        payload: Json = message["payload"]
        if payload.get("errors"):
            raise GraphQLFailed(payload["errors"])
        data: Json = payload["data"]
        return data

    async def expect_silence(self, seconds: float = 0.5) -> None:
        """Fails if anything arrives within `seconds`."""
        try:
            message = await asyncio.wait_for(self.queue.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {message}")

    async def complete(self) -> None:
        await self._socket.send({"id": self.id, "type": "complete"})


class WsClient:
    """A graphql-transport-ws connection (what Apollo's GraphQLWsLink speaks)."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._ids = itertools.count(1)
        self._subscriptions: dict[str, Subscription] = {}
        self._reader = asyncio.create_task(self._read())
        self.closed: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()

    async def _read(self) -> None:
        try:
            async for raw in self._connection:
                message = json.loads(raw)
                if message["type"] == "ping":
                    await self.send({"type": "pong"})
                elif (sub := self._subscriptions.get(message.get("id", ""))) is not None:
                    sub.queue.put_nowait(message)
        finally:
            if not self.closed.done():
                self.closed.set_result((self._connection.close_code, self._connection.close_reason or ""))

    async def send(self, message: Json) -> None:
        await self._connection.send(json.dumps(message))

    async def subscribe(self, query: str, **variables: Any) -> Subscription:
        """Starts an operation; read its results with `Subscription.next`."""
        sub = Subscription(self, str(next(self._ids)))
        self._subscriptions[sub.id] = sub
        await self.send({"id": sub.id, "type": "subscribe", "payload": {"query": query, "variables": variables}})
        return sub

    async def close(self) -> None:
        await self._connection.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@asynccontextmanager
async def ws_connect(ws_url: str, token: str | None, *, payload: Json | None = None) -> AsyncIterator[WsClient]:
    """An acknowledged graphql-transport-ws connection authenticated with `token`."""
    async with connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=10) as connection:
        init = payload if payload is not None else ({"authorization": f"Bearer {token}"} if token else {})
        await connection.send(json.dumps({"type": "connection_init", "payload": init}))
        ack = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        client = WsClient(connection)
        try:
            yield client
        finally:
            await client.close()
