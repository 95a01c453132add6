"""Sending messages: persisted with one inbox entry per recipient, then fanned out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from models.columns import utcnow
from resolvers import before_send, encryption, webhooks
from resolvers.accounts import Viewer, get_users
from resolvers.errors import BadUserInput, Conflict, NotFound, Unauthenticated
from resolvers.files import AttachmentView, announce_thumbnail_work, attachments_of, prepare_attachments
from resolvers.ids import MessageRef
from resolvers.mentions import NOT_MEMBERS, check_mentions
from resolvers.moderation import refusal_error
from resolvers.notice_codec import encode_message
from resolvers.publish import publish_entries_best_effort
from resolvers.rate_limits import spend
from resolvers.records import DELETED_DISPLAY_NAME, DELETED_USERNAME, PushJob, SendOutcome, StoredMessage
from resolvers.services import Services

log = logging.getLogger("parley.messages")

MAX_CLIENT_ID = 64
# A queue that does not answer this fast loses the push, not the send's latency.
PUSH_ENQUEUE_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class MessageView:
    """A message as the API shows it, with what it shows of the sender."""

    ref: MessageRef
    client_id: str
    body: str | None
    sent_at: datetime
    sender_username: str
    sender_display_name: str
    attachments: tuple[AttachmentView, ...] = ()
    # The message this one replies to (same conversation), or None.
    reply_to: MessageRef | None = None
    # A disappearing message's end: no device gets it after this time.
    expires_at: datetime | None = None
    # The users the message mentions (ids).
    mentions: tuple[int, ...] = ()
    # An encrypted conversation's message: opaque base64 (resolvers/encryption.py); body is None.
    ciphertext: str | None = None

    @classmethod
    def from_stored(cls, message: StoredMessage) -> MessageView:
        """The view of a stored (or just sent) message."""
        return cls(
            ref=MessageRef(message.id, message.conversation_id, message.sender_id),
            client_id=message.client_id,
            body=message.body,
            sent_at=message.sent_at,
            sender_username=message.sender_username,
            sender_display_name=message.sender_display_name,
            attachments=attachments_of(message.conversation_id, message.attachments),
            reply_to=MessageRef(message.reply_to_id, message.conversation_id, message.reply_to_sender_id)
            if message.reply_to_id is not None and message.reply_to_sender_id is not None
            else None,
            expires_at=message.expires_at,
            mentions=message.mentions,
            ciphertext=message.ciphertext,
        )


def check_body(services: Services, body: str) -> str:
    """A new body for an edit, by the rules of sending: not blank, at most the maximum length."""
    if len(body) > services.limits.max_body_length:
        raise BadUserInput(f"A message body is at most {services.limits.max_body_length} characters.")
    if not body.strip():
        raise BadUserInput("An edited message needs a body.")
    return body


def _check_input(
    services: Services, client_id: str, body: str | None, attachment_ids: list[str], ciphertext: str | None = None
) -> str | None:
    if not 1 <= len(client_id) <= MAX_CLIENT_ID or not client_id.isprintable():
        raise BadUserInput(f"clientId is 1 to {MAX_CLIENT_ID} printable characters.")
    limits = services.limits
    if len(attachment_ids) > limits.max_attachments:
        raise BadUserInput(f"A message has at most {limits.max_attachments} attachments.")
    if body is not None and len(body) > limits.max_body_length:
        raise BadUserInput(f"A message body is at most {limits.max_body_length} characters.")
    if body is not None and not body.strip():
        body = None
    if ciphertext is not None:
        encryption.check_ciphertext(services, ciphertext)
    elif body is None and not attachment_ids:
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
    reply_to: MessageRef | None = None,
    mentions: Sequence[int] = (),
    ciphertext: str | None = None,
) -> MessageView:
    """Stores a message and its inbox entries in one transaction, then publishes them.

    Idempotent by (sender, clientId): a retry returns the first message and stores
    nothing, even after that message was delivered and deleted, and announces its
    pending entries again (the first attempt's notices may be what was lost). A
    clientId already used in another conversation is a `Conflict`. Returning means
    the message is committed (the SENT moment); a failed publish only delays it.
    A device logged out meanwhile is `Unauthenticated`: nothing is stored. `mentions` must name
    members (resolvers/mentions.py), else `BadUserInput` and nothing is stored. An encrypted
    conversation takes `ciphertext` and no body, a plaintext one no ciphertext (resolvers/encryption.py).
    """
    started = time.perf_counter()
    text = _check_input(services, client_id, body, attachment_ids, ciphertext)
    named = check_mentions(services, viewer, mentions)
    if reply_to is not None and reply_to.conversation_id != conversation_id:
        raise BadUserInput("replyToId names a message of another conversation.")
    claim = None
    hook = services.before_send  # None: the hook costs a send nothing but this
    if attachment_ids or hook is not None:
        # A retry must find its first send before the uploads (attached by then) are checked,
        # and before the hook is asked again about a message it already let through.
        if await services.inbox_store.earlier_send(viewer.user_id, client_id) is not None:
            return await _earlier_send(services, viewer, conversation_id, client_id, text, ciphertext=ciphertext)
        if attachment_ids:
            claim = await prepare_attachments(services, viewer, attachment_ids)
    await check_send_rate(services, viewer)
    if hook is not None and ciphertext is None:  # ciphertext: nothing the hook could judge, so it is not asked
        await _refuse_if_encrypted(services, conversation_id)
        text = await before_send.screen(
            services,
            hook,
            viewer,
            conversation_id=conversation_id,
            client_id=client_id,
            body=text,
            mentions=named,
            attachment_count=len(attachment_ids),
            reply_to=reply_to,
        )
    sent_at = utcnow()
    outcome = await services.inbox_store.send(
        sender_id=viewer.user_id,
        device_id=viewer.device_id,
        conversation_id=conversation_id,
        client_id=client_id,
        body=text,
        sent_at=sent_at,
        attachments=claim,
        reply_to=(reply_to.message_id, reply_to.sender_id) if reply_to is not None else None,
        mentions=named,
        ciphertext=ciphertext,
    )
    if not outcome.device_known:
        raise Unauthenticated("This device has logged out.")
    if not outcome.is_member:
        raise NotFound("No such conversation.")
    if outcome.message is None:
        return await _not_stored(
            services,
            viewer,
            outcome,
            conversation_id=conversation_id,
            client_id=client_id,
            body=text,
            now=sent_at,
            ciphertext=ciphertext,
        )
    committed = time.perf_counter()
    services.telemetry.send_committed(committed - started)

    # The notice carries the message itself: streams expecting it yield it without a read.
    # The push job is queued at the same time: its round trip overlaps the publish's.
    # A webhook is queued alongside too, only when an endpoint is configured (one flag read otherwise).
    after = [_publish_notices(services, outcome.appended, outcome.message, committed)]
    if outcome.may_push and any(uid != viewer.user_id for uid, _seq in outcome.appended):
        after.append(_queue_push(services, outcome.message))
    if webhooks.enabled(services):
        after.append(_emit_sent(services, outcome.message))
    await (asyncio.gather(*after) if len(after) > 1 else after[0])
    if outcome.newly_engaged:
        # Watchers who could not see the sender until this first message read again.
        await services.presence.reveal([viewer.user_id])
    log.debug("message %s from user %s in conversation %s", outcome.message.id, viewer.user_id, conversation_id)
    view = MessageView.from_stored(outcome.message)
    if any(attachment.previewable for attachment in view.attachments):
        await announce_thumbnail_work(services)
    return view


async def _refuse_if_encrypted(services: Services, conversation_id: int) -> None:
    """Refuses a body for an encrypted conversation before the hook could see it (the store would refuse it after)."""
    if await encryption.is_encrypted(services, conversation_id):
        raise encryption.refusal_error(encryption.NEEDS_CIPHERTEXT)


async def _not_stored(
    services: Services,
    viewer: Viewer,
    outcome: SendOutcome,
    *,
    conversation_id: int,
    client_id: str,
    body: str | None,
    now: datetime,
    ciphertext: str | None = None,
) -> MessageView:
    """A send that stored nothing: a retry gets its first message; otherwise the refusal's error."""
    refused = outcome.refusal is not None or not outcome.attachments_ok or not outcome.mentions_ok
    # A retry of a message stored before (a mute or slow mode began since, its uploads are attached) gets it.
    if not refused or await services.inbox_store.earlier_send(viewer.user_id, client_id) is not None:
        return await _earlier_send(services, viewer, conversation_id, client_id, body, ciphertext=ciphertext)
    if outcome.refusal is not None and outcome.refusal in encryption.REFUSALS:
        raise encryption.refusal_error(outcome.refusal)
    if outcome.refusal is not None:
        raise refusal_error(outcome.refusal, outcome.refused_until, now)
    if not outcome.attachments_ok:
        raise BadUserInput("An attachment is not yours, not uploaded and checked, or already in a message.")
    raise BadUserInput(NOT_MEMBERS)


async def _publish_notices(
    services: Services, appended: list[tuple[int, int]], message: StoredMessage, committed: float
) -> None:
    """Publishes a committed message's entry notices (best effort), timing commit → publish."""
    await publish_entries_best_effort(services, [(uid, seq, 0) for uid, seq in appended], [encode_message(message)])
    services.telemetry.notices_published(time.perf_counter() - committed)


async def _emit_sent(services: Services, message: StoredMessage) -> None:
    """The `message.sent` webhook of a committed message (resolvers/webhooks.py; never fails the send)."""
    ref = MessageRef(message.id, message.conversation_id, message.sender_id)
    payload = webhooks.message_payload(
        ref,
        mentions=message.mentions,
        attachment_count=len(message.attachments or ()),
        body=message.body,
        sent_at=message.sent_at.isoformat(),
    )
    await webhooks.emit(services, "message.sent", payload)


async def _queue_push(services: Services, message: StoredMessage) -> None:
    """One push job per message, after the commit; best effort, never failing the send.

    Only when the store saw a recipient with a push registration who has not muted the
    conversation (`may_push`, from the send's own statement). One job per message rather
    than per recipient: the send path pays one queue write (shared with concurrent sends
    through RedisBatch) whatever the group's size, and the worker filters online and
    already-delivered recipients when it runs, which is also closer to when the
    notification would show.
    """
    if services.push_queue is None:
        return
    job = PushJob(
        message_id=message.id,
        conversation_id=message.conversation_id,
        sender_id=message.sender_id,
        sender_display_name=message.sender_display_name,
        sent_at=message.sent_at.timestamp(),
    )
    try:
        async with asyncio.timeout(PUSH_ENQUEUE_TIMEOUT_SECONDS):  # no task per call, unlike wait_for
            await services.push_queue.enqueue(job)
    except Exception:  # the message is committed and fanned out; only its push is lost
        log.warning("push job for message %s not queued", message.id, exc_info=True)


async def check_send_rate(services: Services, viewer: Viewer) -> None:
    """Spends one from the sender's message budget (sends, edits, deletes and reactions share it)."""
    limit = services.limits.send_rate_per_minute
    await spend(
        services,
        f"send:{viewer.user_id}",
        limit=limit,
        window_seconds=60,
        refusal=f"At most {limit} messages a minute; try again shortly.",
    )


async def _earlier_send(
    services: Services,
    viewer: Viewer,
    conversation_id: int,
    client_id: str,
    body: str | None,
    *,
    ciphertext: str | None = None,
) -> MessageView:
    earlier = await services.inbox_store.earlier_send(viewer.user_id, client_id)
    if earlier is None:  # cannot happen: the store found the key a moment ago, and keys outlive retries
        raise RuntimeError(f"idempotency key of user {viewer.user_id} vanished")
    if earlier.conversation_id != conversation_id:
        raise Conflict("This clientId was already used for a message in another conversation.")
    if earlier.message is not None:
        # Announce again what is still pending: streams skip positions they have seen.
        await publish_entries_best_effort(
            services, [(uid, seq, 0) for uid, seq in earlier.appended], [encode_message(earlier.message)]
        )
        return MessageView.from_stored(earlier.message)
    # Delivered and deleted since: answer from the idempotency record and the retry's body.
    ref = MessageRef(earlier.message_id, earlier.conversation_id, viewer.user_id)
    user = (await get_users(services, [viewer.user_id])).get(viewer.user_id)
    return MessageView(
        ref=ref,
        client_id=client_id,
        body=body,
        ciphertext=ciphertext,
        sent_at=earlier.sent_at,
        sender_username=user.username if user else DELETED_USERNAME,
        sender_display_name=user.display_name if user else DELETED_DISPLAY_NAME,
    )
