"""One log line and one OpenTelemetry span per GraphQL operation.

The span follows the OpenTelemetry GraphQL semantic conventions: named "<type> <name>"
(or the type alone; "GraphQL Operation" when the document did not parse), with
`graphql.operation.type` and `graphql.operation.name`. It never carries the document or
the variables (message bodies, passwords, tokens). Through `opentelemetry-api` only
(the SDK is set up in infra/tracing.py). Untraced (`PARLEY_OTLP_ENDPOINT` unset) no span
is started at all: even the API's no-op span costs about 9 µs, a tenth of a small query.

The log line (logger `parley.operation`, INFO) carries the operation id, type, name,
root fields, user and device ids, duration and outcome ("ok" or the first error's code)
as fields of their own, which `PARLEY_LOG_FORMAT=json` writes as JSON keys. It is built
only when INFO is enabled. A subscription's line and span end when it does.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from graphql.utilities import get_operation_ast
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, StatusCode
from strawberry.extensions import SchemaExtension

from graph.errors import INTERNAL, error_code, exception_code

log = logging.getLogger("parley.operation")
tracer = trace.get_tracer("parley.graphql")

UNNAMED_SPAN = "GraphQL Operation"
# Codes that mean the server failed (the span's status is ERROR); other codes are the caller's.
SERVER_FAILURES = frozenset({INTERNAL, "UNAVAILABLE"})
# A document may select many root fields: the log names the first few.
MAX_ROOT_FIELDS = 5


def _code(error: GraphQLError) -> str:
    # Errors shaped for the client (graph/errors.py) carry their code; masked ones have lost their cause.
    code = (error.extensions or {}).get("code")
    return code if isinstance(code, str) else error_code(error)


class OperationLog(SchemaExtension):
    """Logs each operation in one line and, when `traced`, wraps it in a span (built per operation by strawberry)."""

    def __init__(self, *, traced: bool = False) -> None:
        self._traced = traced

    def on_operation(self) -> Iterator[None]:
        """Times the whole operation (parse, validate, execute; a subscription's whole life)."""
        if not self._traced:
            yield from self._timed(INVALID_SPAN)
            return
        # The exception, if any, is CancelledError or one the result already reports: neither
        # belongs in the span (its message could quote the operation's data).
        with tracer.start_as_current_span(UNNAMED_SPAN, record_exception=False, set_status_on_exception=False) as span:
            yield from self._timed(span)

    def _timed(self, span: Span) -> Iterator[None]:
        started = time.perf_counter()
        failure: str | None = None
        try:
            yield
        except Exception as error:
            # strawberry raises for some requests it refuses (no query, a mutation over GET): the
            # client's mistake, logged with its code like the errors of the result.
            failure = exception_code(error)
            raise
        finally:
            try:
                self._finish(span, time.perf_counter() - started, failure)
            except Exception:  # a log line or span attribute must never fail the operation itself
                log.exception("could not log an operation")

    def _finish(self, span: Span, seconds: float, failure: str | None) -> None:
        recording = span.is_recording()
        if not recording and not log.isEnabledFor(logging.INFO):
            return
        context = self.execution_context
        document = context.graphql_document
        operation: OperationDefinitionNode | None = None
        if document is not None:
            operation = get_operation_ast(document, context.operation_name)
        kind = operation.operation.value if operation else None
        # The document's own name (a GraphQL Name: no spaces or newlines), never the request's
        # free-text operationName.
        name = operation.name.value if operation and operation.name else None
        result_errors = context.result.errors if context.result is not None else None
        errors = result_errors or context.pre_execution_errors or []
        outcome = failure or (_code(errors[0]) if errors else "ok")
        if recording:
            if kind:
                span.update_name(f"{kind} {name}" if name else kind)
                span.set_attribute("graphql.operation.type", kind)
            if name:
                span.set_attribute("graphql.operation.name", name)
            if outcome != "ok":
                span.set_attribute("error.type", outcome)
                if outcome in SERVER_FAILURES:
                    span.set_status(StatusCode.ERROR, outcome)
        if not log.isEnabledFor(logging.INFO):
            return
        fields: list[str] = []
        if operation is not None:
            fields = [s.name.value for s in operation.selection_set.selections if isinstance(s, FieldNode)]
        root_field = ",".join(fields[:MAX_ROOT_FIELDS]) or None
        viewer = getattr(context.context, "viewer", None)
        extra: dict[str, Any] = {
            "operation_id": secrets.token_hex(8),
            "operation_type": kind,
            "operation_name": name,
            "root_field": root_field,
            "user_id": getattr(viewer, "user_id", None),
            "device_id": getattr(viewer, "device_id", None),
            "duration_ms": round(seconds * 1000, 3),
            "outcome": outcome,
        }
        if recording:
            extra["trace_id"] = format(span.get_span_context().trace_id, "032x")
        log.info(
            "%s %s (%s) %s in %.1f ms, user %s device %s",
            kind or "operation",
            name or "-",
            root_field or "-",
            outcome,
            seconds * 1000,
            extra["user_id"],
            extra["device_id"],
            extra=extra,
        )
