"""Checks on every operation before it runs: one login or register, storable text only.

Both are refused as `BAD_USER_INPUT` (errors without an original error are the
client's fault, graph/errors.py) before any resolver runs.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValidationRule,
)

from resolvers.text import unstorable

# Each costs an argon2 hash (64 MiB, ~0.1 s) and needs no token: aliases must not multiply them.
PASSWORD_FIELDS = frozenset({"login", "register"})
MAX_PASSWORD_FIELDS = 1

UNSTORABLE_MESSAGE = "Text may not contain NUL characters or unpaired surrogates."


def unstorable_in(value: object) -> bool:
    """Whether any string (or key) anywhere in decoded JSON `value` is `unstorable`."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if unstorable(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class OnePasswordFieldPerOperation(ValidationRule):
    """At most one `login` or `register` per mutation, counting aliases and fragments."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        if node.operation != OperationType.MUTATION:
            return
        if self._count(node.selection_set, set()) > MAX_PASSWORD_FIELDS:
            self.report_error(
                GraphQLError(
                    "At most one login or register per request.",
                    node,
                    extensions={"code": "BAD_USER_INPUT"},
                )
            )

    def _count(self, selection_set: SelectionSetNode, seen: set[str]) -> int:
        count = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                count += selection.name.value in PASSWORD_FIELDS
            elif isinstance(selection, InlineFragmentNode):
                count += self._count(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                seen.add(selection.name.value)
                fragment = self.context.get_fragment(selection.name.value)
                if fragment is not None:
                    count += self._count(fragment.selection_set, seen)
        return count


class StorableStringLiterals(ValidationRule):
    """String literals in the document (arguments, defaults) hold no NUL or lone surrogate."""

    def enter_string_value(self, node: StringValueNode, *_args: Any) -> None:
        if unstorable(node.value):
            self.report_error(GraphQLError(UNSTORABLE_MESSAGE, node, extensions={"code": "BAD_USER_INPUT"}))
