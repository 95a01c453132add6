"""Push channels: registering them, checking untrusted WebPush endpoints, and what a push job notifies.

A WebPush endpoint comes from a client and the worker POSTs to it: unless private
endpoints are allowed (development), it must be `https` and every address its
host resolves to must be public, checked at registration and again before each
send (DNS can change), and the sender connects to the address that was checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import InboxEntry, Member, Message, PushPlatform, PushRegistration
from resolvers.accounts import Viewer
from resolvers.batches import chunks
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ports import PushJob, Services

MAX_ENDPOINT = 2048
MAX_TOKEN = 4096
# An endpoint's name is the client's choice: a slow resolver must not hold a request long.
RESOLVE_TIMEOUT_SECONDS = 3.0
_TOKEN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_:.")


def _b64url(value: str, *, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadUserInput(f"{what} is not base64url.") from None


async def check_endpoint(url: str, *, allow_private: bool) -> list[str]:
    """The addresses a WebPush endpoint resolves to; `BadUserInput` if it may not be used.

    Refused unless private endpoints are allowed: other schemes than https, and a
    host with any address that is not globally routable (loopback, private, link-local,
    the cloud metadata address…). The caller connects to one of the returned addresses.
    """
    if len(url) > MAX_ENDPOINT:
        raise BadUserInput(f"endpoint is at most {MAX_ENDPOINT} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUserInput("endpoint is not a URL.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BadUserInput(f"endpoint must be an {' or '.join(schemes)} URL.")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadUserInput("endpoint must name a host (and no user or password).")
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
            ),
            timeout=RESOLVE_TIMEOUT_SECONDS,
        )
    except (socket.gaierror, UnicodeError, TimeoutError):
        raise BadUserInput("endpoint's host does not resolve.") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise BadUserInput("endpoint's host does not resolve.")
    if not allow_private and not all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        raise BadUserInput("endpoint must be a public address.")
    return addresses


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
    is deleted with the device (revocation, logout, expiry).
    """
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

    A recipient is skipped when: it is the sender; it muted the conversation; every
    device of it already received the message (its inbox entry is pruned); a newer
    message of the conversation is pending for it (that message's job notifies, with
    the count: a burst becomes one notification); it is online; it has no registration.
    """
    async with services.db.session() as session:
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
                col(Member.muted).is_(False),
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
            .where(col(InboxEntry.user_id).in_(recipients), col(Message.conversation_id) == job.conversation_id)
            .group_by(col(InboxEntry.user_id))
        )
        counts = {uid: int(n) for uid, newest, n in pending if newest == job.message_id}
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
