"""The bare yardstick: strawberry + Starlette on uvicorn with Parley's operation shapes and nothing else.

It answers the operations the load generator sends (`startDirectConversation`,
`createGroup`, `sendMessage`, `acknowledge`, the `events` subscription) with the
same field names and shapes as Parley, but without storage, Redis or checks:
tokens are user ids, conversations are in-memory member lists, and a message is
put on in-process asyncio queues of the members' subscriptions. Whatever it
costs is the floor of the stack (uvicorn, strawberry, graphql-core, the
WebSocket protocol); Parley's numbers are reported as ratios to it.

Run: python -m bench.echo_server --port 8100 (or --fd N: an inherited, bound socket)
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import itertools
import socket
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import ParserCache, SchemaExtension, ValidationCache
from strawberry.types import Info
from strawberry.types.unset import UnsetType

# The same per-connection operation limit Parley has by default (PARLEY_MAX_SUBSCRIPTIONS_PER_CONNECTION),
# so that the load generator behaves identically against both servers.
MAX_OPERATIONS_PER_CONNECTION = 20
MAX_MESSAGE_BYTES = 1024 * 1024


@strawberry.type
class User:
    id: strawberry.ID
    username: str
    display_name: str


def _user(user_id: int) -> User:
    return User(id=strawberry.ID(str(user_id)), username=f"user{user_id}", display_name=f"User {user_id}")


@strawberry.type
class Conversation:
    id: strawberry.ID


@strawberry.type
class Message:
    id: strawberry.ID
    client_id: str
    conversation_id: strawberry.ID
    body: str | None
    sent_at: datetime
    sender: User


@strawberry.type
class MessageEvent:
    cursor: str
    message: Message


@strawberry.enum
class ReceiptStatus(enum.Enum):
    DELIVERED = "DELIVERED"
    READ = "READ"


@strawberry.type
class Receipt:
    conversation_id: strawberry.ID
    message_id: strawberry.ID
    status: ReceiptStatus
    at: datetime
    user: User


@strawberry.type
class ReceiptEvent:
    cursor: str
    receipt: Receipt


Event = Annotated[MessageEvent | ReceiptEvent, strawberry.union("Event")]


@strawberry.input
class SendMessageInput:
    conversation_id: strawberry.ID
    client_id: str
    body: str | None = None
    attachment_ids: list[strawberry.ID] | None = None


@dataclass
class Hub:
    """Conversations and live subscriptions of this process: the only state there is."""

    members: dict[str, list[int]] = field(default_factory=dict)
    direct: dict[tuple[int, int], str] = field(default_factory=dict)
    streams: dict[int, set[asyncio.Queue[MessageEvent | ReceiptEvent]]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def conversation(self, members: list[int]) -> str:
        """A new conversation of these members."""
        conversation_id = str(next(self.ids))
        self.members[conversation_id] = members
        return conversation_id

    def publish(self, user_id: int, event: MessageEvent | ReceiptEvent) -> None:
        """Puts the event on every open subscription of the user."""
        for queue in self.streams.get(user_id, ()):
            queue.put_nowait(event)


HUB = Hub()


@dataclass
class EchoContext:
    """The viewer (a user id taken from the token as-is) and what strawberry puts in a context."""

    request: Request | WebSocket
    response: Response | WebSocket | None = None
    connection_params: dict[str, Any] = field(default_factory=dict)
    viewer: int | None = None


def _viewer_of(authorization: object) -> int | None:
    if not isinstance(authorization, str):
        return None
    token = authorization.removeprefix("Bearer ").strip()
    return int(token) if token.isdigit() else None


def _viewer(info: Info[EchoContext, None]) -> int:
    viewer = info.context.viewer
    if viewer is None:
        raise PermissionError("no token")
    return viewer


def _now() -> datetime:
    return datetime.now(UTC)


@strawberry.type
class Query:
    @strawberry.field
    def me(self, info: Info[EchoContext, None]) -> User:
        """The viewer (only so that the schema has a query type)."""
        return _user(_viewer(info))


@strawberry.type
class Mutation:
    @strawberry.mutation
    def start_direct_conversation(self, info: Info[EchoContext, None], user_id: strawberry.ID) -> Conversation:
        """The direct conversation of the viewer and `user_id`, created on first use."""
        low, high = sorted((_viewer(info), int(user_id)))
        key = (low, high)
        if key not in HUB.direct:
            HUB.direct[key] = HUB.conversation(list(key))
        return Conversation(id=strawberry.ID(HUB.direct[key]))

    @strawberry.mutation
    def create_group(self, info: Info[EchoContext, None], title: str, member_ids: list[strawberry.ID]) -> Conversation:
        """A group of the viewer and `member_ids` (the title is not kept)."""
        del title
        viewer = _viewer(info)
        members = [viewer, *(int(member) for member in member_ids if int(member) != viewer)]
        return Conversation(id=strawberry.ID(HUB.conversation(members)))

    @strawberry.mutation
    def send_message(self, info: Info[EchoContext, None], input: SendMessageInput) -> Message:
        """Publishes a MessageEvent to every other member; the cursor carries what `acknowledge` needs."""
        viewer = _viewer(info)
        conversation_id = str(input.conversation_id)
        members = HUB.members.get(conversation_id, [])
        if viewer not in members:
            raise PermissionError("not a member")
        message_id = f"{conversation_id}.{viewer}.{next(HUB.ids)}"
        message = Message(
            id=strawberry.ID(message_id),
            client_id=input.client_id,
            conversation_id=strawberry.ID(conversation_id),
            body=input.body,
            sent_at=_now(),
            sender=_user(viewer),
        )
        event = MessageEvent(cursor=f"m.{message_id}", message=message)
        for member in members:
            if member != viewer:
                HUB.publish(member, event)
        return message

    @strawberry.mutation
    def acknowledge(self, info: Info[EchoContext, None], cursor: str) -> bool:
        """A DELIVERED receipt to the sender of the acknowledged message (receipt cursors need nothing)."""
        reader = _viewer(info)
        if cursor.startswith("m."):
            message_id = cursor.removeprefix("m.")
            conversation_id, sender, _ = message_id.split(".")
            receipt = Receipt(
                conversation_id=strawberry.ID(conversation_id),
                message_id=strawberry.ID(message_id),
                status=ReceiptStatus.DELIVERED,
                at=_now(),
                user=_user(reader),
            )
            HUB.publish(int(sender), ReceiptEvent(cursor=f"r.{next(HUB.ids)}", receipt=receipt))
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def events(self, info: Info[EchoContext, None], after: str | None = None) -> AsyncGenerator[Event, None]:
        """Live events of the viewer, from an in-process queue (nothing is pending: no storage)."""
        del after
        queue: asyncio.Queue[MessageEvent | ReceiptEvent] = asyncio.Queue()
        streams = HUB.streams.setdefault(_viewer(info), set())
        streams.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            streams.discard(queue)


class EchoGraphQL(GraphQL[EchoContext, None]):
    """strawberry's ASGI app with the token taken as the viewer's user id."""

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> EchoContext:
        context = EchoContext(request=request, response=response)
        if isinstance(request, Request):
            context.viewer = _viewer_of(request.headers.get("authorization"))
        return context

    async def on_ws_connect(self, context: EchoContext) -> UnsetType | dict[str, object] | None:
        viewer = _viewer_of(context.connection_params.get("authorization"))
        if viewer is None:
            raise ConnectionRejectionError({"message": "no token"})
        context.viewer = viewer
        return await super().on_ws_connect(context)


def create_app() -> Starlette:
    """The echo app: /graphql over HTTP and WebSocket, /healthz."""
    # Parsing and validation are cached per document, as in Parley: uncached, validating a small
    # mutation costs milliseconds and the yardstick would measure graphql-core's validator only.
    extensions: list[Callable[[], SchemaExtension]] = [
        lambda: ParserCache(maxsize=512),
        lambda: ValidationCache(maxsize=512),
    ]
    graphql = EchoGraphQL(
        strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription, extensions=extensions),
        graphql_ide=None,
        max_subscriptions_per_connection=MAX_OPERATIONS_PER_CONNECTION,
    )

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    """Serves the echo app with the uvicorn options `parley serve` uses."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.echo_server", description="A bare strawberry server for bench/."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--fd", type=int, help="serve on this inherited, bound TCP socket instead of --host/--port")
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=MAX_MESSAGE_BYTES,
    )
    # As `parley serve --fd` takes it: family and protocol read from the descriptor, so asyncio turns Nagle off.
    uvicorn.Server(config).run(None if args.fd is None else [socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
