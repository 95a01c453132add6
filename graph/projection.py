"""A subscription event's result built straight from the payload, for selections that need no resolver.

graphql-core executes a subscription's selection set anew for every event: field
collection, resolve info, a resolver call per field, completion. For fields that only
read an attribute (strawberry fields without a resolver) all of that is fixed once the
document, the operation and the variables are: `compile_operation` turns such a
selection into a plan once per subscription, and `OperationPlan.project` builds an
event's `data` from the payload with `getattr` and the GraphQL types' own output
coercion (the same calls `Executor.complete_leaf_value` makes).

Anything the plan does not understand is not projected: a field with a resolver,
arguments or field extensions (permission classes are extensions), a directive other
than `@skip`/`@include`, fragment arguments, `@defer`/`@stream`, a type or abstract
type resolution strawberry did not generate, middleware. Values it cannot handle
(null for a non-null field, an exception or awaitable as a value, a list that is not a
`list`/`tuple`, a value the scalar refuses, a `strawberry.cast` object) make
`project` return None, and the caller runs graphql-core's normal execution for that
event, which produces the same data or the proper errors.

Plans are shared by every subscription with the same document, operation and
variables (see graph/executor.py), so each object node remembers the dict it built
for the most recently seen object: a group event's `Message` handed to 100
subscribers is projected once. The memo is checked against the object's current
attribute values (by identity) before use, so an object mutated and yielded again is
projected anew; it is kept only when every leaf value is of an immutable type, so a
mutable scalar value changed in place cannot be served stale. Dicts and lists in a
result may therefore be shared between results: nothing may mutate them (the
transport only serializes them).
"""

from __future__ import annotations

import keyword
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from types import CoroutineType, GeneratorType
from typing import Any, Final
from uuid import UUID

from graphql import (
    GraphQLEnumType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLUnionType,
    OperationDefinitionNode,
    OperationType,
)
from graphql.execution.collect_fields import (
    FieldDetailsList,
    FragmentDetails,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues
from graphql.language import FragmentSpreadNode, SelectionSetNode
from graphql.pyutils import Undefined
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.cast import get_strawberry_type_cast
from strawberry.types.field import StrawberryField

__all__ = ["OperationPlan", "compile_operation", "plain_directives_only"]

Completer = Callable[[Any], Any]

log = logging.getLogger("parley.projection")

_BACKREF: Final = GraphQLCoreConverter.DEFINITION_BACKREF
_TYPENAME: Final = "__typename"
# Directives whose effect graphql-core's field collection applies for us.
_KNOWN_DIRECTIVES: Final = frozenset({"skip", "include"})
# Values that cannot change without the attribute being reassigned: a memo built
# from them stays right as long as the attributes still hold the same objects.
_IMMUTABLE: Final[frozenset[type]] = frozenset(
    {str, int, float, bool, type(None), datetime, date, time, timedelta, Decimal, UUID}
)


class _Unprojectable(Exception):
    """A value the plan does not handle: the event falls back to normal execution."""


def _stable(value: object) -> bool:
    return type(value) in _IMMUTABLE or isinstance(value, Enum)


def _is_plain_value_class(cls: type) -> bool:
    """Not something graphql-core would treat specially (raise, or await) instead of completing."""
    return not (
        issubclass(cls, (BaseException, CoroutineType, GeneratorType))
        or hasattr(cls, "__await__")
        or hasattr(cls, "__aiter__")
    )


def _leaf(coerce: Callable[[Any], Any], non_null: bool) -> Completer:
    """Completes a scalar or enum value exactly as `Executor.complete_leaf_value` does, or gives up."""

    checked: set[type] = set(_IMMUTABLE)

    def complete(value: Any) -> Any:
        if value is None or value is Undefined:
            if non_null:
                raise _Unprojectable
            return None
        cls = type(value)
        if cls not in checked:
            # graphql-core raises exceptions found as values and awaits awaitables.
            if not _is_plain_value_class(cls):
                raise _Unprojectable
            checked.add(cls)
        coerced = coerce(value)
        if coerced is None or coerced is Undefined:
            raise _Unprojectable
        return coerced

    return complete


def _nullable(project: Completer, non_null: bool) -> Completer:
    def complete(value: Any) -> Any:
        if value is None or value is Undefined:
            if non_null:
                raise _Unprojectable
            return None
        return project(value)

    return complete


def _null_only(value: Any) -> None:
    """A nullable field whose selection cannot be projected: only null is."""
    if value is not None and value is not Undefined:
        raise _Unprojectable


class _Field:
    """One response key of an object node: a constant (`__typename`) or an attribute and its completer."""

    __slots__ = ("attribute", "complete", "constant", "key", "leaf")

    def __init__(
        self, key: str, attribute: str | None, complete: Completer, *, leaf: bool, constant: object = None
    ) -> None:
        self.key = key
        self.attribute = attribute
        self.complete = complete
        self.leaf = leaf
        self.constant = constant


def _object_projector(fields: Sequence[_Field], is_type_of: Callable[[Any, Any], Any] | None) -> Completer:
    """The function projecting one selection set on one object type, generated for it.

    Generated rather than a loop over the fields: it runs once per object per event,
    and straight-line attribute reads are several times faster. The source holds only
    fixed text, generated local names and attribute names checked to be identifiers;
    everything else reaches it through its namespace. For `message { id sender { id } }`:

        def project(obj):
            if type(obj) not in _checked: ...       # not an exception or awaitable
            p0 = obj.id                             # a leaf: the raw value
            p1 = c1(obj.sender)                     # an object: its (memoized) dict
            m = _memo[0]
            if m is not None and m[0] is obj and m[1] is p0 and m[2] is p1:
                return m[3]
            r = {k0: c0(p0), k1: p1}
            _memo[0] = (obj, p0, p1, r) if <p0 is of an immutable type> else None
            return r

    A part is the raw attribute value for a leaf (its coercion is what the memo saves)
    and the completed value otherwise (the same object as long as nothing changed).
    The memo keeps a strong reference to the object, so its id cannot be reused.
    """
    namespace: dict[str, Any] = {
        "_Unprojectable": _Unprojectable,
        "_plain": _is_plain_value_class,
        "_checked": set(),
        "_memo": [None],
        "_is_type_of": is_type_of,
        "_IMMUTABLE": _IMMUTABLE,
        "_Enum": Enum,
    }
    lines = [
        "def project(obj):",
        "    if type(obj) not in _checked:",
        "        if not _plain(type(obj)):",
        "            raise _Unprojectable",
        "        _checked.add(type(obj))",
    ]
    if is_type_of is not None:
        # strawberry's generated check (types implementing interfaces); it reads no info.
        lines += ["    if not _is_type_of(obj, None):", "        raise _Unprojectable"]
    parts: list[str] = []
    leaves: list[str] = []
    values: list[str] = []
    for i, field in enumerate(fields):
        namespace[f"k{i}"] = field.key
        namespace[f"c{i}"] = field.complete
        if field.attribute is None:
            namespace[f"t{i}"] = field.constant
            values.append(f"k{i}: t{i}")
            continue
        if field.attribute.isidentifier() and not keyword.iskeyword(field.attribute):
            read = f"obj.{field.attribute}"
        else:
            namespace[f"a{i}"] = field.attribute
            read = f"getattr(obj, a{i})"
        if field.leaf:
            lines.append(f"    p{i} = {read}")
            values.append(f"k{i}: c{i}(p{i})")
            leaves.append(f"(type(p{i}) in _IMMUTABLE or isinstance(p{i}, _Enum))")
        else:
            lines.append(f"    p{i} = c{i}({read})")
            values.append(f"k{i}: p{i}")
        parts.append(f"p{i}")
    same = "".join(f" and m[{n}] is {part}" for n, part in enumerate(parts, start=1))
    lines += [
        "    m = _memo[0]",
        f"    if m is not None and m[0] is obj{same}:",
        f"        return m[{len(parts) + 1}]",
        f"    r = {{{', '.join(values)}}}",
        f"    _memo[0] = (obj, {''.join(f'{part}, ' for part in parts)}r) if {' and '.join(leaves) or 'True'} else None",
        "    return r",
    ]
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from identifiers only, see above
    project: Completer = namespace["project"]
    return project


class _ListNode:
    __slots__ = ("_item", "_item_is_leaf", "_memo")

    def __init__(self, item: Completer, item_is_leaf: bool) -> None:
        self._item = item
        self._item_is_leaf = item_is_leaf
        self._memo: tuple[object, Sequence[Any], list[Any]] | None = None

    def project(self, value: Any) -> list[Any]:
        # graphql-core also completes other iterables and async iterables: those fall back.
        if type(value) is not list and type(value) is not tuple:
            raise _Unprojectable
        memo = self._memo
        item = self._item
        if self._item_is_leaf:
            if memo is not None and memo[0] is value and _same_items(value, memo[1]):
                return memo[2]
            result = [item(v) for v in value]
            self._memo = (value, tuple(value), result) if all(map(_stable, value)) else None
            return result
        parts = [item(v) for v in value]
        if memo is not None and memo[0] is value and _same_items(parts, memo[1]):
            return memo[2]
        self._memo = (value, parts, parts)
        return parts


def _same_items(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


class _AbstractNode:
    """A union or interface position: a concrete node per Python class, compiled on first sight."""

    __slots__ = ("_abstract", "_compiler", "_field_details", "_nodes")

    def __init__(
        self,
        compiler: _Compiler,
        abstract: GraphQLUnionType | GraphQLInterfaceType,
        field_details: FieldDetailsList,
    ) -> None:
        self._compiler = compiler
        self._abstract = abstract
        self._field_details = field_details
        self._nodes: dict[type, Completer | None] = {}

    def project(self, value: Any) -> dict[str, Any]:
        # A cast names its type per object, not per class: let strawberry resolve it.
        if get_strawberry_type_cast(value) is not None:
            raise _Unprojectable
        cls = type(value)
        try:
            node = self._nodes[cls]
        except KeyError:
            try:
                node = self._compile(cls)
            except Exception:
                # A bug here must cost speed, not the event: this class falls back from now on.
                log.exception("cannot compile a projection for %s", cls)
                node = None
            self._nodes[cls] = node
        if node is None:
            raise _Unprojectable
        result: dict[str, Any] = node(value)
        return result

    def _compile(self, cls: type) -> Completer | None:
        runtime_type = self._compiler.runtime_type(self._abstract, cls)
        if runtime_type is None:
            return None
        return self._compiler.object_node(runtime_type, self._field_details)


class OperationPlan:
    """The compiled projection of one subscription operation (document, operation and variables fixed)."""

    __slots__ = ("_complete", "_key", "fallbacks", "projected")

    def __init__(self, key: str, complete: Completer) -> None:
        self._key = key
        self._complete = complete
        self.projected = 0
        self.fallbacks = 0

    def project(self, payload: Any) -> dict[str, Any] | None:
        """The event's `data`, or None when normal execution must produce the result."""
        try:
            data = {self._key: self._complete(payload)}
        except Exception:  # any surprise: normal execution gives the right data or the error
            self.fallbacks += 1
            return None
        self.projected += 1
        return data


class _Compiler:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDetails],
        variable_values: VariableValues,
        operation: OperationDefinitionNode,
        hide_suggestions: bool,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variable_values = variable_values
        self.operation = operation
        self.hide_suggestions = hide_suggestions

    def root(self) -> OperationPlan | None:
        root_type = self.schema.subscription_type
        if root_type is None:
            return None
        collected = collect_fields(
            self.schema, self.fragments, self.variable_values, root_type, self.operation, self.hide_suggestions
        )
        if collected.new_defer_usages or len(collected.grouped_field_set) != 1:
            return None
        ((key, field_details),) = collected.grouped_field_set.items()
        if any(details.fragment_variable_values is not None for details in field_details):
            return None
        field_def = self.schema.get_field(root_type, field_details[0].node.name.value)
        field = field_def.extensions.get(_BACKREF) if field_def else None
        # strawberry resolves a subscription field per event to the payload itself
        # (its arguments went to the subscribe resolver, checked once at subscribe time).
        if field_def is None or not isinstance(field, StrawberryField) or not field.is_subscription:
            return None
        compiled = self.value(field_def.type, field_details)
        if compiled is None:
            return None
        return OperationPlan(key, compiled[0])

    def value(self, type_: GraphQLOutputType, field_details: FieldDetailsList) -> tuple[Completer, bool] | None:
        """A completer for values of `type_` and whether it is a leaf; None when only never works."""
        non_null = isinstance(type_, GraphQLNonNull)
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if isinstance(inner, (GraphQLScalarType, GraphQLEnumType)):
            return _leaf(inner.coerce_output_value, non_null), True
        project: Completer | None = None
        if isinstance(inner, GraphQLList):
            item = self.value(inner.of_type, field_details)
            if item is not None:
                project = _ListNode(item[0], item[1]).project
        elif isinstance(inner, GraphQLObjectType):
            project = self.object_node(inner, field_details)
        elif isinstance(inner, (GraphQLUnionType, GraphQLInterfaceType)) and self._strawberry_resolves(inner):
            project = _AbstractNode(self, inner, field_details).project
        if project is None:
            return None if non_null else (_null_only, False)
        return _nullable(project, non_null), False

    def object_node(self, object_type: GraphQLObjectType, field_details: FieldDetailsList) -> Completer | None:
        definition = object_type.extensions.get(_BACKREF)
        # A user-defined is_type_of may look at the resolve info, which a plan has not.
        if not isinstance(definition, StrawberryObjectDefinition) or definition.is_type_of is not None:
            return None
        collected = collect_subfields(
            self.schema,
            self.fragments,
            self.variable_values,
            self.operation,
            object_type,
            field_details,
            self.hide_suggestions,
        )
        if collected.new_defer_usages:
            return None
        fields: list[_Field] = []
        for key, sub_details in collected.grouped_field_set.items():
            field = self._field(object_type, key, sub_details)
            if field is None:
                return None
            fields.append(field)
        return _object_projector(fields, object_type.is_type_of)

    def _field(self, parent: GraphQLObjectType, key: str, field_details: FieldDetailsList) -> _Field | None:
        if any(d.node.arguments or d.fragment_variable_values is not None for d in field_details):
            return None
        name = field_details[0].node.name.value
        if name == _TYPENAME:
            return _Field(key, None, _null_only, leaf=False, constant=parent.name)
        field_def = self.schema.get_field(parent, name)
        if field_def is None or field_def.args:
            return None
        field = field_def.extensions.get(_BACKREF)
        # Only plain attributes: a resolver or field extension (permissions included) runs code.
        if (
            not isinstance(field, StrawberryField)
            or field.base_resolver is not None
            or field.extensions
            or field.is_subscription
            or getattr(field, "default_resolver", None) is not getattr
        ):
            return None
        compiled = self.value(field_def.type, field_details)
        if compiled is None:
            return None
        complete, leaf = compiled
        return _Field(key, field.python_name, complete, leaf=leaf)

    @staticmethod
    def _strawberry_resolves(abstract: GraphQLUnionType | GraphQLInterfaceType) -> bool:
        """The abstract type's runtime type comes from strawberry's own resolver (per class)."""
        definition = abstract.extensions.get(_BACKREF)
        if isinstance(abstract, GraphQLInterfaceType):
            return isinstance(definition, StrawberryObjectDefinition) and definition.resolve_type is None
        return definition is not None

    def runtime_type(self, abstract: GraphQLUnionType | GraphQLInterfaceType, cls: type) -> GraphQLObjectType | None:
        """The object type strawberry's type resolver picks for instances of `cls`, if it is per class."""
        definition = getattr(cls, "__strawberry_definition__", None)
        if (
            not isinstance(definition, StrawberryObjectDefinition)
            or definition.is_graphql_generic
            or definition.concrete_of is not None
        ):
            return None
        if isinstance(abstract, GraphQLUnionType):
            # strawberry's union resolver: the member whose definition is the object's.
            for member in abstract.types:
                if isinstance(member, GraphQLObjectType) and member.extensions.get(_BACKREF) is definition:
                    return member
            return None
        # strawberry's interface resolver: instances of the interface resolve to their
        # definition's name, which graphql-core then checks is a possible type.
        interface = abstract.extensions.get(_BACKREF)
        if not isinstance(interface, StrawberryObjectDefinition) or not issubclass(cls, interface.origin):
            return None
        runtime = self.schema.get_type(definition.name)
        if not isinstance(runtime, GraphQLObjectType) or not self.schema.is_sub_type(abstract, runtime):
            return None
        return runtime


def plain_directives_only(operation: OperationDefinitionNode, fragments: Mapping[str, FragmentDetails]) -> bool:
    """Whether the operation and every fragment use no directive but @skip/@include (and no fragment arguments)."""
    if operation.directives or any(v.directives for v in operation.variable_definitions or ()):
        return False
    if not _plain_selections(operation.selection_set):
        return False
    for details in fragments.values():
        definition = details.definition
        if definition.directives or definition.variable_definitions or details.variable_signatures:
            return False
        if not _plain_selections(definition.selection_set):
            return False
    return True


def _plain_selections(selection_set: SelectionSetNode) -> bool:
    for selection in selection_set.selections:
        if any(d.name.value not in _KNOWN_DIRECTIVES for d in selection.directives or ()):
            return False
        if isinstance(selection, FragmentSpreadNode) and getattr(selection, "arguments", None):
            return False
        nested = getattr(selection, "selection_set", None)
        if nested is not None and not _plain_selections(nested):
            return False
    return True


def compile_operation(
    schema: GraphQLSchema,
    fragments: dict[str, FragmentDetails],
    variable_values: VariableValues,
    operation: OperationDefinitionNode,
    *,
    hide_suggestions: bool = False,
) -> OperationPlan | None:
    """The projection plan of a subscription operation, or None when none of it can be projected."""
    if operation.operation != OperationType.SUBSCRIPTION or not plain_directives_only(operation, fragments):
        return None
    return _Compiler(schema, fragments, variable_values, operation, hide_suggestions).root()
