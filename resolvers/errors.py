"""Failures a client can act on; each carries the `extensions.code` the contract names."""

from __future__ import annotations


class ParleyError(Exception):
    """Base of the errors shown to clients as they are; anything else is masked."""

    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthenticated(ParleyError):
    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "A valid bearer token is required.") -> None:
        super().__init__(message)


class Forbidden(ParleyError):
    code = "FORBIDDEN"


class NotFound(ParleyError):
    code = "NOT_FOUND"


class BadUserInput(ParleyError):
    code = "BAD_USER_INPUT"


class Conflict(ParleyError):
    code = "CONFLICT"


class RateLimited(ParleyError):
    code = "RATE_LIMITED"


class Unavailable(ParleyError):
    """A backing service (database, broker, file storage) did not answer; nothing was stored.

    Clients see one generic message unless `shown`: adapters put driver details in theirs,
    while a resolver's own message (written for the client) may be shown as it is.
    """

    code = "UNAVAILABLE"

    def __init__(self, message: str, *, shown: bool = False) -> None:
        super().__init__(message)
        self.shown = shown
