"""Error shaping: every error gets `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging

from graphql import GraphQLError
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from resolvers.errors import ParleyError, Unavailable

log = logging.getLogger("parley.errors")

INTERNAL = "INTERNAL_SERVER_ERROR"
UNAVAILABLE = Unavailable.code
# What a client is told of an outage: the adapter's message names hosts and driver errors.
UNAVAILABLE_MESSAGE = "A backing service is unavailable; nothing was stored. Try again."

# What strawberry raises for a request it cannot run as sent: no query, no such operation, or
# an operation type the transport does not carry (a mutation over GET, a subscription as JSON).
REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def _raised_from_unavailable(error: BaseException | None) -> bool:
    """True when `error` was raised from the `Unavailable` of an adapter (infra/outages.py), however indirectly."""
    seen: set[int] = set()
    # Only `raise … from`: an implicit __context__ may be an outage handled earlier.
    while error is not None and id(error) not in seen and len(seen) < 8:
        if isinstance(error, Unavailable):
            return True
        seen.add(id(error))
        error = error.__cause__
    return False


def error_code(error: GraphQLError) -> str:
    """The contract's code for an error: a ParleyError's own, INTERNAL_SERVER_ERROR for anything unexpected."""
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
    if _raised_from_unavailable(original.__cause__):
        return UNAVAILABLE
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
    if code not in {INTERNAL, UNAVAILABLE}:
        return error
    if isinstance(error.original_error, Unavailable) and error.original_error.shown:
        return error  # written for the client (e.g. "the change may have been stored")
    message = "Internal server error." if code == INTERNAL else UNAVAILABLE_MESSAGE
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
        elif code == UNAVAILABLE:
            log.warning("backing service unavailable at %s: %r", error.path, error.original_error)
        else:
            log.debug("%s at %s: %s", code, error.path, error.message)
