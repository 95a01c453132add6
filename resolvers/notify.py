"""Live notices after commit: one small publish per recipient user, batched.

A notice only says "your inbox has grown to position N"; the subscriber reads the
events themselves from the database. So a lost notice (broker down, process
killed between commit and publish) delays delivery until the next replay, and
never loses an event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.inbox import Appended
from resolvers.ports import Services

log = logging.getLogger("parley.notify")

T = TypeVar("T")


def user_channel(user_id: int) -> str:
    """The bus channel that reaches every connection of one user."""
    return f"user:{user_id}"


def inbox_notice(seq: int) -> str:
    """A notice that a user's inbox has grown to `seq`."""
    return json.dumps({"seq": seq})


def logout_notice(device_id: int) -> str:
    """A notice that a device logged out: its streams end."""
    return json.dumps({"logout": device_id})


def ephemeral_notice(event: dict[str, Any]) -> str:
    """A notice that carries a best-effort event (typing) itself."""
    return json.dumps({"ephemeral": event})


async def commit_then_publish(
    services: Services, work: Callable[[AsyncSession], Awaitable[tuple[T, list[Appended]]]]
) -> T:
    """Runs `work` in one transaction, then publishes notices for the entries it appended.

    The order is the delivery guarantee: nothing is announced that is not committed.
    """
    result, appended = await services.db.transaction(work)
    await publish_appended(services, appended)
    return result


async def publish_appended(services: Services, appended: Iterable[Appended]) -> None:
    """Publishes one notice per user for entries already committed; never raises."""
    newest: dict[int, int] = {}
    for entry in appended:
        newest[entry.user_id] = max(entry.seq, newest.get(entry.user_id, 0))
    if not newest:
        return
    items = [(user_channel(uid), inbox_notice(seq)) for uid, seq in newest.items()]
    await publish_best_effort(services, items)


async def publish_best_effort(services: Services, items: list[tuple[str, str]]) -> None:
    """Publishes, logging instead of raising: what matters is already committed or ephemeral."""
    try:
        await services.bus.publish_many(items)
    except Exception:
        log.warning(
            "publish of %d notices failed; subscribers catch up on replay",
            len(items),
            exc_info=True,
        )
