"""Setting up conversations (and pending messages) through the GraphQL API over HTTP, as clients do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from bench.loadgen import SEND_MESSAGE
from bench.seed import Account

T = TypeVar("T")

START_DIRECT = "mutation StartDirect($userId: ID!) { startDirectConversation(userId: $userId) { id } }"
CREATE_GROUP = "mutation CreateGroup($title: String!, $memberIds: [ID!]!) { createGroup(title: $title, memberIds: $memberIds) { id } }"


class GraphQLError(RuntimeError):
    """A setup call came back with errors."""


class Api:
    """GraphQL over HTTP POST against one server, authenticated per call."""

    def __init__(self, base_url: str) -> None:
        # trust_env=False: a proxy configured for the registries must not see local traffic.
        self._http = httpx.AsyncClient(base_url=base_url, timeout=120, trust_env=False)

    async def call(self, account: Account, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The `data` of a call that must succeed."""
        response = await self._http.post(
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {account.token}"},
        )
        body: dict[str, Any] = response.json()
        if body.get("errors") or not body.get("data"):
            raise GraphQLError(f"{query.split('(', maxsplit=1)[0]}: {body.get('errors')}")
        data: dict[str, Any] = body["data"]
        return data

    async def start_direct(self, account: Account, other: Account) -> str:
        """The id of the direct conversation of the two."""
        data = await self.call(account, START_DIRECT, {"userId": other.user_id})
        return str(data["startDirectConversation"]["id"])

    async def create_group(self, owner: Account, members: Iterable[Account], title: str) -> str:
        """The id of a new group of `owner` and `members`."""
        data = await self.call(owner, CREATE_GROUP, {"title": title, "memberIds": [m.user_id for m in members]})
        return str(data["createGroup"]["id"])

    async def send(self, account: Account, conversation_id: str, client_id: str, body: str) -> str:
        """Sends a message; its id."""
        variables = {"input": {"conversationId": conversation_id, "clientId": client_id, "body": body}}
        data = await self.call(account, SEND_MESSAGE, variables)
        return str(data["sendMessage"]["id"])

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self._http.aclose()


async def bounded(calls: Iterable[Awaitable[T]], concurrency: int = 8) -> list[T]:
    """Awaits the calls, at most `concurrency` at a time, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))
