"""Push channels: registering them, checking untrusted WebPush endpoints, and what a push job notifies.

A WebPush endpoint comes from a client and the worker POSTs to it: it passes the
checks of `resolvers/outbound.py` (no private addresses outside development) at
registration and again before each send, and the sender connects to the address
that was checked.
"""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import InboxEntry, Member, Mention, Message, PushPlatform, PushRegistration, SentKey, User
from resolvers.accounts import Viewer
from resolvers.batches import chunks
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.outbound import MAX_URL, check_url
from resolvers.rate_limits import spend
from resolvers.records import PushJob
from resolvers.services import Services

MAX_ENDPOINT = MAX_URL
MAX_TOKEN = 4096
_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_:.")


def _b64url(value: str, *, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadUserInput(f"{what} is not base64url.") from None


async def check_endpoint(url: str, *, allow_private: bool) -> list[str]:
    """The addresses a WebPush endpoint resolves to; `BadUserInput` if it may not be used (`check_url`)."""
    return await check_url(url, allow_private=allow_private, what="endpoint")


def _check_token(token: str | None, platform: PushPlatform) -> str:
    if not token or len(token) > MAX_TOKEN or not set(token) <= _TOKEN_CHARACTERS:
        raise BadUserInput(f"{platform.value} needs a token (at most {MAX_TOKEN} letters, digits, -, _, : or .).")
    if platform is PushPlatform.APNS and not all(c in string.hexdigits for c in token):
        raise BadUserInput("An APNs device token is hexadecimal.")
    return token


async def _registration(
    services: Services, viewer: Viewer, platform: PushPlatform, **fields: str | None
) -> PushRegistration:
    token, endpoint, p256dh, auth = (fields.get(name) for name in ("token", "endpoint", "p256dh", "auth"))
    if platform is not PushPlatform.WEBPUSH:
        if endpoint or p256dh or auth:
            raise BadUserInput(f"{platform.value} takes a token, not a WebPush subscription.")
        return PushRegistration(
            device_id=viewer.device_id, user_id=viewer.user_id, platform=platform, token=_check_token(token, platform)
        )
    if token:
        raise BadUserInput("WEBPUSH takes endpoint, p256dh and auth, not a token.")
    if not endpoint or not p256dh or not auth:
        raise BadUserInput("WEBPUSH needs endpoint, p256dh and auth.")
    key = _b64url(p256dh[:128], what="p256dh")
    if len(p256dh) > 128 or len(key) != 65 or key[0] != 4:
        raise BadUserInput("p256dh is an uncompressed P-256 public key (65 bytes, base64url).")
    if len(auth) > 64 or len(_b64url(auth[:64], what="auth")) != 16:
        raise BadUserInput("auth is a 16-byte secret (base64url).")
    await check_endpoint(endpoint, allow_private=services.push.allow_private_endpoints)
    return PushRegistration(
        device_id=viewer.device_id,
        user_id=viewer.user_id,
        platform=platform,
        endpoint=endpoint,
        p256dh=p256dh,
        auth=auth,
    )


async def register_push(
    services: Services,
    viewer: Viewer,
    *,
    platform: PushPlatform,
    token: str | None,
    endpoint: str | None,
    p256dh: str | None,
    auth: str | None,
) -> bool:
    """Binds a push channel to the viewer's device, replacing the device's previous one.

    Validated first (a WebPush endpoint must pass `check_endpoint`); the registration
    is deleted with the device (revocation, logout, expiry). Rate-limited per user,
    before anything is looked up.
    """
    await spend(
        services,
        f"push-registrations:{viewer.user_id}",
        limit=services.limits.push_registrations_per_hour,
        window_seconds=3600,
        refusal="Too many push registrations in the last hour; try again later.",
    )
    registration = await _registration(
        services, viewer, platform, token=token, endpoint=endpoint, p256dh=p256dh, auth=auth
    )

    async def store(session: AsyncSession) -> None:
        await session.execute(delete(PushRegistration).where(col(PushRegistration.device_id) == viewer.device_id))
        session.add(registration)
        await session.flush()

    try:
        await services.db.transaction(store)
    except IntegrityError:  # the device was deleted meanwhile (logged out, revoked)
        raise Unauthenticated("This device has logged out.") from None
    return True


async def unregister_push(services: Services, viewer: Viewer) -> bool:
    """Removes the viewer's device's push channel; True whether or not there was one (idempotent)."""
    async with services.db.session() as session:
        await session.execute(delete(PushRegistration).where(col(PushRegistration.device_id) == viewer.device_id))
        await session.commit()
    return True


async def forget_registrations(services: Services, device_ids: Sequence[int]) -> None:
    """Deletes registrations a push service reported gone."""
    if not device_ids:
        return
    async with services.db.session() as session:
        await session.execute(delete(PushRegistration).where(col(PushRegistration.device_id).in_(list(device_ids))))
        await session.commit()


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification for one recipient: `count` messages pending in the conversation, the newest `job`'s."""

    user_id: int
    count: int
    body: str | None
    registrations: list[PushRegistration]


async def notifications_for(services: Services, job: PushJob, *, include_body: bool) -> list[Notification]:
    """Whom this job notifies, and through which registrations.

    Nobody is notified of a message deleted for everyone meanwhile, or of a disappearing
    message past its expiry (nor counted in a later one's burst). A recipient is
    skipped when: it is the sender; it muted the conversation (for good, or until a time
    not yet passed) unless the message mentions it and it wants mentions pushed even
    where muted; every device of it already received the message (its inbox entry is
    pruned); a newer message of the conversation is pending for it (that message's job
    notifies, with the count: a burst becomes one notification), unless it is muted and
    mentioned here (the newer one would not notify it); it is online; it has no registration.
    """
    now = services.clock()
    unmuted = and_(col(Member.muted).is_(False), or_(col(Member.muted_until).is_(None), col(Member.muted_until) <= now))
    async with services.db.session() as session:
        if await _deleted(session, job):
            return []
        mentioned = (
            select(col(Mention.user_id))
            .where(
                col(Mention.user_id) == col(InboxEntry.user_id),
                col(Mention.conversation_id) == job.conversation_id,
                col(Mention.message_id) == job.message_id,
            )
            .exists()
        )
        wants_mentions = (
            select(col(User.id))
            .where(col(User.id) == col(InboxEntry.user_id), col(User.push_mentions_when_muted).is_(True))
            .exists()
        )
        recipients = (
            select(col(InboxEntry.user_id))
            .join(
                Member,
                and_(
                    col(Member.user_id) == col(InboxEntry.user_id), col(Member.conversation_id) == job.conversation_id
                ),
            )
            .where(
                col(InboxEntry.message_id) == job.message_id,
                col(InboxEntry.user_id) != job.sender_id,
                or_(unmuted, and_(mentioned, wants_mentions)),
            )
            # Most recipients have no registration: they drop out before anything else is read.
            .where(
                select(col(PushRegistration.device_id))
                .where(col(PushRegistration.user_id) == col(InboxEntry.user_id))
                .exists()
            )
        )
        pending = await session.execute(
            select(col(InboxEntry.user_id), func.max(col(InboxEntry.message_id)), func.count())
            .join(Message, col(Message.id) == col(InboxEntry.message_id))
            .where(
                col(InboxEntry.user_id).in_(recipients),
                col(Message.conversation_id) == job.conversation_id,
                col(Message.deleted_at).is_(None),
                or_(col(Message.expires_at).is_(None), col(Message.expires_at) > services.clock()),
            )
            .group_by(col(InboxEntry.user_id))
        )
        pending_rows = pending.all()
        counts = {uid: int(n) for uid, newest, n in pending_rows if newest == job.message_id}
        counts |= await _muted_but_mentioned(
            session, job, [(uid, int(n)) for uid, newest, n in pending_rows if uid not in counts], unmuted
        )
        if not counts:
            return []
        online = await services.presence.online(list(counts))
        users = [uid for uid in counts if uid not in online]
        registrations: dict[int, list[PushRegistration]] = {}
        for chunk in chunks(users):
            rows = await session.execute(select(PushRegistration).where(col(PushRegistration.user_id).in_(chunk)))
            for registration in rows.scalars():
                registrations.setdefault(registration.user_id, []).append(registration)
        body = None
        if include_body and registrations:
            body = await session.scalar(select(col(Message.body)).where(col(Message.id) == job.message_id))
    return [Notification(uid, counts[uid], body, regs) for uid, regs in registrations.items()]


async def _muted_but_mentioned(
    session: AsyncSession, job: PushJob, superseded: list[tuple[int, int]], unmuted: ColumnElement[bool]
) -> dict[int, int]:
    """Of recipients with a newer message pending, those muted now and mentioned in this one, with their counts.

    The newer message's job would not notify them (muted), so this mention's does.
    """
    if not superseded:
        return {}
    named = set(
        (
            await session.execute(
                select(col(Mention.user_id))
                .join(
                    Member,
                    and_(
                        col(Member.user_id) == col(Mention.user_id),
                        col(Member.conversation_id) == col(Mention.conversation_id),
                    ),
                )
                .where(
                    col(Mention.user_id).in_([uid for uid, _ in superseded]),
                    col(Mention.conversation_id) == job.conversation_id,
                    col(Mention.message_id) == job.message_id,
                    ~unmuted,
                )
            )
        ).scalars()
    )
    return {uid: n for uid, n in superseded if uid in named}


async def _deleted(session: AsyncSession, job: PushJob) -> bool:
    """Whether the job's message was deleted for everyone (its row, or its send's record once the row is gone)."""
    marks = await session.execute(
        select(col(Message.deleted_at))
        .where(col(Message.id) == job.message_id, col(Message.deleted_at).is_not(None))
        .union_all(
            select(col(SentKey.deleted_at)).where(
                col(SentKey.message_id) == job.message_id,
                col(SentKey.sender_id) == job.sender_id,
                col(SentKey.deleted_at).is_not(None),
            )
        )
        .limit(1)
    )
    return marks.first() is not None
