"""Accounts for the load: users, their inbox heads and one device each, inserted straight into the database.

Registering through the API costs an argon2 hash (~0.1 s of CPU) per user: far
too slow for 10,000 devices. The rows are built from the SQLModel tables, as
`register` would write them, and each device's token is stored as its SHA-256
like `resolvers.accounts.hash_token` does; the password hash is never checked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import create_async_engine

from models import Device, InboxHead, User

_BATCH = 2000
# Any string: nobody logs in with a password during a benchmark.
_PASSWORD_HASH = "$bench$no-login"


@dataclass(frozen=True)
class Account:
    """A user with one logged-in device: its GraphQL user id and bearer token."""

    user_id: str
    token: str


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


async def seed_accounts(database_url: str, label: str, count: int) -> list[Account]:
    """Creates `count` users named `<label><n>`, each with an inbox head and one device."""
    users, heads, devices = _table(User), _table(InboxHead), _table(Device)
    accounts: list[Account] = []
    engine = create_async_engine(database_url)
    try:
        for start in range(0, count, _BATCH):
            names = [f"{label}{n}" for n in range(start, min(count, start + _BATCH))]
            tokens = [secrets.token_urlsafe(32) for _ in names]
            async with engine.begin() as connection:
                rows = await connection.execute(
                    insert(users).returning(users.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "username": name,
                            "display_name": name,
                            "display_name_key": name,
                            "password_hash": _PASSWORD_HASH,
                        }
                        for name in names
                    ],
                )
                ids = [int(row[0]) for row in rows]
                await connection.execute(insert(heads), [{"user_id": user_id, "last_seq": 0} for user_id in ids])
                await connection.execute(
                    insert(devices),
                    [
                        {"user_id": user_id, "name": "bench", "token_hash": hashlib.sha256(token.encode()).hexdigest()}
                        for user_id, token in zip(ids, tokens, strict=True)
                    ],
                )
            accounts.extend(Account(str(user_id), token) for user_id, token in zip(ids, tokens, strict=True))
    finally:
        await engine.dispose()
    return accounts
