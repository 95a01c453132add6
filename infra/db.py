"""The database: one async engine per process, sessions, and retry of lock conflicts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from infra.database_url import sqlalchemy_url
from infra.outages import READ_ONLY_SQLSTATE, outage_boundary
from resolvers.after_commit import AFTER_COMMIT
from resolvers.errors import Unavailable

log = logging.getLogger("parley.db")

T = TypeVar("T")

# PostgreSQL's deadlock_detected and serialization_failure: safe to run the transaction again.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def create_engine(
    url: str,
    *,
    echo: bool = False,
    pool_timeout: float = 30.0,
    connect_timeout: float = 60.0,
    pool_size: int = 10,
    max_overflow: int = 20,
) -> AsyncEngine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout.

    `hide_parameters`: errors (which are logged) must not carry message bodies, password
    hashes or token hashes, only the statement. On PostgreSQL an operation waits at most
    `pool_timeout` seconds for a pooled connection and `connect_timeout` for a new one, so
    that while the database is down it answers UNAVAILABLE quickly instead of after
    SQLAlchemy's 30 s and asyncpg's 60 s defaults.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # No pool_pre_ping: it costs a round trip per checkout. A connection whose server closed it
    # is replaced at checkout (`_closed_is_stale`); one that breaks in use invalidates the whole
    # pool, and `transaction` runs again.
    engine = create_async_engine(
        sqlalchemy_url(url),
        echo=echo,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        hide_parameters=True,
        pool_timeout=pool_timeout,
        connect_args={"timeout": connect_timeout},
    )
    event.listen(engine.sync_engine, "handle_error", _read_only_is_a_disconnect)
    event.listen(engine.sync_engine.pool, "checkout", _closed_is_stale)
    return engine


def _closed_is_stale(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection its server already closed (a stopped or failed-over primary) is replaced before use.

    asyncpg knows without a round trip, as its own pool does; the pool then opens a new one,
    which finds the writable server, instead of failing the request that drew the dead one.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError()


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """A server that refuses writes (a demoted primary, a standby) is left like a dropped one.

    Marked a disconnect, the error invalidates the pool, so every pooled connection to that
    server is replaced; new ones go to the writable server (`target_session_attrs`), and
    `Database.transaction` runs the work again, since nothing was written.
    """
    if _sqlstate_of(context.original_exception) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


class CommitOutcomeUnknown(Unavailable):
    """The connection dropped while COMMIT was in flight: the change may or may not be stored."""

    def __init__(self) -> None:
        super().__init__(
            "The database connection was lost while saving; the change may have been stored. Check before trying again.",
            shown=True,
        )


AfterCommit = Callable[[AsyncSession], Awaitable[object]]


def _sqlstate(error: DBAPIError) -> str | None:
    return _sqlstate_of(error.orig)


def _sqlstate_of(error: BaseException | None) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


_DATABASE = "The database"


class Database:
    """Hands out sessions; `transaction` retries what surely did not commit, so callers need not.

    Every method raises a database outage as `Unavailable` (infra/outages.py), whichever driver reported it.
    """

    def __init__(self, engine: AsyncEngine, *, session_class: type[AsyncSession] = AsyncSession) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=session_class, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads, or for writes the caller commits itself."""
        async with outage_boundary(_DATABASE), self._sessions() as session:
            yield session

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5) -> T:
        """Runs `work` in one transaction and commits; reruns it only when nothing can have been stored.

        Deadlocks and serialization failures roll back for sure, and so does a connection lost
        before COMMIT was sent: those run `work` again. A connection lost during COMMIT leaves the
        outcome unknown; running `work` again could do it twice (a second group, NOT_FOUND for a
        removal that happened), so that raises `CommitOutcomeUnknown` instead.
        """
        async with outage_boundary(_DATABASE):
            return await self._transaction(work, attempts)

    async def _transaction(self, work: Callable[[AsyncSession], Awaitable[T]], attempts: int) -> T:
        for attempt in range(1, attempts + 1):
            async with self._sessions() as session:
                try:
                    result = await work(session)
                except DBAPIError as error:
                    with contextlib.suppress(Exception):
                        await session.rollback()
                    retryable = _sqlstate(error) in _RETRYABLE_SQLSTATES or error.connection_invalidated
                    if not retryable or attempt == attempts:
                        raise
                    continue
                try:
                    await session.commit()
                except DBAPIError as error:
                    with contextlib.suppress(Exception):
                        await session.rollback()
                    if _sqlstate(error) in _RETRYABLE_SQLSTATES and attempt < attempts:
                        continue  # the server refused the COMMIT: it rolled back
                    if error.connection_invalidated:
                        raise CommitOutcomeUnknown() from error
                    raise
                hooks: list[AfterCommit] = session.info.pop(AFTER_COMMIT, [])
            for hook in hooks:
                try:
                    await self.transaction(hook)
                except Exception:
                    # Best effort: the periodic sweep finds what this leaves behind.
                    log.warning("after-commit work failed", exc_info=True)
            return result
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raises `Unavailable` if the database does not answer."""
        async with outage_boundary(_DATABASE), self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()
