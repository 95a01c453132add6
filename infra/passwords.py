"""argon2id password hashing (argon2-cffi), run in a worker thread to keep the loop free.

Each hash holds 64 MiB and about 0.1 s of a core, and anyone can ask for one (login and
register need no token): at most `max_concurrent` run at once. A request waits a moment
for a free slot, then gets `RATE_LIMITED` instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from resolvers.errors import RateLimited

T = TypeVar("T")

# How long a request may wait for a free hashing slot: about what a short queue ahead of it takes.
SLOT_WAIT_SECONDS = 1.0


class Argon2Hasher:
    """Hashes with argon2id, `max_concurrent` at a time; `fast=True` lowers the cost for test servers only."""

    def __init__(self, *, fast: bool = False, max_concurrent: int = 4, slot_wait: float = SLOT_WAIT_SECONDS) -> None:
        self._argon = _Argon2(time_cost=1, memory_cost=1024, parallelism=1) if fast else _Argon2()
        # Verified against for unknown usernames, so both failures cost the same time.
        self._dummy = self._argon.hash("parley-dummy-password")
        self._slots = asyncio.Semaphore(max_concurrent)
        self._slot_wait = slot_wait

    async def hash(self, password: str) -> str:
        """A salted argon2id hash of `password`; `RateLimited` when every slot stays busy."""
        return await self._run(self._argon.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; `None` (no such user) costs the same and is False."""
        try:
            matched = await self._run(self._argon.verify, password_hash or self._dummy, password)
            return matched and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _run(self, work: Callable[..., T], *args: str) -> T:
        try:
            async with asyncio.timeout(self._slot_wait):
                await self._slots.acquire()
        except TimeoutError:
            raise RateLimited("The server is busy checking passwords; try again in a moment.") from None
        try:
            thread = asyncio.get_running_loop().run_in_executor(None, functools.partial(work, *args))
        except BaseException:
            self._slots.release()
            raise
        # The slot is freed when the thread finishes, not when the request gives up waiting for
        # it (a cancelled request cannot stop a running hash, which still holds its memory).
        thread.add_done_callback(self._release)
        return await asyncio.shield(thread)

    def _release(self, thread: asyncio.Future[Any]) -> None:
        self._slots.release()
        if not thread.cancelled():
            # Marks a failure as seen when nobody awaits it any more (the request was cancelled).
            thread.exception()
