"""The small interfaces use cases need from infrastructure (implemented in `infra/`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


class Resync(Protocol):
    """A bus notice that the subscriber may have missed messages."""

    @property
    def reason(self) -> str: ...


class Bus(Protocol):
    """Fan-out of small notices between server processes."""

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str | Resync]]: ...

    async def ping(self) -> None: ...


class Presence(Protocol):
    """Last-seen times and the online registry, kept in the cache rather than the database."""

    async def touch(self, user_id: int) -> datetime: ...

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]: ...

    async def online(self, user_ids: Sequence[int]) -> set[int]: ...

    async def connected(self, user_id: int) -> None: ...

    async def disconnected(self, user_id: int) -> None: ...


class RateLimiter(Protocol):
    """Counts events per key in a fixed window."""

    async def hit(self, key: str, *, window_seconds: int) -> int: ...

    async def count(self, key: str) -> int: ...

    async def reset(self, key: str) -> None: ...


class PasswordHasher(Protocol):
    """Slow salted password hashing, off the event loop."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str | None, password: str) -> bool: ...


class Database(Protocol):
    """Sessions on the relational database."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5) -> T: ...

    async def ping(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Input limits the use cases enforce (from settings)."""

    max_group_members: int = 100
    max_body_length: int = 4000
    max_attachments: int = 10
    max_presence_watch: int = 100
    login_max_failures: int = 10
    login_failure_window_seconds: int = 300
    device_inactivity_days: float = 30
    send_rate_per_minute: int = 300


@dataclass(frozen=True)
class Services:
    """Everything a use case may touch, wired once in `infra/app.py`."""

    db: Database
    bus: Bus
    presence: Presence
    rate_limiter: RateLimiter
    passwords: PasswordHasher
    limits: Limits
