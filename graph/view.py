"""The GraphQL endpoint (HTTP and WebSocket): builds the context and authenticates sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from cross_web import AsyncHTTPRequestAdapter
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, GraphQLRequestProtocol
from strawberry.http.streaming import HTTPStreamTransport, SSETransport
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from graph.context import ActivityThrottle, Context
from graph.errors import UNAVAILABLE, UNAVAILABLE_MESSAGE, exception_code
from graph.graphiql_page import GRAPHIQL_HTML
from graph.http_status import (
    GRAPHQL_RESPONSE_JSON,
    NOT_FOUND_HEADERS,
    accepts_graphql_response,
    only_not_found,
    status_of,
)
from graph.http_streams import MultipartSubscriptions, client_left, iterate_closing
from graph.legacy_ws import LegacyGraphQLWSHandler
from graph.sockets import SocketRegistry
from resolvers import accounts
from resolvers.errors import BadUserInput, ParleyError, RateLimited, Unauthenticated, Unavailable
from resolvers.ids import MessageIds
from resolvers.services import Services

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


_END = object()
NEEDS_A_STREAM = (
    "A subscription needs a stream: a WebSocket (graphql-transport-ws or graphql-ws), or HTTP accepting "
    "multipart/mixed;subscriptionSpec=1.0 or text/event-stream."
)


class _Refused(Exception):
    """A request refused before it runs: answered as JSON with this status and error."""

    def __init__(self, status: int, error: ParleyError, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = GraphQLError(error.message, extensions={"code": error.code})
        self.headers = headers


class _SubResponse(Response):
    """strawberry's per-request response holder, also carrying the media type the client accepts."""

    graphql_response = False


@dataclass
class _HttpContext(Context):
    """An HTTP request's context: a stream it holds open ends as soon as its device is revoked.

    graph/sockets.py marks every registered context `revoked`; setting it also wakes the stream.
    """

    revocation: asyncio.Event = field(default_factory=asyncio.Event)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "revoked" and value is True and "revocation" in self.__dict__:
            self.revocation.set()


def _bearer(params: Mapping[str, object]) -> str | None:
    """The token of `connection_init`: `authorization` in any case, at the top or under `headers`."""
    headers = params.get("headers")
    for source in (params, headers if isinstance(headers, Mapping) else {}):
        for key, value in source.items():
            if isinstance(key, str) and key.lower() == "authorization" and isinstance(value, str):
                return value
    return None


class ParleyGraphQL(GraphQL[Context, None]):
    """strawberry's ASGI app with Parley's context, WebSocket auth and connection registry."""

    websocket_adapter_class = _Socket
    graphql_ws_handler_class = LegacyGraphQLWSHandler
    stream_transport_classes_by_protocol: Mapping[str, type[HTTPStreamTransport]] = {
        MULTIPART_SUBSCRIPTION_PROTOCOL: MultipartSubscriptions,
        GRAPHQL_SSE_PROTOCOL: SSETransport,  # graphql-sse's "distinct connections" mode
    }
    # Both WebSocket protocols, Apollo's multipart HTTP subscriptions and graphql-sse.
    all_protocols: ClassVar[Sequence[str]] = (
        GRAPHQL_TRANSPORT_WS_PROTOCOL,
        GRAPHQL_WS_PROTOCOL,
        MULTIPART_SUBSCRIPTION_PROTOCOL,
        GRAPHQL_SSE_PROTOCOL,
    )

    @property
    def graphql_ide_html(self) -> str:
        """GraphiQL from this server's own assets (strawberry's page loads it from a CDN)."""
        return GRAPHIQL_HTML

    def __init__(self, *args: Any, services: Callable[[], Services], ids: MessageIds, **kwargs: Any) -> None:
        kwargs.setdefault("subscription_protocols", self.all_protocols)
        super().__init__(*args, **kwargs)
        self._services = services
        self._ids = ids
        self._throttle = ActivityThrottle()
        # Started by the app's lifespan (`sockets.run(services)`).
        self.sockets = SocketRegistry()
        # Open HTTP streams (multipart, SSE) per device on this process: a device holds at most
        # as many as one WebSocket may hold subscriptions.
        self._streams: dict[int, int] = {}
        self._closing: set[asyncio.Task[None]] = set()  # cleanups of streams that ended (held until done)

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
        context = (Context if isinstance(request, WebSocket) else _HttpContext)(
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
        token = _bearer(context.connection_params or {})
        if context.viewer is not None:  # the protocol handlers accept one init only
            raise ConnectionRejectionError({"message": "This connection is initialised already."})
        try:
            context.viewer = await accounts.authenticate(context.services, token)
        except Exception as error:
            # Before the ParleyError branch, as an outage (`Unavailable`) is one too: the database
            # or broker is down, so 1013 (try again later), not 4403, which tells clients their
            # token is bad and to stop retrying.
            if exception_code(error) == UNAVAILABLE:
                log.warning("WebSocket refused while a backing service is unavailable: %r", error)
                if isinstance(context.request, WebSocket):
                    await context.request.close(code=1013, reason="Try again later")
                raise ConnectionRejectionError({"message": "Try again later."}) from None
            if not isinstance(error, ParleyError):
                raise
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

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = _SubResponse()
        sub_response.status_code = None  # type: ignore[assignment] # strawberry's "not set"
        del sub_response.headers["content-length"]
        sub_response.graphql_response = accepts_graphql_response(request.headers.get("accept", ""))
        return sub_response

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        """JSON, or application/graphql-response+json with the spec's status codes when the client accepts it."""
        graphql_response = isinstance(sub_response, _SubResponse) and sub_response.graphql_response
        status: int | None = None
        if isinstance(response_data, Mapping):
            if only_not_found(response_data):
                sub_response.headers.update(NOT_FOUND_HEADERS)
            elif graphql_response:
                status = status_of(response_data)
                if status != 200:  # a request error has no `data` entry in this media type
                    response_data = {k: v for k, v in response_data.items() if k != "data"}  # type: ignore[assignment]
        response = super().create_response(response_data, sub_response)
        if graphql_response:
            response.headers["content-type"] = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"
        if status is not None and not sub_response.status_code:
            response.status_code = status
        return response

    def _validate_batch_request(self, request_data: list[GraphQLRequestData], protocol: GraphQLRequestProtocol) -> None:
        # strawberry refuses an oversized batch as plain text: answer in GraphQL's shape instead.
        config = self.schema.config.batching_config
        if config is not None and len(request_data) > config["max_operations"]:
            limit = config["max_operations"]
            raise _Refused(400, BadUserInput(f"A batch may hold at most {limit} operations."))
        super()._validate_batch_request(request_data, protocol)

    async def execute_operation(  # noqa: PLR0917 - strawberry's signature
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        if isinstance(request_data, list):
            # One after another (strawberry runs a batch concurrently): a batch's mutations
            # apply in the order its author wrote them. Each is its own operation, held to
            # the depth, alias, token and cost limits on its own.
            return [
                await self.execute_single(
                    request=request,
                    request_adapter=request_adapter,
                    sub_response=sub_response,
                    context=context,
                    root_value=root_value,
                    request_data=data,
                )
                for data in request_data
            ]
        if self._get_stream_transport(request_data.protocol) is None or not isinstance(context, _HttpContext):
            return await super().execute_operation(
                request, request_adapter, request_data, context, root_value, sub_response
            )
        device = await self._open_stream(context)
        try:
            result = await super().execute_operation(
                request, request_adapter, request_data, context, root_value, sub_response
            )
        except BaseException:
            await self._close_stream(context, device)
            raise
        if isinstance(result, (ExecutionResult, list)):
            await self._close_stream(context, device)
            return result
        guarded: SubscriptionExecutionResult = self._guarded(result, context, device)  # type: ignore[assignment]
        return guarded

    async def execute_single(  # noqa: PLR0917 - strawberry's signature
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """One operation answered as one JSON response; what cannot run so is refused as the client's mistake.

        strawberry executes a subscription sent as plain JSON (and fails it as a server error)
        and answers these refusals as plain text: here each is a GraphQL error, BAD_USER_INPUT,
        and a mutation over GET is 405 with `Allow: POST`, as the GraphQL-over-HTTP spec asks.
        """
        method = request_adapter.method
        allowed = OperationType.from_http(method) - {OperationType.SUBSCRIPTION}
        if method == "GET" and not self.allow_queries_via_get:
            allowed -= {OperationType.QUERY}
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise _Refused(400, BadUserInput(NEEDS_A_STREAM)) from None
            if error.operation_type is OperationType.MUTATION and method == "GET":
                raise _Refused(405, BadUserInput("A mutation needs POST."), {"Allow": "POST"}) from None
            raise _Refused(400, BadUserInput(error.as_http_error_reason(method))) from None
        except CannotGetOperationTypeError as error:
            raise _Refused(400, BadUserInput(error.as_http_error_reason())) from None
        except MissingQueryError:
            raise _Refused(400, BadUserInput("No GraphQL query found in the request.")) from None

    async def _open_stream(self, context: _HttpContext) -> int | None:
        """Counts an HTTP stream as a WebSocket is counted: online, limited, closed on revocation.

        Without a token the stream runs anonymously (its operation decides); a token that is
        not valid is refused (401) as a WebSocket's `connection_init` is.
        """
        if context.request.headers.get("authorization") is None:
            return None
        try:
            viewer = await context.require_viewer()
        except ParleyError as error:
            if error.code == UNAVAILABLE:  # an outage, not a bad token: come back later
                raise _Refused(503, Unavailable(UNAVAILABLE_MESSAGE)) from None
            raise _Refused(401, error) from None
        device = viewer.device_id
        if self._streams.get(device, 0) >= (self.max_subscriptions_per_connection or 0):
            raise _Refused(429, RateLimited("Subscription limit reached: close a stream before opening another."))
        if not self.sockets.add(context):
            raise _Refused(401, Unauthenticated("This token is not valid (logged out or expired)."))
        self._streams[device] = self._streams.get(device, 0) + 1
        # Marked before the await, as for a WebSocket: uncounted exactly once whatever happens.
        context.presence_user = viewer.user_id
        await context.services.presence.connected(viewer.user_id)
        return device

    async def _close_stream(self, context: Context, device: int | None) -> None:
        if device is None:
            return
        self.sockets.discard(context)
        left = self._streams.get(device, 1) - 1
        if left > 0:
            self._streams[device] = left
        else:
            self._streams.pop(device, None)
        user_id, context.presence_user = context.presence_user, None
        if user_id is not None:
            await context.services.presence.disconnected(user_id)

    async def _guarded(
        self, source: SubscriptionExecutionResult, context: _HttpContext, device: int | None
    ) -> AsyncGenerator[Any, None]:
        """The stream's results until it ends, its client leaves, or its device is revoked (then a last error)."""
        # The source is iterated in a task of its own so a revocation can end it at any await.
        queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue(maxsize=1)

        async def pump() -> None:
            try:
                async for item in iterate_closing(source):
                    await queue.put((item, None))
            except Exception as error:
                await queue.put((_END, error))
                return
            await queue.put((_END, None))

        pumping = asyncio.create_task(pump())
        revoked = asyncio.create_task(context.revocation.wait())
        # Under ASGI 2.4 Starlette learns of a client gone only when a write fails (the next
        # heartbeat, up to 15 s later); the disconnect message ends the stream, and its
        # presence, at once, as a WebSocket's close does.
        left = asyncio.create_task(client_left(context.request))
        getting: asyncio.Future[tuple[object, BaseException | None]] | None = None
        try:
            while True:
                getting = asyncio.ensure_future(queue.get())
                await asyncio.wait((getting, revoked, left), return_when=asyncio.FIRST_COMPLETED)
                if left.done():
                    getting.cancel()
                    return
                if not getting.done():
                    getting.cancel()
                    error = GraphQLError("This device has logged out.", extensions={"code": "UNAUTHENTICATED"})
                    yield ExecutionResult(data=None, errors=[error])
                    return
                item, failure = getting.result()
                if failure is not None:
                    raise failure
                if item is _END:
                    return
                yield item
        finally:
            for task in (pumping, revoked, left, getting):
                if task is not None:
                    task.cancel()
            # Shielded: the response being torn down (client gone) cancels this generator
            # again while it cleans up; the stream must still be uncounted exactly once.
            closing = asyncio.create_task(self._finish_stream((pumping, revoked, left), context, device))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            await asyncio.shield(closing)

    async def _finish_stream(self, tasks: tuple[asyncio.Task[Any], ...], context: Context, device: int | None) -> None:
        await asyncio.wait(tasks)
        await self._close_stream(context, device)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            try:
                await super().__call__(scope, receive, send)
            except _Refused as refused:
                body = {"errors": [refused.error.formatted]}
                await JSONResponse(body, status_code=refused.status, headers=refused.headers)(scope, receive, send)
            return
        telemetry = self._services().telemetry
        telemetry.socket_opened()
        try:
            await super().__call__(scope, receive, send)
        finally:
            telemetry.socket_closed()
            state = scope.get("state") or {}
            context = state.get("parley_context")
            if isinstance(context, Context):
                if context.viewer is not None:
                    self.sockets.discard(context)
                user_id, context.presence_user = context.presence_user, None
                if user_id is not None:
                    await context.services.presence.disconnected(user_id)
