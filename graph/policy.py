"""One schema extension for every operation: cached parsing and validation with the query limits.

strawberry builds each extension anew for every operation and walks all of them at
each of its hooks. Its ParserCache, ValidationCache, AddValidationRules and
MaxTokensLimiter plus MaskErrors, as five extensions, cost about 12% of a busy
server's CPU (py-spy, `python -m bench --scenario direct --rates 250`); this does the
parsing and validation work as one extension with two hooks (errors are shaped in
`graph/schema.py`). The caches are shared LRU caches, as strawberry's own are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

from graphql import GraphQLError, parse
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from graph.input_rules import UNSTORABLE_MESSAGE, unstorable_in

CACHE_SIZE = 512

# Keyed by the query text (and parse options) and by (schema, document, rules): the same
# document object comes back for the same text, so validation hits its cache too.
_parse = lru_cache(maxsize=CACHE_SIZE)(parse)
_validate = lru_cache(maxsize=CACHE_SIZE)(validate_document)


class OperationPolicy(SchemaExtension):
    """The parser and validation caches, with the depth, alias and token limits.

    Variables are checked here too (every string storable: graph/input_rules.py), as the
    document's literals are by a validation rule: per request, as variables change.
    """

    def __init__(self, rules: Sequence[type[ASTValidationRule]], max_tokens: int) -> None:
        self._rules = tuple(rules)
        self._max_tokens = max_tokens

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        context.graphql_document = _parse(context.query, **{**context.parse_options, "max_tokens": self._max_tokens})
        yield

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        assert context.graphql_document is not None
        errors = _validate(context.schema._schema, context.graphql_document, (*context.validation_rules, *self._rules))
        if not errors and context.variables and unstorable_in(context.variables):
            # A new list: the cached one belongs to every request with this document.
            errors = [GraphQLError(UNSTORABLE_MESSAGE, extensions={"code": "BAD_USER_INPUT"})]
        context.pre_execution_errors = errors
        yield
