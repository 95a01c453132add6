"""Sending messages: persisted with one inbox entry per recipient, then fanned out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, EventKind, Message, SentKey
from resolvers.accounts import Viewer
from resolvers.conversations import member_ids, membership, touch_activity
from resolvers.errors import BadUserInput, RateLimited
from resolvers.ids import MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.notify import commit_then_publish
from resolvers.ports import Services

log = logging.getLogger("parley.messages")

MAX_CLIENT_ID = 64


@dataclass(frozen=True)
class MessageView:
    """A message as the API shows it."""

    ref: MessageRef
    client_id: str
    body: str | None
    sent_at: datetime

    @classmethod
    def from_row(cls, message: Message) -> MessageView:
        """The view of a stored message."""
        assert message.id is not None
        ref = MessageRef(message.id, message.conversation_id, message.sender_id)
        return cls(ref=ref, client_id=message.client_id, body=message.body, sent_at=message.sent_at)


def _check_input(services: Services, client_id: str, body: str | None, attachment_ids: list[str]) -> str | None:
    if not 1 <= len(client_id) <= MAX_CLIENT_ID or not client_id.isprintable():
        raise BadUserInput(f"clientId is 1 to {MAX_CLIENT_ID} printable characters.")
    limits = services.limits
    if len(attachment_ids) > limits.max_attachments:
        raise BadUserInput(f"A message has at most {limits.max_attachments} attachments.")
    if attachment_ids:
        # File sharing is not built yet: no attachment id can be known.
        raise BadUserInput(f"Unknown attachment: {attachment_ids[0][:64]!r}.")
    if body is not None and len(body) > limits.max_body_length:
        raise BadUserInput(f"A message body is at most {limits.max_body_length} characters.")
    if body is None or not body.strip():
        raise BadUserInput("A message needs a body or an attachment.")
    return body


async def send_message(
    services: Services,
    viewer: Viewer,
    *,
    conversation_id: int,
    client_id: str,
    body: str | None,
    attachment_ids: list[str],
) -> MessageView:
    """Stores a message and its inbox entries in one transaction, then publishes notices.

    Idempotent by (sender, clientId): a retry returns the first message and stores
    nothing, even after that message was delivered and deleted. Returning means
    the message is committed (the SENT moment); a failed publish only delays it.
    """
    text = _check_input(services, client_id, body, attachment_ids)
    await _check_rate(services, viewer)

    async def work(session: AsyncSession) -> tuple[MessageView, list[Appended]]:
        await membership(session, conversation_id, viewer.user_id)
        earlier = await _earlier_send(session, viewer.user_id, client_id, text)
        if earlier is not None:
            return earlier, []
        message = Message(
            conversation_id=conversation_id,
            sender_id=viewer.user_id,
            client_id=client_id,
            body=text,
        )
        session.add(message)
        await session.flush()
        assert message.id is not None
        session.add(
            SentKey(
                sender_id=viewer.user_id,
                client_id=client_id,
                message_id=message.id,
                conversation_id=conversation_id,
                sent_at=message.sent_at,
            )
        )
        await session.flush()
        recipients = await member_ids(session, conversation_id)
        if not await _has_other_devices(session, viewer):
            # Nobody else of the sender's to tell; the sending device already has it.
            recipients = [uid for uid in recipients if uid != viewer.user_id]
        appended = await append_events(session, recipients, EventKind.MESSAGE, message_id=message.id)
        await touch_activity(session, conversation_id, message.sent_at)
        return MessageView.from_row(message), appended

    try:
        view = await commit_then_publish(services, work)
    except IntegrityError:
        # The same clientId raced itself: the other request stored it; answer as it did.
        async with services.db.session() as session:
            earlier = await _earlier_send(session, viewer.user_id, client_id, text)
        if earlier is None:
            raise
        return earlier
    log.info("message %s from user %s in conversation %s", view.ref.message_id, viewer.user_id, conversation_id)
    return view


async def _check_rate(services: Services, viewer: Viewer) -> None:
    limit = services.limits.send_rate_per_minute
    try:
        sent = await services.rate_limiter.hit(f"send:{viewer.user_id}", window_seconds=60)
    except Exception:
        # Fail open: a cache outage must not stop people from chatting.
        log.warning("send rate limit unchecked for user %s", viewer.user_id, exc_info=True)
        return
    if sent > limit:
        raise RateLimited(f"At most {limit} messages a minute; try again shortly.")


async def _earlier_send(session: AsyncSession, sender_id: int, client_id: str, body: str | None) -> MessageView | None:
    key = await session.get(SentKey, (sender_id, client_id))
    if key is None:
        return None
    message = await session.get(Message, key.message_id)
    if message is not None:
        return MessageView.from_row(message)
    # Delivered and deleted since: answer from the idempotency record and the retry's body.
    ref = MessageRef(key.message_id, key.conversation_id, sender_id)
    return MessageView(ref=ref, client_id=client_id, body=body, sent_at=key.sent_at)


async def _has_other_devices(session: AsyncSession, viewer: Viewer) -> bool:
    count = await session.scalar(
        select(func.count()).where(col(Device.user_id) == viewer.user_id, col(Device.id) != viewer.device_id)
    )
    return bool(count)
