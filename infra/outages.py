"""Which driver errors mean a backing service is down, and the boundary that turns them into `Unavailable`.

Adapters wrap their calls in `outage_boundary`, so what leaves `infra/` for a resolver or for
graph/ is the ports' one `resolvers.errors.Unavailable`, never a SQLAlchemy, asyncpg or redis-py
class: graph/ maps error codes and knows no driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from asyncpg.exceptions import TargetServerAttributeNotMatched
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from resolvers.errors import ParleyError, Unavailable

# read_only_sql_transaction: a write reached a standby or a demoted (or fenced) primary, as
# during a failover; the adapters drop such connections and the next ones find the new primary.
READ_ONLY_SQLSTATE = "25006"
# PostgreSQL refusing because it is shutting down, crashed, starting up (57P01-57P03: the
# "starting up" window right after a restart, also a standby not yet accepting connections),
# full (53300) or read-only; and class 08, connection exceptions.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", READ_ONLY_SQLSTATE})


def is_outage(error: BaseException | None) -> bool:
    """True when `error`, or what it wraps or was raised from, says a database or Redis did not answer or refused."""
    return error is not None and any(_service_down(cause) for cause in _causes(error))


@asynccontextmanager
async def outage_boundary(service: str) -> AsyncIterator[None]:
    """Raises an outage inside it as `Unavailable` (from the original); anything else passes unchanged.

    An async context manager, and a decorator of coroutine methods: `@outage_boundary("Redis")`.
    """
    try:
        yield
    except ParleyError:
        raise  # already in the ports' terms (and CommitOutcomeUnknown must keep its own message)
    except Exception as error:
        if not is_outage(error):
            raise
        raise Unavailable(f"{service} is unavailable ({type(error).__name__}: {error})") from error


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


def _service_down(error: BaseException) -> bool:
    # SQLAlchemy's pool timeout and disconnect errors (it wraps asyncpg's InterfaceError, a
    # closed connection, as its own; SQLite's "database is locked" is an OperationalError too).
    if isinstance(error, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # Every server of a multi-host URL is down or none is writable (a standby not yet promoted).
    if isinstance(error, TargetServerAttributeNotMatched):
        return True
    # By SQLSTATE, raw asyncpg errors or wrapped ones: one rule for both drivers.
    state = _sqlstate(error)
    if state is not None and (state.startswith("08") or state in _UNAVAILABLE_SQLSTATES):
        return True
    # A refused or timed-out socket (either driver, or Redis), and every redis-py error: Redis
    # is a cache and a broker here, so any failure of it is an outage to the caller.
    return isinstance(error, (ConnectionError, TimeoutError, OSError)) or type(error).__module__.startswith("redis.")
