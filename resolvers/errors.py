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
    """A backing service (database, broker, file storage) did not answer; nothing was stored."""

    code = "UNAVAILABLE"
