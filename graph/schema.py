"""The schema: every root type merged, with the limits and error shaping the contract asks for."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import strawberry
from graphql import GraphQLError, parse, specified_rules
from graphql.execution import Executor as GraphQLExecutionContext
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaxAliasesLimiter, QueryDepthLimiter, SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import validate_document
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext
from strawberry.types import ExecutionResult as StrawberryExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from graph.account_data import AccountDataMutation, AccountDataQuery
from graph.accounts import AccountMutation, AccountQuery
from graph.blocks import BlockMutation, BlockQuery
from graph.conversations import ConversationMutation, ConversationQuery
from graph.cost import VariableCosts, cost_limit_rule
from graph.disappearing import DisappearingMutation
from graph.errors import log_errors, shape_errors
from graph.executor import ProjectingExecutionContext, cost_limited
from graph.files import FileMutation
from graph.input_rules import OnePasswordFieldPerOperation, StorableStringLiterals
from graph.invites import InviteMutation, InviteQuery
from graph.keys import KeyMutation, KeyQuery
from graph.messaging import MessagingMutation, MessagingQuery, MessagingSubscription
from graph.moderation import ModerationMutation, ModerationQuery
from graph.notifications import NotificationMutation
from graph.operation_log import OperationLog
from graph.operation_metrics import MeasuredRunner
from graph.persisted_queries import PersistedQueries, PersistedQueryError
from graph.policy import OperationPolicy
from graph.presence import PresenceSubscription
from graph.privacy import PrivacyMutation
from graph.push import PushMutation, PushQuery
from graph.reports import ReportMutation
from graph.to_device import ToDeviceMutation

Query = merge_types(
    "Query",
    (
        AccountQuery,
        ConversationQuery,
        MessagingQuery,
        BlockQuery,
        PushQuery,
        InviteQuery,
        AccountDataQuery,
        ModerationQuery,
        KeyQuery,
    ),
)
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
        DisappearingMutation,
        InviteMutation,
        AccountDataMutation,
        NotificationMutation,
        ModerationMutation,
        ReportMutation,
        KeyMutation,
        ToDeviceMutation,
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
    # How every document is checked (graph/policy.py): a persisted text is stored only if it passes.
    document_rules: tuple[type[ASTValidationRule], ...] = ()
    max_tokens: int = 2000

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
                query = await self.persisted_queries.resolve(query, operation_extensions, storable=self.storable)
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
                query = await self.persisted_queries.resolve(query, operation_extensions, storable=self.storable)
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

    def storable(self, query: str) -> bool:
        """True when the text parses and validates as every request's document is checked."""
        # Only for texts sent with a hash, so the work (without graph/policy.py's caches) is rare.
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError:
            return False
        return not validate_document(self._schema, document, self.document_rules)

    async def _prepare_operation_async(
        self, context: ExecutionContext, extensions_runner: SchemaExtensionsRunner
    ) -> PreExecutionError | None:
        try:
            return await super()._prepare_operation_async(context, extensions_runner)
        except GraphQLError as error:
            # A syntax error, raised by the parse hook (graph/policy.py) where strawberry expects
            # none: answered as strawberry answers its own, a request error, on every transport
            # (uncaught, it failed HTTP streams and WebSocket operations as a server error).
            context.pre_execution_errors = [error]
            return PreExecutionError(data=None, errors=[error])

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
        return MeasuredRunner(execution_context, extensions)


async def _refused(refused: PersistedQueryError) -> AsyncGenerator[PreExecutionError, None]:
    """A stream whose only result is the refusal (the WebSocket handlers send it as an `error`)."""
    yield PreExecutionError(data=None, errors=[refused.error])


def build_schema(
    *,
    max_depth: int = 10,
    max_aliases: int = 30,
    max_tokens: int = 2000,
    max_query_cost: int = 250_000,
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
    The query cost is checked by `execution_context_class` once variables are known (graph/cost.py).
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
        "execution_context_class": cost_limited(execution_context_class, VariableCosts(max_query_cost)),
    }
    schema = ParleySchema(query=Query, mutation=Mutation, subscription=subscription, **kwargs)
    schema.persisted_queries = persisted_queries
    # strawberry's default rules (graph/policy.py adds these to them).
    schema.document_rules = (*specified_rules, *rules)
    schema.max_tokens = max_tokens
    return schema
