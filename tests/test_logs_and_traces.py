"""What an operator sees: JSON log lines per operation, and OpenTelemetry spans sent to a collector."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from infra.app import create_app
from infra.log_format import RedactPaths
from infra.tracing import TracingMiddleware, start_tracing
from tests.support.helpers import PASSWORD, Api, Person
from tests.support.processes import ProcessServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, suite_process_env
from tests.support.streams import next_of
from tests.support.waiting import until

SECRET_BODY = "the launch code is 0000"


class Collector:
    """An OTLP/HTTP trace receiver (what an OpenTelemetry Collector does at POST /v1/traces)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                collector.paths.append(self.path)
                collector.requests.append(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def spans(self) -> list[Span]:
        """Every span received so far."""
        found: list[Span] = []
        for raw in self.requests:
            request = ExportTraceServiceRequest.FromString(raw)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    found.extend(scope_spans.spans)
        return found

    def service_names(self) -> set[str]:
        """The `service.name` of every resource that sent spans."""
        names: set[str] = set()
        for raw in self.requests:
            for resource_spans in ExportTraceServiceRequest.FromString(raw).resource_spans:
                names.update(
                    a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
                )
        return names


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(span: Span) -> dict[str, object]:
    """A span's attributes as a plain dict."""
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


async def _chat(api: Api) -> tuple[Person, Person]:
    """A query, mutations and a subscription, as an app does them."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    async with bob.events() as bob_events:
        await alice.send(direct, SECRET_BODY)
        received = await next_of(bob_events, "MessageEvent")
        assert received["message"]["body"] == SECRET_BODY
    await bob.data("query Me { me { id username } }")
    return alice, bob


async def test_spans_of_http_websocket_and_graphql_operations_reach_the_collector(
    migrated_postgres: str, redis_target: RedisTarget, collector: Collector, tmp_path: Path
) -> None:
    env = {
        **suite_process_env(migrated_postgres, redis_target),
        "PARLEY_OTLP_ENDPOINT": collector.url,
        # The SDK's own variable: export every 100 ms instead of every 5 s, so the test is quick.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    async with ProcessServer(env, log_path=tmp_path / "serve.log") as server:
        alice, bob = await _chat(Api(server.url, server.ws_url, "production"))
        wanted = {"query Me", "mutation S", "subscription Events", "POST /graphql", "WebSocket /graphql"}
        await until(lambda: wanted <= {s.name for s in collector.spans()}, f"the spans {sorted(wanted)}")
        spans = collector.spans()

    assert set(collector.paths) == {"/v1/traces"}
    assert collector.service_names() == {"parley"}
    by_name: dict[str, list[Span]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert wanted <= by_name.keys(), sorted(by_name)

    query, send, subscription = by_name["query Me"][0], by_name["mutation S"][0], by_name["subscription Events"][0]
    assert attributes(query) == {"graphql.operation.type": "query", "graphql.operation.name": "Me"}
    assert attributes(send) == {"graphql.operation.type": "mutation", "graphql.operation.name": "S"}
    assert attributes(subscription) == {"graphql.operation.type": "subscription", "graphql.operation.name": "Events"}

    # Each operation is a child of its HTTP request's or WebSocket connection's SERVER span.
    http_spans = {s.span_id: s for s in by_name["POST /graphql"]}
    socket_spans = {s.span_id: s for s in by_name["WebSocket /graphql"]}
    assert query.parent_span_id in http_spans
    assert send.parent_span_id in http_spans
    assert subscription.parent_span_id in socket_spans
    request = http_spans[send.parent_span_id]
    assert request.kind == Span.SPAN_KIND_SERVER
    assert request.trace_id == send.trace_id
    assert attributes(request)["http.response.status_code"] == 200
    assert attributes(request)["http.route"] == "/graphql"

    # Nothing of the operations' data: no document, no variables, no tokens, no bodies.
    assert not any(key.startswith("graphql.document") for s in spans for key in attributes(s))
    exported = b"".join(collector.requests)
    for secret in (SECRET_BODY, PASSWORD, alice.token, bob.token):
        assert secret.encode() not in exported


def test_without_an_endpoint_no_tracing_is_installed(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    app = create_app(settings)
    assert TracingMiddleware.__name__ not in {getattr(m.cls, "__name__", "") for m in app.user_middleware}
    assert start_tracing(settings) is None
    # The API's default: no SDK provider was installed (graph/ starts no span either: `traced=False`).
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


async def test_json_logs_have_one_object_per_line_with_operation_fields_and_no_secrets(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    env = {
        **suite_process_env(migrated_postgres, redis_target),
        "PARLEY_LOG_FORMAT": "json",
        "PARLEY_LOG_LEVEL": "INFO",
    }
    async with ProcessServer(env, log_path=log_path) as server:
        api = Api(server.url, server.ws_url, "production")
        alice, bob = await _chat(api)
        again = await api.login(alice.username)
        missing = await alice.error(
            "mutation Rename($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { id } }",
            c="999999999",
            t="x",
        )
        async with httpx.AsyncClient(base_url=server.url) as http:
            # A download URL's token sits in its path; a query string may carry anything.
            await http.get("/files/download-capability-token-123?secret=query-secret-456")

    text = log_path.read_text()
    not_json = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
    # uvicorn's own text handlers are off only when it runs with `log_config=uvicorn_log_config(…)`.
    assert not not_json, f"lines that are not JSON objects: {not_json[:3]}"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    operations = [line for line in lines if line["logger"] == "parley.operation"]
    send = next(line for line in operations if line.get("root_field") == "sendMessage")
    assert send["operation_type"] == "mutation"
    assert send["operation_name"] == "S"
    assert send["outcome"] == "ok"
    assert (str(send["user_id"]), str(send["device_id"])) == (alice.user_id, alice.device_id)
    assert isinstance(send["duration_ms"], float)
    ids = [line["operation_id"] for line in operations]
    assert len(ids) == len(set(ids)), "operation ids are fresh per operation"
    failed = next(line for line in operations if line.get("root_field") == "renameGroup")
    assert failed["outcome"] == missing
    assert {line.get("root_field") for line in operations} >= {"register", "login", "events", "me"}

    for secret in (SECRET_BODY, PASSWORD, alice.token, bob.token, again.token, "download-capability-token-123"):
        assert secret not in text
    assert "query-secret-456" not in text


class Records(logging.Handler):
    """Collects the records of a logger (the thread servers log in this process)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def operation_records() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger("parley.operation")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_client_mistakes_are_logged_with_their_code_not_as_server_errors(
    api: Api, operation_records: list[logging.LogRecord]
) -> None:
    """Review 2, item 15: a subscription sent as plain JSON, a syntax error and a mutation over GET are
    logged with the code the client gets (they were INTERNAL_SERVER_ERROR)."""
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        await http.post("/graphql", json={"query": "subscription { events { __typename } }"})
        await http.post("/graphql", json={"query": "{ me { id "})
        await http.get("/graphql", params={"query": "mutation { logout }"})
    outcomes = {
        (getattr(r, "operation_type", None), getattr(r, "root_field", None)): getattr(r, "outcome", None)
        for r in operation_records
    }
    assert outcomes[("subscription", "events")] == "BAD_USER_INPUT"
    assert outcomes[(None, None)] == "BAD_USER_INPUT"  # did not parse: no type, no field
    assert outcomes[("mutation", "logout")] == "BAD_USER_INPUT"
    assert "INTERNAL_SERVER_ERROR" not in outcomes.values()


def test_request_paths_in_uvicorn_records_lose_query_strings_and_download_tokens() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "GET", "/files/abc.def-ghi?x=1", "1.1", 404), None,
    )  # fmt: skip
    assert RedactPaths().filter(record)
    assert record.getMessage() == '127.0.0.1:5555 - "GET /files/[token] HTTP/1.1" 404'
