"""Live notices after commit: each inbox entry announced to its user's streams, batched.

A notice says "your inbox has grown to position N" and, on the hot path, carries
the entry itself (a message or a receipt) so a stream that expects position N
yields it without reading the database. The database stays the truth: a lost
notice (broker down, process killed between commit and publish) delays delivery
until the next replay, and never loses an event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from resolvers.inbox import Appended
from resolvers.ports import Services, StoredMessage

log = logging.getLogger("parley.notify")

T = TypeVar("T")

MESSAGE_KIND = "M"
RECEIPT_KIND = "R"


def message_wire(message: StoredMessage) -> dict[str, Any]:
    """A message as a notice carries it (read back by `resolvers.events._render_wire`)."""
    return {
        "k": MESSAGE_KIND,
        "id": message.id,
        "c": message.conversation_id,
        "s": message.sender_id,
        "su": message.sender_username,
        "sd": message.sender_display_name,
        "ci": message.client_id,
        "b": message.body,
        "t": message.sent_at.isoformat(),
        "a": message.attachments,
        "r": message.reply_to_id,
        "rs": message.reply_to_sender_id,
    }


def receipt_wire(payload: str) -> dict[str, Any]:
    """A receipt as a notice carries it: its stored payload."""
    data: dict[str, Any] = json.loads(payload)
    return {"k": RECEIPT_KIND, "p": data}


async def commit_then_publish(
    services: Services, work: Callable[[AsyncSession], Awaitable[tuple[T, list[Appended]]]]
) -> T:
    """Runs `work` in one transaction, then announces the entries it appended.

    The order is the delivery guarantee: nothing is announced that is not committed.
    """
    result, appended = await services.db.transaction(work)
    await deliver_best_effort(services, [(entry.user_id, entry.seq, 0) for entry in appended], [None])
    return result


async def deliver_best_effort(
    services: Services, entries: Sequence[tuple[int, int, int]], events: Sequence[dict[str, Any] | None]
) -> None:
    """Announces committed entries `(user, seq, index into events)`; logs instead of raising."""
    if not entries:
        return
    try:
        await services.fanout.deliver(entries, events)
    except Exception:
        log.warning("publish of %d notices failed; streams catch up on replay", len(entries), exc_info=True)


async def notify_best_effort(services: Services, user_ids: Iterable[int], data: dict[str, Any]) -> None:
    """Sends a best-effort notice (typing, logout) to these users' streams; logs instead of raising."""
    users = list(user_ids)
    if not users:
        return
    try:
        await services.fanout.notify(users, data)
    except Exception:
        log.warning("publish of a notice to %d users failed", len(users), exc_info=True)
