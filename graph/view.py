"""The GraphQL endpoint (HTTP and WebSocket): builds the context and authenticates sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UnsetType

from graph.context import ActivityThrottle, Context
from graph.sockets import SocketRegistry
from resolvers import accounts
from resolvers.errors import ParleyError
from resolvers.ids import MessageIds
from resolvers.ports import Services

log = logging.getLogger("parley.graphql")


class _Socket(ASGIWebSocketAdapter):
    """strawberry's socket adapter, quiet once the server has closed the socket.

    A socket closed for a revoked device or a missed init deadline may still have
    operations finishing: what they would send is dropped instead of raising in their task.
    """

    async def send_json(self, message: Mapping[str, object]) -> None:
        if self.ws.application_state is WebSocketState.DISCONNECTED:
            return
        await super().send_json(message)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state is WebSocketState.DISCONNECTED:
            return
        await super().close(code, reason)


class _LegacyHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol held to graphql-transport-ws's rules.

    strawberry's handler accepts any number of `connection_init` messages (each one
    authenticating and counting the connection again) and waits forever for the first.
    Here a second one closes the socket with 4429, and a socket with none within the
    init timeout is closed with 4408, as the newer protocol does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_received = False

    async def handle(self) -> None:
        deadline = asyncio.create_task(self._close_unless_initialised())
        try:
            await super().handle()
        finally:
            deadline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deadline

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        if self._init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self._init_received = True
        await super().handle_connection_init(message)


class ParleyGraphQL(GraphQL[Context, None]):
    """strawberry's ASGI app with Parley's context, WebSocket auth and connection registry."""

    websocket_adapter_class = _Socket
    graphql_ws_handler_class = _LegacyHandler

    def __init__(self, *args: Any, services: Callable[[], Services], ids: MessageIds, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._services = services
        self._ids = ids
        self._throttle = ActivityThrottle()
        # Started by the app's lifespan (`sockets.run(services)`).
        self.sockets = SocketRegistry()

    def encode_json(self, data: object) -> str:
        """JSON text of an HTTP response or a WebSocket message, encoded by orjson (about 15 times faster than json)."""
        try:
            # Text, not bytes: strawberry sends bytes as a binary WebSocket frame and
            # graphql-ws clients only read text frames.
            return orjson.dumps(data).decode()
        except TypeError:
            # orjson refuses what we never send but json writes (non-str dict keys,
            # integers beyond 64 bits, lone surrogates, deep nesting): same output as before.
            # (NaN would differ, null instead of json's invalid NaN token, but GraphQL's
            # Float output coercion refuses non-finite numbers.)
            return json.dumps(data, separators=(",", ":"))

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        context = Context(
            services=self._services(),
            ids=self._ids,
            throttle=self._throttle,
            request=request,
            response=response,
            sockets=self.sockets,
        )
        if isinstance(request, WebSocket):
            request.state.parley_context = context
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        token = params.get("authorization") or params.get("Authorization")
        if context.viewer is not None:  # the protocol handlers accept one init only
            raise ConnectionRejectionError({"message": "This connection is initialised already."})
        try:
            context.viewer = await accounts.authenticate(context.services, token if isinstance(token, str) else None)
        except ParleyError as error:
            log.info("WebSocket refused: %s", error.message)
            raise ConnectionRejectionError({"message": error.message}) from None
        if not self.sockets.add(context):
            # Revoked between authenticating and registering: the notice has passed it by.
            context.viewer = None
            raise ConnectionRejectionError({"message": "This token is not valid (logged out or expired)."})
        # Marked before the await: `connected` counts before its first await, so a socket cancelled
        # or closed during it (a crash mid-handshake, shutdown) is still uncounted exactly once.
        context.presence_user = context.viewer.user_id
        await context.services.presence.connected(context.viewer.user_id)
        return await super().on_ws_connect(context)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            state = scope.get("state") or {}
            context = state.get("parley_context")
            if isinstance(context, Context):
                if context.viewer is not None:
                    self.sockets.discard(context)
                user_id, context.presence_user = context.presence_user, None
                if user_id is not None:
                    await context.services.presence.disconnected(user_id)
