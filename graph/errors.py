"""Error shaping: every error gets `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graphql import GraphQLError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from resolvers.errors import ParleyError

log = logging.getLogger("parley.errors")

INTERNAL = "INTERNAL_SERVER_ERROR"

# What strawberry raises for a request it cannot run as sent: no query, no such operation, or
# an operation type the transport does not carry (a mutation over GET, a subscription as JSON).
REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)

# PostgreSQL refusing because it is shutting down, crashed, starting up (57P01-57P03: the
# "starting up" window right after a restart) or full (53300); and class 08, connection exceptions.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error, the driver error SQLAlchemy wraps, and what each was explicitly raised from."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        # Only `raise … from`: an implicit __context__ may be an unrelated error handled earlier.
        current = current.__cause__


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def is_unavailable(error: BaseException | None) -> bool:
    """A backing service that did not answer or refused to serve (database or Redis down or restarting)."""
    return error is not None and any(_service_down(cause) for cause in _causes(error))


def _service_down(error: BaseException) -> bool:
    # SQLAlchemy's pool timeout and disconnect errors (it wraps asyncpg's InterfaceError, a
    # closed connection, as its own); the asyncpg store raises its own ConnectionError subclass.
    if isinstance(error, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # By SQLSTATE, raw or wrapped: graph/ does not import the driver (asyncpg stays in infra/).
    state = _sqlstate(error)
    if state is not None and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
        return True
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or type(error).__module__.startswith("redis.")


def error_code(error: GraphQLError) -> str:
    """The contract's code for an error."""
    original = error.original_error
    if original is None:
        # Parse, validation and limit errors (depth, aliases, tokens): the query is at fault.
        return "BAD_USER_INPUT"
    if isinstance(original, ParleyError):
        return original.code
    if isinstance(original, GraphQLError):
        return error_code(original)
    if isinstance(original, REQUEST_ERRORS):
        return "BAD_USER_INPUT"
    if is_unavailable(original):
        return "UNAVAILABLE"
    return INTERNAL


def exception_code(error: Exception) -> str:
    """The contract's code for an exception that ended an operation (a client's mistake, or the server's)."""
    return error_code(error if isinstance(error, GraphQLError) else GraphQLError(str(error), original_error=error))


def shape_errors(errors: list[GraphQLError]) -> list[GraphQLError]:
    """The errors a client sees: each with `extensions.code`; unexpected ones and outages masked.

    Applied to every result in `graph/schema.py: ParleySchema`, so queries, mutations,
    subscription events and WebSocket operations are all covered in one place.
    """
    shaped = [_masked(error) for error in errors]
    add_codes(shaped)
    return shaped


def _masked(error: GraphQLError) -> GraphQLError:
    code = error_code(error)
    if code not in {INTERNAL, "UNAVAILABLE"}:
        return error
    message = (
        "Internal server error."
        if code == INTERNAL
        else "A backing service is unavailable; nothing was stored. Try again."
    )
    # A new error with no original: nothing of the cause (SQL, hosts, traceback) reaches the client.
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": code},
    )


def add_codes(errors: list[GraphQLError]) -> None:
    """Sets `extensions.code` where it is missing (parse errors never reach the extension)."""
    for error in errors:
        if not error.extensions or "code" not in error.extensions:
            error.extensions = {**(error.extensions or {}), "code": error_code(error)}


def log_errors(errors: list[GraphQLError]) -> None:
    """Logs unexpected errors with their traceback; expected ones in one line at debug level."""
    add_codes([e for e in errors if e.original_error is None])
    for error in errors:
        code = error_code(error)
        if code == INTERNAL:
            log.error(
                "unexpected error at %s: %s",
                error.path,
                error.message,
                exc_info=error.original_error,
            )
        elif code == "UNAVAILABLE":
            log.warning("backing service unavailable at %s: %r", error.path, error.original_error)
        else:
            log.debug("%s at %s: %s", code, error.path, error.message)
