"""The database: one async engine per process, sessions, and retry of lock conflicts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

T = TypeVar("T")

# PostgreSQL's deadlock_detected and serialization_failure: safe to run the transaction again.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    # No pool_pre_ping: it costs a round trip per checkout. After a database restart the
    # first failing statement invalidates the whole pool, and `transaction` runs again.
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=20, pool_recycle=1800)


class Database:
    """Hands out sessions; `transaction` retries deadlocks and dropped connections so callers need not."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for reads, or for writes the caller commits itself."""
        async with self._sessions() as session:
            yield session

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5) -> T:
        """Runs `work` in one transaction and commits; reruns it on a deadlock or a dropped connection."""
        for attempt in range(1, attempts + 1):
            async with self._sessions() as session:
                try:
                    result = await work(session)
                    await session.commit()
                    return result
                except DBAPIError as error:
                    await session.rollback()
                    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
                    retryable = code in _RETRYABLE_SQLSTATES or error.connection_invalidated
                    if not retryable or attempt == attempts:
                        raise
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raises if the database does not answer."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()
