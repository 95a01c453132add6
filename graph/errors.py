"""Error shaping: every error gets `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging

from graphql import GraphQLError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from resolvers.errors import ParleyError

log = logging.getLogger("parley.errors")

INTERNAL = "INTERNAL_SERVER_ERROR"


def _unavailable(error: BaseException | None) -> bool:
    """A backing service that did not answer (database or Redis down)."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    name = type(error).__module__ if error else ""
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or name.startswith("redis.")


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
    if _unavailable(original):
        return "UNAVAILABLE"
    return INTERNAL


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
