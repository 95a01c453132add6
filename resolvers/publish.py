"""Publishing after commit: entry notices for the inbox entries a transaction appended, and signals.

An entry notice says "your inbox has grown to position N" and, on the hot path,
carries the entry's event itself (a message or a receipt, encoded by
`resolvers/notice_codec.py`) so a stream that expects position N yields it without
reading the database. The database stays the truth: a lost notice (broker down,
process killed between commit and publish) delays an event until the next replay,
and never loses it. Signals (typing, revocation) are best effort and never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.inbox import Appended
from resolvers.notice_codec import device_marker
from resolvers.services import Services
from resolvers.webhooks import Payload, emit_many, take_staged

log = logging.getLogger("parley.publish")

T = TypeVar("T")


async def commit_then_publish(
    services: Services, work: Callable[[AsyncSession], Awaitable[tuple[T, list[Appended]]]]
) -> T:
    """Runs `work` in one transaction, then publishes entry notices for the entries it appended.

    The order is the delivery guarantee: nothing is announced that is not committed. Webhook
    events `work` staged (resolvers/webhooks.py) are emitted then too, those of its last run only.
    """
    staged: list[tuple[str, Payload]] = []

    async def run(session: AsyncSession) -> tuple[T, list[Appended]]:
        outcome = await work(session)
        staged[:] = take_staged(session)
        return outcome

    result, appended = await services.db.transaction(run)
    await publish_appended(services, appended)
    if staged:
        await emit_many(services, staged)
    return result


async def publish_appended(services: Services, appended: Sequence[Appended]) -> None:
    """Publishes notices of committed entries without their events; one for a single device names it.

    Naming the device lets the user's other streams pass that position without reading the database.
    """
    events: list[Mapping[str, Any] | None] = [None]
    index_of: dict[int, int] = {}
    rows: list[tuple[int, int, int]] = []
    for entry in appended:
        index = 0
        if entry.device_id is not None:
            index = index_of.setdefault(entry.device_id, len(events))
            if index == len(events):
                events.append(device_marker(entry.device_id))
        rows.append((entry.user_id, entry.seq, index))
    await publish_entries_best_effort(services, rows, events)


async def publish_entries_best_effort(
    services: Services, entries: Sequence[tuple[int, int, int]], events: Sequence[Mapping[str, Any] | None]
) -> None:
    """Publishes entry notices of committed entries `(user, seq, index into events)`; logs instead of raising."""
    if not entries:
        return
    try:
        await services.fanout.publish_entries(entries, events)
    except Exception:
        log.warning("publish of %d notices failed; streams catch up on replay", len(entries), exc_info=True)


async def publish_signal_best_effort(services: Services, user_ids: Iterable[int], data: dict[str, Any]) -> None:
    """Publishes a signal (typing, revocation) to these users' streams; logs instead of raising."""
    users = list(user_ids)
    if not users:
        return
    try:
        await services.fanout.publish_signal(users, data)
    except Exception:
        log.warning("publish of a signal to %d users failed", len(users), exc_info=True)
