"""The executor class strawberry runs operations with: bounded memory per subscription, projected events.

graphql-core 3.3 builds each subscription event's executor as a shallow copy of the
subscription's executor, so every event shares its memo of collected sub-fields. That
memo is keyed by the identity of field lists built anew for each event: it gains
entries on every event (≈3.8 KiB for Parley's event document) and is freed only when
the subscription ends. Here each event's executor gets memos of its own.

Events whose selection needs no resolver are built by a projection plan
(graph/projection.py) instead of being executed; anything else runs through
graphql-core unchanged. Queries and mutations are not affected.

`cost_limited` makes any executor class check the query cost with the request's
variables (graph/cost.py): building the executor is where they are first coerced, for
queries, mutations and subscriptions over every transport alike.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Final, cast

from graphql import ExecutionResult, GraphQLError, GraphQLSchema, OperationDefinitionNode
from graphql.execution import Executor, ExperimentalIncrementalExecutionResults
from graphql.execution.executor import CollectedErrors
from graphql.pyutils import AwaitableOrValue
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from graph.cost import VariableCosts
from graph.projection import OperationPlan, compile_operation

__all__ = ["ProjectingExecutionContext", "clear_plan_cache", "cost_limited"]

log = logging.getLogger("parley.projection")

# Plans are shared between subscriptions with the same document (the parser cache
# hands out one DocumentNode per query text), operation and variables, so the
# per-object memo in a plan serves every subscriber of a group event. Bounded: a
# subscription keeps its own reference, eviction only stops sharing.
_PLAN_CACHE_SIZE: Final = 256
_plans: OrderedDict[Hashable, tuple[GraphQLSchema, OperationDefinitionNode, OperationPlan | None]] = OrderedDict()
_plans_lock = threading.Lock()


def clear_plan_cache() -> None:
    """Forgets every shared plan (subscriptions keep theirs)."""
    with _plans_lock:
        _plans.clear()


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a coerced variable value; TypeError when it has none."""
    if isinstance(value, Mapping):
        return (dict, tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (list, tuple(_frozen(v) for v in value))
    hash(value)
    # The type too: 1 == True == 1.0 would otherwise share a key.
    return (type(value), value)


class ProjectingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor with fresh per-event memos and projected subscription events."""

    # Set on per-event executors only: the subscription's plan (None: execute normally).
    _event_plan: OperationPlan | None = None
    # Set on a subscription's executor at its first event.
    _subscription_plan: OperationPlan | None

    def build_per_event_executor(self, payload: Any) -> ProjectingExecutionContext:
        """The executor of one subscription event, with memos of its own."""
        try:
            plan = self._subscription_plan
        except AttributeError:
            plan = self._subscription_plan = self._plan()
        # graphql-core's version is `copy(self)` with a new root value and new collected
        # errors; copy() goes through __reduce_ex__ (≈6 µs), copying the instance dict
        # is the same shallow copy for a fraction of that.
        state = self.__dict__.copy()
        state["root_value"] = payload
        state["collected_errors"] = CollectedErrors()
        # The leak: this memo is keyed by id() of field lists built anew per event.
        state["_relevant_sub_fields"] = {}
        # Incremental work lists, fresh as IncrementalExecutor.create_sub_executor makes them.
        # The RefMap memos (_stream_usages, _initial/_deferred_execution_plans) stay
        # shared: they only gain entries for @defer/@stream, which a subscription
        # rejects before storing anything (the memory test would catch a change).
        state["groups"] = []
        state["tasks"] = []
        state["streams"] = []
        state["_event_plan"] = plan
        executor = object.__new__(type(self))
        executor.__dict__ = state
        return executor

    def execute_operation(
        self, serially: bool | None = None
    ) -> AwaitableOrValue[ExecutionResult | ExperimentalIncrementalExecutionResults]:
        """Projects a subscription event when its plan can, else executes it normally."""
        plan = self._event_plan
        if plan is not None and (self.abort_signal is None or not self.abort_signal.aborted):
            data = plan.project(self.root_value)
            if data is not None:
                self.run_async_work_finished_hook()
                return ExecutionResult(data, None)
        return super().execute_operation(serially)

    def _plan(self) -> OperationPlan | None:
        """This subscription's plan: shared when its variables can key the cache."""
        middleware = self.middleware_manager
        # Middleware (e.g. strawberry's directive extensions) wraps every resolver.
        if middleware is not None and middleware.middlewares:
            return None
        try:
            variables = _frozen(self.variable_values.coerced)
        except TypeError:
            return self._compile()
        # ids are safe as keys while the entry holds the schema and the operation.
        key = (id(self.schema), id(self.operation), variables, self.hide_suggestions)
        with _plans_lock:
            entry = _plans.get(key)
            if entry is not None:
                _plans.move_to_end(key)
                return entry[2]
        plan = self._compile()
        with _plans_lock:
            _plans[key] = (self.schema, self.operation, plan)
            while len(_plans) > _PLAN_CACHE_SIZE:
                _plans.popitem(last=False)
        return plan

    def _compile(self) -> OperationPlan | None:
        try:
            return compile_operation(
                self.schema,
                self.fragments,
                self.variable_values,
                self.operation,
                hide_suggestions=self.hide_suggestions,
            )
        except Exception:
            # A bug here must cost speed, not the subscription.
            log.exception("cannot compile a projection; executing this subscription normally")
            return None


def cost_limited(executor_class: type[Executor[Any]], costs: VariableCosts) -> type[Executor[Any]]:
    """A subclass of `executor_class` whose executors are refused when the operation costs too much.

    The check runs once per operation (a subscription's events get copies, never a new build).
    """

    def build(_cls: type[Executor[Any]], *args: Any, **kwargs: Any) -> list[GraphQLError] | Executor[Any]:
        # Built as the class itself: only building needs the check, not each executor.
        executor = executor_class.build(*args, **kwargs)
        if isinstance(executor, list):  # the variables did not coerce
            return executor
        error = costs.check(
            executor.schema, executor.operation, executor.fragment_definitions, executor.variable_values.coerced
        )
        return executor if error is None else [error]

    # A class made at run time: the executor class is itself a parameter of the schema.
    return cast(
        "type[Executor[Any]]",
        type(f"CostLimited{executor_class.__name__}", (executor_class,), {"build": classmethod(build)}),
    )
