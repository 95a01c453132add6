"""argon2id password hashing (argon2-cffi), run in a worker thread to keep the loop free."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Argon2Hasher:
    """Hashes with argon2id; `fast=True` lowers the cost for test servers only."""

    def __init__(self, *, fast: bool = False) -> None:
        self._argon = _Argon2(time_cost=1, memory_cost=1024, parallelism=1) if fast else _Argon2()
        # Verified against for unknown usernames, so both failures cost the same time.
        self._dummy = self._argon.hash("parley-dummy-password")

    async def hash(self, password: str) -> str:
        """A salted argon2id hash of `password`."""
        return await asyncio.to_thread(self._argon.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; `None` (no such user) costs the same and is False."""
        try:
            matched = await asyncio.to_thread(self._argon.verify, password_hash or self._dummy, password)
            return matched and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
