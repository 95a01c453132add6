"""Apollo automatic persisted queries (APQ) and the production allow-list of known operations.

A client sends `extensions.persistedQuery.sha256Hash` without the query; an unknown hash
answers `PersistedQueryNotFound` (code PERSISTED_QUERY_NOT_FOUND, what Apollo's
PersistedQueryLink, Apollo iOS and Apollo Kotlin retry on) and the client sends the hash with
the query. Anyone may do that, so a text is stored only once its hash is verified and it
parses and validates against the schema (a request that fails there stores nothing), and
the store is bounded (entries and text length). Modes (`settings.persisted_queries`): `off`
ignores the extension, `auto` stores any such query, `allowlist` runs only the operations of
`frontend_schema/operations` (sent as text or by hash, or found in the shared store) and
refuses every other document with OPERATION_NOT_ALLOWED.

Apollo's link hashes the document it sends, printed by graphql-js (`sha256(print(query))`),
after its cache has added `__typename` to every selection set. So an allow-listed operation is
recognised by its text, with unaliased `__typename` selections removed and definitions in a
fixed order; its plain printed hash is known from the start, any other hash of an allowed text
is learnt on the not-found round trip.

Resolved here, before strawberry sees the request, for every transport: HTTP (also batched),
multipart and SSE streams, and WebSocket operations.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    OperationDefinitionNode,
    Visitor,
    parse,
    print_ast,
    visit,
)
from graphql.language import REMOVE

from resolvers.ports import PersistedQueryStore

log = logging.getLogger("parley.persisted_queries")

NOT_FOUND_MESSAGE = "PersistedQueryNotFound"
NOT_FOUND_CODE = "PERSISTED_QUERY_NOT_FOUND"
NOT_ALLOWED_CODE = "OPERATION_NOT_ALLOWED"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Mode = Literal["off", "auto", "allowlist"]


class PersistedQueryError(Exception):
    """The request cannot run as sent; `error` is what the client gets."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.error = GraphQLError(message, extensions={"code": code})


# Longest query text kept for hash-only requests. Apps' operations are a few KiB; anyone may
# register texts, so without a bound a client could fill Redis with megabyte entries for a week.
MAX_STORED_QUERY_CHARS = 32_768


def sha256_hex(text: str) -> str:
    """The lowercase hex SHA-256 of the UTF-8 text, as Apollo's clients compute it."""
    return hashlib.sha256(text.encode()).hexdigest()


class MemoryPersistedQueries:
    """A bounded LRU of persisted queries for one process (the embedded mode, or no Redis)."""

    def __init__(self, max_entries: int = 2000, max_chars: int = 16 * 1024 * 1024) -> None:
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._chars = 0

    async def get(self, sha256: str) -> str | None:
        """The stored query, now the most recently used."""
        query = self._entries.get(sha256)
        if query is not None:
            self._entries.move_to_end(sha256)
        return query

    async def put(self, sha256: str, query: str) -> None:
        """Stores the query, evicting the least recently used ones beyond either bound."""
        previous = self._entries.pop(sha256, None)
        if previous is not None:
            self._chars -= len(previous)
        self._entries[sha256] = query
        self._chars += len(query)
        while self._entries and (len(self._entries) > self._max_entries or self._chars > self._max_chars):
            _, evicted = self._entries.popitem(last=False)
            self._chars -= len(evicted)


class _DropTypename(Visitor):
    def enter_field(self, node: FieldNode, *_args: Any) -> object:
        if node.name.value == "__typename" and node.alias is None:
            return REMOVE
        return None


def _ordered(document: DocumentNode) -> DocumentNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = sorted(
        (d for d in document.definitions if isinstance(d, FragmentDefinitionNode)), key=lambda f: f.name.value
    )
    others = [d for d in document.definitions if not isinstance(d, (OperationDefinitionNode, FragmentDefinitionNode))]
    return DocumentNode(definitions=(*operations, *fragments, *others))


def _canonical_document(document: DocumentNode) -> str:
    stripped = visit(document, _DropTypename())
    assert isinstance(stripped, DocumentNode)
    return print_ast(_ordered(stripped))


@lru_cache(maxsize=512)
def canonical(query: str) -> str | None:
    """The text an allow-listed operation is compared by; None when it does not parse."""
    try:
        return _canonical_document(parse(query))
    except GraphQLError:
        return None


def _fragments_used(node: Any, fragments: Mapping[str, FragmentDefinitionNode], found: dict[str, None]) -> None:
    class Spreads(Visitor):
        def enter_fragment_spread(self, spread: FragmentSpreadNode, *_args: Any) -> None:
            name = spread.name.value
            if name not in found and name in fragments:
                found[name] = None
                _fragments_used(fragments[name], fragments, found)

    visit(node, Spreads())


@dataclass
class Allowlist:
    """The operations an app may run in `allowlist` mode, by canonical text and by printed hash."""

    texts: frozenset[str] = frozenset()
    by_hash: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_directory(cls, directory: Path) -> Allowlist:
        """Every named operation of the `.graphql` files there, each with the fragments it uses."""
        documents = [parse(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.graphql"))]
        definitions = [d for document in documents for d in document.definitions]
        fragments = {d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)}
        texts: set[str] = set()
        by_hash: dict[str, str] = {}
        for operation in definitions:
            if not isinstance(operation, OperationDefinitionNode):
                continue
            used: dict[str, None] = {}
            _fragments_used(operation, fragments, used)
            # As an app sends it: the operation, then its fragments (codegen's and Apollo's order).
            document = DocumentNode(definitions=(operation, *(fragments[name] for name in used)))
            text = print_ast(document)
            texts.add(_canonical_document(document))
            by_hash[sha256_hex(text)] = text
        return cls(texts=frozenset(texts), by_hash=by_hash)

    def allows(self, query: str) -> bool:
        """True when the query is one of the listed operations (up to `__typename` and definition order)."""
        return canonical(query) in self.texts


@dataclass
class PersistedQueries:
    """Resolves and checks each operation's query text before it runs (see the module docstring)."""

    mode: Mode = "auto"
    allowlist: Allowlist = field(default_factory=Allowlist)
    # Replaced by the app's lifespan with the Redis store when Redis is configured.
    store: PersistedQueryStore = field(default_factory=MemoryPersistedQueries)

    async def resolve(
        self, query: str | None, extensions: Mapping[str, Any] | None, *, storable: Callable[[str], bool]
    ) -> str | None:
        """The query to run; raises PersistedQueryError when it is unknown, mismatched or not allowed.

        A text sent with its hash is stored when `storable(text)`: it parses and validates.
        """
        if self.mode == "off":
            return query
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            self._check_allowed(query)
            return query
        sha256 = persisted.get("sha256Hash") if isinstance(persisted, Mapping) else None
        if not isinstance(sha256, str) or not _SHA256.match(sha256) or persisted.get("version", 1) != 1:
            raise PersistedQueryError(
                "extensions.persistedQuery needs version 1 and a lowercase hex sha256Hash.", "BAD_USER_INPUT"
            )
        if query is None:
            return await self._lookup(sha256)
        if sha256_hex(query) != sha256:
            raise PersistedQueryError("provided sha does not match query", "BAD_USER_INPUT")
        self._check_allowed(query)
        if len(query) > MAX_STORED_QUERY_CHARS or not storable(query):
            # Runs (or fails) as sent, but is not kept: the store is shared and lives for days.
            return query
        try:
            await self.store.put(sha256, query)
        except Exception:  # a cache: the operation runs anyway, and the client will send the text again
            log.warning("could not store a persisted query", exc_info=True)
        return query

    async def _lookup(self, sha256: str) -> str:
        listed = self.allowlist.by_hash.get(sha256) if self.mode == "allowlist" else None
        if listed is not None:
            return listed
        try:
            stored = await self.store.get(sha256)
        except Exception:  # the client falls back to sending the query
            log.warning("could not read a persisted query", exc_info=True)
            stored = None
        if stored is None:
            raise PersistedQueryError(NOT_FOUND_MESSAGE, NOT_FOUND_CODE)
        # The store is shared: another process (in `auto` mode, or before a switch to the
        # allow-list) may have stored any valid text.
        self._check_allowed(stored)
        return stored

    def _check_allowed(self, query: str | None) -> None:
        if self.mode == "allowlist" and query is not None and not self.allowlist.allows(query):
            raise PersistedQueryError(
                "This server runs only the operations of frontend_schema/operations.", NOT_ALLOWED_CODE
            )
