"""Work that runs after a SQLAlchemy transaction has committed, in a transaction of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

AFTER_COMMIT = "parley_after_commit"


def after_commit(session: AsyncSession, work: Callable[[AsyncSession], Awaitable[object]]) -> None:
    """Has `Database.transaction` run `work` in a transaction of its own once this one has committed.

    For checks that must see every concurrent commit, such as "is this message still referenced":
    inside the transaction, two of them would each still see the other's uncommitted deletions.
    """
    session.info.setdefault(AFTER_COMMIT, []).append(work)
