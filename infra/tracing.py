"""OpenTelemetry tracing: the SDK exporting over OTLP/HTTP, and spans for HTTP requests and WebSocket connections.

Only with `PARLEY_OTLP_ENDPOINT` set: then `start_tracing` installs the SDK as the global
tracer provider, with a BatchSpanProcessor (spans leave on its own thread, in batches)
sending to `<endpoint>/v1/traces`, and `create_app` adds `TracingMiddleware` and builds
the schema with operation spans (graph/operation_log.py). Unset, nothing is installed:
no middleware, no span per operation, no thread.

The standard OTEL_* variables the SDK reads itself (batch delay, exporter headers and
timeout) still apply; the endpoint and service name come from Parley's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from infra.log_format import redact_path
from infra.settings import Settings
from infra.storage.local_http import DOWNLOAD_PATH, UPLOAD_PATH

log = logging.getLogger("parley.tracing")

# Probes answer every few seconds: spans of them would drown the traces that matter.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz"})


def start_tracing(settings: Settings) -> TracerProvider | None:
    """Installs the SDK exporting to `settings.otlp_endpoint`; None (nothing installed) when it is unset."""
    if not settings.otlp_endpoint:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    exporter = OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # Global, as the API expects: graph/ reaches the tracer through `opentelemetry.trace` only.
    # The API allows this once per process; a second app in one process shares the first's.
    trace.set_tracer_provider(provider)
    log.info("tracing: spans exported over OTLP/HTTP to %s", settings.otlp_endpoint)
    return provider


async def stop_tracing(provider: TracerProvider | None) -> None:
    """Exports the spans still queued and stops the exporter's thread (off the event loop: it blocks)."""
    if provider is not None:
        await asyncio.to_thread(provider.shutdown)


def _route(path: str) -> str | None:
    """The route template a path matched, for span names: None for paths no route serves."""
    if path in {"/graphql", UPLOAD_PATH}:
        return path
    if path.startswith(f"{DOWNLOAD_PATH}/"):
        return f"{DOWNLOAD_PATH}/{{token}}"
    return None


class TracingMiddleware:
    """A SERVER span per HTTP request and per WebSocket connection, parent of its GraphQL operation spans.

    Our own rather than opentelemetry-instrumentation-asgi: that contrib package is not among
    our dependencies, it records the full URL (download tokens sit in paths) and it makes a
    span per WebSocket message, which for a socket open for hours is noise. This follows the
    HTTP semantic conventions for what Parley needs in about forty lines.
    """

    def __init__(self, app: ASGIApp, *, tracer: Tracer | None = None) -> None:
        self.app = app
        self._tracer = tracer or trace.get_tracer("parley.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in {"http", "websocket"} or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        # W3C trace context from the caller (a traceparent header), so a client's trace continues here.
        parent = propagate.extract({key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]})
        route = _route(scope["path"])
        method = scope.get("method", "GET") if kind == "http" else "WebSocket"
        attributes: dict[str, str] = {
            "url.path": redact_path(scope["path"]),
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if kind == "http":
            attributes["http.request.method"] = method
        if route:
            attributes["http.route"] = route
        with self._tracer.start_as_current_span(
            f"{method} {route}" if route else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                elif message["type"] == "websocket.close":
                    span.set_attribute("websocket.close.code", int(message.get("code", 1000)))
                await send(message)

            await self.app(scope, receive, traced_send)


@contextlib.asynccontextmanager
async def tracing(settings: Settings) -> AsyncIterator[TracerProvider | None]:
    """Tracing for an app's lifespan: `start_tracing` on the way in, `stop_tracing` on the way out."""
    provider = start_tracing(settings)
    try:
        yield provider
    finally:
        await stop_tracing(provider)
