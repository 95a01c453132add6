"""Query cost: operations asking for too much at once are refused before they run.

The cost of an operation is the number of fields it may resolve: every field counts
once per item of each list it sits in. A list's size is its `first` argument where
the document gives one, else the argument's default (`conversations` 50, `members`
100, `pendingEvents` 100, `searchUsers` 20), else `LIST_SIZES`, else
`DEFAULT_LIST_SIZE`. For a union or interface only the costliest member type counts
(an item is one of them).

A `first` given as a variable costs as the request's value; left out or null, as the
argument's default (what the resolver then reads). Validation is cached per document and
never sees values, so the limit is checked in two places: the validation rule
(`cost_limit_rule`) refuses operations whose cost does not depend on variables, and
`VariableCosts`, called by the executor once the request's variables are coerced
(graph/executor.py), costs the others with their values, on every transport.

Fragments are costed once per type they are spread on and then multiplied, so nested
fragment spreads cannot make the rule itself slow. Introspection fields count as one:
their answer is bounded by the schema, and production turns introspection off.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    GraphQLUnionType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
    get_named_type,
    is_abstract_type,
)
from graphql.language import VisitorAction

DEFAULT_LIST_SIZE: Final = 100
# Lists without a `first` argument whose length a limit bounds (the contract's defaults).
LIST_SIZES: Final[Mapping[str, int]] = {"Message.attachments": 10}
# Deeper selections than this are refused by the depth limit anyway; stop costing there.
MAX_NESTING: Final = 64
# Operations remembered by `VariableCosts` (whether their cost depends on variables), and
# costs remembered per operation, one for each set of sizes its variables gave.
MEMO_SIZE: Final = 512
COSTS_PER_OPERATION: Final = 16


class _Cost:
    """The cost of one operation's selections; fragments memoized per type."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        operation: OperationDefinitionNode,
        default_list_size: int,
        variables: Mapping[str, Any],
    ) -> None:
        self._schema = schema
        self._fragments = fragments
        self._default_list_size = default_list_size
        # Coerced values already hold the variables' defaults; a document's own default
        # serves callers costing without values.
        self._variables: dict[str, Any] = {}
        for definition in operation.variable_definitions or ():
            if isinstance(definition.default_value, IntValueNode):
                self._variables[definition.variable.name.value] = int(definition.default_value.value)
        self._variables.update(variables)
        self._memo: dict[tuple[str, str], int] = {}
        self._active: set[str] = set()
        # The variables some list's size was read from: none, and the cost is the same for every request.
        self.sized_by: set[str] = set()

    def selections(self, parent: GraphQLNamedType, selection_set: SelectionSetNode | None, depth: int) -> int:
        """Cost of a selection set for one item of `parent` (the costliest member for abstract types)."""
        if selection_set is None:
            return 0
        if depth > MAX_NESTING:
            return 0
        if is_abstract_type(parent):
            assert isinstance(parent, (GraphQLInterfaceType, GraphQLUnionType))
            types = self._schema.get_possible_types(parent)
            return max((self._on_object(t, selection_set, depth) for t in types), default=0)
        if isinstance(parent, GraphQLObjectType):
            return self._on_object(parent, selection_set, depth)
        return 0

    def _on_object(self, parent: GraphQLObjectType, selection_set: SelectionSetNode, depth: int) -> int:
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self._field(parent, selection, depth)
            elif isinstance(selection, InlineFragmentNode):
                if self._applies(selection.type_condition.name.value if selection.type_condition else None, parent):
                    total += self._on_object(parent, selection.selection_set, depth)
            elif isinstance(selection, FragmentSpreadNode):
                total += self._spread(parent, selection.name.value, depth)
        return total

    def _spread(self, parent: GraphQLObjectType, name: str, depth: int) -> int:
        fragment = self._fragments.get(name)
        if fragment is None or name in self._active:  # unknown or cyclic: other rules report it
            return 0
        if not self._applies(fragment.type_condition.name.value, parent):
            return 0
        key = (name, parent.name)
        if key not in self._memo:
            self._active.add(name)
            try:
                self._memo[key] = self._on_object(parent, fragment.selection_set, depth)
            finally:
                self._active.discard(name)
        return self._memo[key]

    def _applies(self, condition: str | None, parent: GraphQLObjectType) -> bool:
        if condition is None or condition == parent.name:
            return True
        target = self._schema.get_type(condition)
        if isinstance(target, (GraphQLInterfaceType, GraphQLUnionType)):
            return self._schema.is_sub_type(target, parent)
        return False

    def _field(self, parent: GraphQLObjectType, node: FieldNode, depth: int) -> int:
        name = node.name.value
        # __typename; introspection (__schema, __type), bounded by the schema's size and off in
        # production; an unknown field, which FieldsOnCorrectTypeRule reports.
        definition = None if name.startswith("__") else parent.fields.get(name)
        if definition is None:
            return 1
        items = self._items(definition.type, parent.name, node, definition.args)
        child = self.selections(get_named_type(definition.type), node.selection_set, depth + 1)
        return 1 + items * child

    def _items(self, type_: GraphQLOutputType, parent: str, node: FieldNode, args: Mapping[str, Any]) -> int:
        """How many items of the field's type one value holds: the product of its list sizes."""
        items = 1
        while True:
            if isinstance(type_, GraphQLNonNull):
                type_ = type_.of_type
            if not isinstance(type_, GraphQLList):
                return items
            items *= self._list_size(parent, node, args)
            type_ = type_.of_type

    def _list_size(self, parent: str, node: FieldNode, args: Mapping[str, Any]) -> int:
        argument = args.get("first")
        if argument is None:
            return LIST_SIZES.get(f"{parent}.{node.name.value}", self._default_list_size)
        given = next((a.value for a in node.arguments or () if a.name.value == "first"), None)
        if isinstance(given, IntValueNode):
            return max(0, int(given.value))
        if isinstance(given, VariableNode):
            self.sized_by.add(given.name.value)
            value = self._variables.get(given.name.value)
            if isinstance(value, int) and not isinstance(value, bool):
                return max(0, value)
            # Left out or null: the argument is the resolver's default.
        default = argument.default_value
        return default if isinstance(default, int) and default >= 0 else self._default_list_size


def _costed(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    default_list_size: int,
) -> tuple[int, frozenset[str]]:
    """The operation's cost, and the variables it depends on."""
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0, frozenset()
    cost = _Cost(schema, fragments, operation, default_list_size, variables)
    return cost.selections(root, operation.selection_set, 0), frozenset(cost.sized_by)


def operation_cost(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    *,
    variables: Mapping[str, Any] | None = None,
    default_list_size: int = DEFAULT_LIST_SIZE,
) -> int:
    """The cost of one operation of a document with these (coerced) variable values (see the module's docstring).

    Without values, a variable costs as its default in the document.
    """
    return _costed(schema, operation, fragments, variables or {}, default_list_size)[0]


def _too_costly(cost: int, max_cost: int, node: OperationDefinitionNode) -> GraphQLError:
    return GraphQLError(
        f"This query may cost {cost}, more than the limit of {max_cost}: ask for fewer "
        "items (`first`) or fewer fields, or split it.",
        node,
        extensions={"code": "BAD_USER_INPUT", "cost": cost, "maxCost": max_cost},
    )


def cost_limit_rule(max_cost: int, *, default_list_size: int = DEFAULT_LIST_SIZE) -> type[ValidationRule]:
    """A validation rule refusing operations that cost more than `max_cost` (BAD_USER_INPUT).

    Build it once per schema: the validation cache keys on the rule classes.
    """

    class QueryCostLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: object) -> VisitorAction:
            fragments = {
                d.name.value: d for d in self.context.document.definitions if isinstance(d, FragmentDefinitionNode)
            }
            cost, sized_by = _costed(self.context.schema, node, fragments, {}, default_list_size)
            # An operation whose lists are sized by variables is costed per request (VariableCosts).
            if not sized_by and cost > max_cost:
                self.report_error(_too_costly(cost, max_cost, node))
            return self.SKIP

    return QueryCostLimit


@dataclass
class _Known:
    """What `VariableCosts` remembers of an operation (holding it keeps its id unique)."""

    schema: GraphQLSchema
    operation: OperationDefinitionNode
    sized_by: tuple[str, ...]
    costs: dict[tuple[int | None, ...], int] = field(default_factory=dict)


class VariableCosts:
    """The half of the cost limit that needs the request: operations whose list sizes are variables.

    Remembers per operation whether its cost depends on variables (the parser cache hands
    out one document per query text): an operation that does not, which the validation
    rule has costed already, then costs a dictionary lookup per request.
    """

    def __init__(self, max_cost: int, *, default_list_size: int = DEFAULT_LIST_SIZE) -> None:
        self._max_cost = max_cost
        self._default_list_size = default_list_size
        self._known: OrderedDict[tuple[int, int], _Known] = OrderedDict()
        self._lock = threading.Lock()  # tests and benchmarks run servers in threads of one process

    def check(
        self,
        schema: GraphQLSchema,
        operation: OperationDefinitionNode,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
    ) -> GraphQLError | None:
        """The error refusing this operation with these coerced variable values, or None."""
        known = self._known_of(schema, operation, fragments)
        if not known.sized_by:
            return None  # the validation rule costs it
        sizes = _sizes(known, variables)
        cost = known.costs.get(sizes)
        if cost is None:
            cost = _costed(schema, operation, fragments, variables, self._default_list_size)[0]
            with self._lock:
                if len(known.costs) >= COSTS_PER_OPERATION:
                    known.costs.clear()
                known.costs[sizes] = cost
        return None if cost <= self._max_cost else _too_costly(cost, self._max_cost, operation)

    def _known_of(
        self, schema: GraphQLSchema, operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDefinitionNode]
    ) -> _Known:
        key = (id(schema), id(operation))
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known
        sized_by = _costed(schema, operation, fragments, {}, self._default_list_size)[1]
        known = _Known(schema, operation, tuple(sorted(sized_by)))
        with self._lock:
            self._known[key] = known
            while len(self._known) > MEMO_SIZE:
                self._known.popitem(last=False)
        return known


def _sizes(known: _Known, variables: Mapping[str, Any]) -> tuple[int | None, ...]:
    """The list sizes the request's variables give, as a memo key (None: left out or null)."""
    return tuple(_size(variables.get(name)) for name in known.sized_by)


def _size(value: Any) -> int | None:
    """A list size as a memo key: an Int variable's value; None (left out or null) for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
