"""The schema: every root type merged, with the limits and error shaping the contract asks for."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from types import TracebackType
from typing import Any

import strawberry
from graphql import FieldNode, GraphQLError
from graphql.execution import Executor as GraphQLExecutionContext
from graphql.utilities import get_operation_ast
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.extensions.context import ExecutingContextManager, OperationContextManager
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext
from strawberry.types import ExecutionResult as StrawberryExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from graph.accounts import AccountMutation, AccountQuery
from graph.blocks import BlockMutation, BlockQuery
from graph.context import Context
from graph.conversations import ConversationMutation, ConversationQuery
from graph.cost import cost_limit_rule
from graph.errors import error_code, log_errors, shape_errors
from graph.executor import ProjectingExecutionContext
from graph.files import FileMutation
from graph.input_rules import OnePasswordFieldPerOperation, StorableStringLiterals
from graph.messaging import MessagingMutation, MessagingQuery, MessagingSubscription
from graph.operation_log import OperationLog
from graph.persisted_queries import PersistedQueries, PersistedQueryError
from graph.policy import OperationPolicy
from graph.presence import PresenceSubscription
from graph.privacy import PrivacyMutation
from graph.push import PushMutation, PushQuery
from resolvers.ports import NullTelemetry, Telemetry

log = logging.getLogger("parley.graphql")

# The label of a root field (or operation type) the schema does not have.
OTHER_LABEL = "other"

Query = merge_types("Query", (AccountQuery, ConversationQuery, MessagingQuery, BlockQuery, PushQuery))
Mutation = merge_types(
    "Mutation",
    (
        AccountMutation,
        ConversationMutation,
        MessagingMutation,
        PrivacyMutation,
        BlockMutation,
        PushMutation,
        FileMutation,
    ),
)
Subscription = merge_types("Subscription", (MessagingSubscription, PresenceSubscription))


class ParleySchema(strawberry.Schema):
    """strawberry's Schema: unexpected errors logged, and every error shaped for clients.

    Shaping here, where strawberry finishes every result (query, mutation, each
    subscription event, over HTTP and WebSocket), does what MaskErrors does as an
    extension without its two hooks per operation and per event (graph/policy.py).
    """

    # Resolves Apollo persisted queries and enforces the allow-list (graph/persisted_queries.py)
    # for every transport, as all of them reach the schema through `execute` or `stream`.
    persisted_queries: PersistedQueries | None = None

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        log_errors(errors)

    async def execute(  # noqa: PLR0917 - strawberry's signature
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> StrawberryExecutionResult:
        if self.persisted_queries is not None:
            try:
                query = await self.persisted_queries.resolve(query, operation_extensions)
            except PersistedQueryError as refused:
                return PreExecutionError(data=None, errors=[refused.error])
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed_operation_types,
            operation_extensions,
        )

    async def stream(  # noqa: PLR0917 - strawberry's signature
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
    ) -> Any:
        if self.persisted_queries is not None:
            try:
                query = await self.persisted_queries.resolve(query, operation_extensions)
            except PersistedQueryError as refused:
                return _refused(refused)
        return await super().stream(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            operation_extensions,
            allowed_operation_types,
        )

    async def _handle_execution_result(
        self,
        context: ExecutionContext,
        result: Any,
        extensions_runner: SchemaExtensionsRunner,
        *,
        skip_process_errors: bool = False,
    ) -> StrawberryExecutionResult:
        handled = await super()._handle_execution_result(
            context, result, extensions_runner, skip_process_errors=skip_process_errors
        )
        errors = getattr(handled, "errors", None)
        if errors:
            handled.errors = shape_errors(errors)
        return handled

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return _MeasuredRunner(execution_context, extensions)


class _MeasuredRunner(SchemaExtensionsRunner):
    """strawberry's runner of one operation's extension hooks, also reporting the operation to telemetry.

    strawberry makes one per operation (a subscription's lasts its whole life), and its
    `operation()` brackets all of it: so the metrics need no extension of their own (each
    costs hooks per operation, graph/policy.py) and nothing per subscription event. As the
    operation ends: its type, root field (a field of the schema, else "other"), outcome
    ("ok" or the first error's code) and duration. A subscription counts as open from the
    moment its source stream exists until it ends. With metrics off (`NullTelemetry`) it
    reads the clock once and skips the rest: about 0.3 µs per operation.
    """

    def __init__(self, execution_context: ExecutionContext, extensions: list[SchemaExtension] | None = None) -> None:
        super().__init__(execution_context, extensions)
        self.started = time.perf_counter()
        self._telemetry = _telemetry_of(execution_context)
        self._summary: tuple[str, str] | None = None
        self._open_subscription: str | None = None

    def operation(self) -> OperationContextManager:
        return _MeasuredOperation(self)

    def executing(self) -> ExecutingContextManager:
        return _MeasuredExecution(self)

    def _kind_and_field(self) -> tuple[str, str]:
        if self._summary is None:
            self._summary = _kind_and_field(self.execution_context)
        return self._summary

    def executed(self) -> None:
        """The operation ran, or (a subscription) its source stream exists."""
        telemetry = self._telemetry
        if telemetry is None:
            return
        kind, field = self._kind_and_field()
        if kind == "subscription" and self._open_subscription is None:
            self._open_subscription = field
            telemetry.subscription_started(field)

    def finished(self, error: BaseException | None) -> None:
        """The operation is over (a subscription: ended by either side)."""
        telemetry = self._telemetry
        if telemetry is None:
            return
        seconds = time.perf_counter() - self.started
        if self._open_subscription is not None:
            telemetry.subscription_ended(self._open_subscription)
            self._open_subscription = None
        kind, field = self._kind_and_field()
        telemetry.operation(kind=kind, field=field, outcome=_outcome(self.execution_context, error), seconds=seconds)


class _MeasuredOperation(OperationContextManager):
    def __init__(self, runner: _MeasuredRunner) -> None:
        super().__init__(runner.extensions)
        self._runner = runner

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc_val, exc_tb)
        finally:
            _report(self._runner.finished, exc_val)


class _MeasuredExecution(ExecutingContextManager):
    def __init__(self, runner: _MeasuredRunner) -> None:
        super().__init__(runner.extensions)
        self._runner = runner

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc_val, exc_tb)
        if exc_val is None:
            _report(self._runner.executed)


async def _refused(refused: PersistedQueryError) -> AsyncGenerator[PreExecutionError, None]:
    """A stream whose only result is the refusal (the WebSocket handlers send it as an `error`)."""
    yield PreExecutionError(data=None, errors=[refused.error])


def _report(hook: Callable[..., None], *args: object) -> None:
    """Runs a telemetry hook; a failure there is logged, never the operation's."""
    try:
        hook(*args)
    except Exception:
        log.warning("could not record an operation's metrics", exc_info=True)


def _telemetry_of(execution_context: ExecutionContext) -> Telemetry | None:
    """Where the operation's metrics go; None with metrics off (and for tools executing without Parley's context)."""
    context = execution_context.context
    if not isinstance(context, Context):
        return None
    telemetry = context.services.telemetry
    return None if isinstance(telemetry, NullTelemetry) else telemetry


def _kind_and_field(context: ExecutionContext) -> tuple[str, str]:
    """The operation's type and first root field, as labels: "other" for what the schema does not have."""
    document = context.graphql_document
    operation = get_operation_ast(document, context.operation_name) if document is not None else None
    if operation is None:  # not parsed, or no such operation
        return OTHER_LABEL, OTHER_LABEL
    root = context.schema._schema.get_root_type(operation.operation)
    selections = operation.selection_set.selections
    first = selections[0] if selections else None
    if isinstance(first, FieldNode) and root is not None and first.name.value in root.fields:
        return operation.operation.value, first.name.value
    return operation.operation.value, OTHER_LABEL


def _outcome(context: ExecutionContext, error: BaseException | None) -> str:
    """The outcome label: "ok", or the code of the error that ended the operation, else of its first error."""
    if isinstance(error, (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)):
        return "BAD_USER_INPUT"
    if isinstance(error, Exception):
        return error_code(GraphQLError("", original_error=error))
    # None, or CancelledError/GeneratorExit: the client went away or ended its subscription.
    result = context.result
    errors = (result.errors if result is not None else None) or context.pre_execution_errors
    if not errors:
        return "ok"
    # Errors shaped for the client (graph/errors.py) carry their code; masked ones have lost their cause.
    code = (errors[0].extensions or {}).get("code")
    return code if isinstance(code, str) else error_code(errors[0])


def build_schema(
    *,
    max_depth: int = 10,
    max_aliases: int = 30,
    max_tokens: int = 2000,
    max_query_cost: int = 50_000,
    introspection: bool = True,
    subscription: type = Subscription,
    execution_context_class: type[GraphQLExecutionContext[Any]] = ProjectingExecutionContext,
    traced: bool = False,
    max_batch_operations: int | None = None,
    persisted_queries: PersistedQueries | None = None,
) -> strawberry.Schema:
    """The Parley schema with its limits; `introspection=False` for production.

    `subscription` and `execution_context_class` replace the subscription root and the
    executor, for benchmarks and tests that feed events in-process or compare executors.
    `traced`: each operation gets an OpenTelemetry span (graph/operation_log.py).
    `max_batch_operations`: HTTP batches (JSON arrays) of at most this many operations; None, no batching.
    `persisted_queries`: Apollo APQ and the allow-list (graph/persisted_queries.py); None, neither.
    """
    # The depth and alias limits are validation rules, built once here: the validation
    # cache keys on the rule classes, and fresh ones per request would never hit it.
    rules = [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        cost_limit_rule(max_query_cost),
        OnePasswordFieldPerOperation,
        StorableStringLiterals,
    ]
    if not introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    # A factory, not an instance: strawberry builds fresh extensions per operation
    # (the parser and validation caches live at module level and are shared).
    extensions: list[Callable[[], SchemaExtension]] = [
        lambda: OperationPolicy(rules, max_tokens),
        lambda: OperationLog(traced=traced),
    ]
    kwargs: dict[str, Any] = {
        "extensions": extensions,
        "config": StrawberryConfig(
            auto_camel_case=True,
            batching_config=None if max_batch_operations is None else {"max_operations": max_batch_operations},
        ),
        # The default bounds memory per open subscription and projects events without execution.
        "execution_context_class": execution_context_class,
    }
    schema = ParleySchema(query=Query, mutation=Mutation, subscription=subscription, **kwargs)
    schema.persisted_queries = persisted_queries
    return schema
