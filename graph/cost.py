"""Query cost: a validation rule that refuses documents asking for too much at once.

The cost of an operation is the number of fields it may resolve: every field counts
once per item of each list it sits in. A list's size is its `first` argument where
the document gives one, else the argument's default (`conversations` 50, `members`
100, `pendingEvents` 100, `searchUsers` 20), else `LIST_SIZES`, else
`DEFAULT_LIST_SIZE`. For a union or interface only the costliest member type counts
(an item is one of them).

`first` given as a variable costs as the variable's default in the document, else as
the argument's default: validation runs once per document (it is cached) and does not
see variable values. Every `first` is also capped where it is read (`members` and
`conversations` at 100, `searchUsers` at 50, `pendingEvents` at 500), which bounds
what a variable can add.

Fragments are costed once per type they are spread on and then multiplied, so nested
fragment spreads cannot make the rule itself slow. Introspection fields count as one:
their answer is bounded by the schema, and production turns introspection off.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class _Cost:
    """The cost of one operation's selections; fragments memoized per type."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        operation: OperationDefinitionNode,
        default_list_size: int,
    ) -> None:
        self._schema = schema
        self._fragments = fragments
        self._default_list_size = default_list_size
        self._variable_defaults: dict[str, int] = {}
        for definition in operation.variable_definitions or ():
            if isinstance(definition.default_value, IntValueNode):
                self._variable_defaults[definition.variable.name.value] = int(definition.default_value.value)
        self._memo: dict[tuple[str, str], int] = {}
        self._active: set[str] = set()

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
        if isinstance(given, VariableNode) and given.name.value in self._variable_defaults:
            return max(0, self._variable_defaults[given.name.value])
        default = argument.default_value
        return default if isinstance(default, int) and default >= 0 else self._default_list_size


def operation_cost(
    schema: GraphQLSchema,
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    *,
    default_list_size: int = DEFAULT_LIST_SIZE,
) -> int:
    """The cost of one operation of a document (see the module's docstring)."""
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    return _Cost(schema, fragments, operation, default_list_size).selections(root, operation.selection_set, 0)


def cost_limit_rule(max_cost: int, *, default_list_size: int = DEFAULT_LIST_SIZE) -> type[ValidationRule]:
    """A validation rule refusing operations that cost more than `max_cost` (BAD_USER_INPUT).

    Build it once per schema: the validation cache keys on the rule classes.
    """

    class QueryCostLimit(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_args: object) -> VisitorAction:
            fragments = {
                d.name.value: d for d in self.context.document.definitions if isinstance(d, FragmentDefinitionNode)
            }
            cost = operation_cost(self.context.schema, node, fragments, default_list_size=default_list_size)
            if cost > max_cost:
                self.report_error(
                    GraphQLError(
                        f"This query may cost {cost}, more than the limit of {max_cost}: ask for fewer "
                        "items (`first`) or fewer fields, or split it.",
                        node,
                        extensions={"code": "BAD_USER_INPUT", "cost": cost, "maxCost": max_cost},
                    )
                )
            return self.SKIP

    return QueryCostLimit
