"""Accounts and devices: register, log in and out, authenticate a bearer token, find users."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, InboxHead, User
from models.columns import utcnow
from resolvers import auth_limits, webhooks
from resolvers.batches import chunks
from resolvers.device_lists import DeviceChange, append_device_changes, publish_device_changes
from resolvers.errors import BadUserInput, Conflict, NotFound, Unauthenticated
from resolvers.inbox import Appended, prune_inbox
from resolvers.notice_codec import revocation_signal
from resolvers.publish import publish_signal_best_effort
from resolvers.services import Limits, Services
from resolvers.text import check_visible_text

log = logging.getLogger("parley.accounts")

USERNAME = re.compile(r"^[a-z0-9_.]{3,32}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
ACCOUNT_SUSPENDED = "This account is suspended."
MAX_DISPLAY_NAME = MAX_DEVICE_NAME = 64
# Device activity is written at most this often, so each request is not a database write.
ACTIVITY_WRITE_INTERVAL = timedelta(minutes=5)


@dataclass(frozen=True)
class Viewer:
    """Who is calling: the user and the device (login) the token names."""

    user_id: int
    device_id: int


@dataclass(frozen=True)
class Session:
    """What a successful register or login hands back."""

    token: str
    user: User
    device: Device


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    # surrogatepass: a lone surrogate (JSON connection params allow one) names no token; never crash on it.
    return hashlib.sha256(token.encode(errors="surrogatepass")).hexdigest()


def _clean_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise BadUserInput("Usernames are 3 to 32 characters: letters, digits, '_' and '.'.")
    return name


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadUserInput(f"Passwords are {MIN_PASSWORD} to {MAX_PASSWORD} characters long.")


def _clean_label(value: str | None, *, what: str, default: str, limit: int) -> str:
    text = " ".join((value or "").split())
    if len(text) > limit:
        raise BadUserInput(f"{what} is at most {limit} characters.")
    return check_visible_text(text, what=what) or default


async def _new_device(session: AsyncSession, user_id: int, device_name: str | None) -> tuple[str, Device]:
    token = secrets.token_urlsafe(32)
    device = Device(
        user_id=user_id,
        name=_clean_label(device_name, what="deviceName", default="unnamed device", limit=MAX_DEVICE_NAME),
        token_hash=hash_token(token),
    )
    session.add(device)
    await session.flush()
    return token, device


async def register(
    services: Services,
    *,
    username: str,
    password: str,
    display_name: str | None,
    device_name: str | None,
    address: str | None = None,
) -> Session:
    """Creates an account and its first device; `Conflict` if the username is taken.

    Counts against the attempts of the client `address` before the password is hashed.
    """
    name = _clean_username(username)
    _check_password(password)
    display = _clean_label(display_name, what="displayName", default=name, limit=MAX_DISPLAY_NAME)
    _clean_label(device_name, what="deviceName", default="", limit=MAX_DEVICE_NAME)  # before the hash
    await auth_limits.count_attempt(services, address)
    password_hash = await services.passwords.hash(password)
    async with services.db.session() as session:
        user = User(
            username=name,
            display_name=display,
            display_name_key=display.lower(),
            password_hash=password_hash,
        )
        session.add(user)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            raise Conflict(f"The username {name!r} is taken.") from None
        assert user.id is not None
        session.add(InboxHead(user_id=user.id))
        token, device = await _new_device(session, user.id, device_name)
        await session.commit()
    log.info("registered user %s (%s) with device %s", user.id, name, device.id)
    await webhooks.emit(services, "user.registered", {"user_id": user.id, "username": name})
    return Session(token=token, user=user, device=device)


async def login(
    services: Services, *, username: str, password: str, device_name: str | None, address: str | None = None
) -> Session:
    """Checks the password and creates a new device.

    Attempts are counted (per client `address` and per username, atomically) before the
    password is checked; a success clears the username's failures.
    """
    name = username.strip().lower()
    # Refused before a hash is paid for: the device name, and names no account can have.
    _clean_label(device_name, what="deviceName", default="", limit=MAX_DEVICE_NAME)
    if not USERNAME.fullmatch(name) or len(password) > MAX_PASSWORD:
        raise Unauthenticated("Wrong username or password.")
    await auth_limits.count_attempt(services, address)
    await auth_limits.count_login(services, name)
    # No database connection is held while the hash waits for its slot and runs.
    try:
        async with services.db.session() as session:
            user = (await session.execute(select(User).where(col(User.username) == name))).scalar_one_or_none()
    except Exception:
        await auth_limits.attempt_not_made(services, name, address)
        raise
    valid = await services.passwords.verify(user.password_hash if user else None, password)
    # A deleted account keeps its row (resolvers/account_deletion.py) but can never log in again.
    if user is None or not valid or user.deleted_at is not None:
        log.info("failed login for %r", name)
        raise Unauthenticated("Wrong username or password.")
    # Said only to whoever knows the password: the owner learns why, a guesser learns nothing.
    if user.suspended_at is not None:
        log.info("refused login for %r: the account is suspended", name)
        raise Unauthenticated(ACCOUNT_SUSPENDED)
    assert user.id is not None
    async with services.db.session() as session:
        # FOR SHARE: an account deletion in flight (resolvers/account_deletion.py) either sees this
        # device, or has committed, and then the account is no longer there to log in to.
        live = await session.execute(
            select(col(User.id))
            .where(col(User.id) == user.id, col(User.deleted_at).is_(None))
            .with_for_update(read=True)
        )
        if live.scalar_one_or_none() is None:
            raise Unauthenticated("Wrong username or password.")
        token, device = await _new_device(session, user.id, device_name)
        assert device.id is not None
        # A register needs none of this: a new account is in no conversation yet.
        appended = await append_device_changes(session, [DeviceChange(user.id, device.id, added=True)])
        await session.commit()
    await publish_device_changes(services, appended)
    await auth_limits.login_succeeded(services, name)
    log.info("user %s logged in as device %s", user.id, device.id)
    return Session(token=token, user=user, device=device)


async def authenticate(services: Services, authorization: str | None) -> Viewer:
    """The viewer a `Bearer <token>` value names; `Unauthenticated` when missing or revoked."""
    if not authorization:
        raise Unauthenticated()
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 200:
        raise Unauthenticated("The Authorization value must be 'Bearer <token>'.")
    now = utcnow()
    found = await services.inbox_store.device_for_token(
        hash_token(token.strip()), now=now, touch_before=now - activity_interval(services.limits)
    )
    if found is None:
        raise Unauthenticated("This token is not valid (logged out or expired).")
    device_id, user_id = found
    return Viewer(user_id=user_id, device_id=device_id)


async def logout(services: Services, viewer: Viewer) -> None:
    """Revokes the device's token and drops its pending events; its sockets close on every process."""

    async def work(session: AsyncSession) -> list[Appended]:
        await session.execute(delete(Device).where(col(Device.id) == viewer.device_id))
        await prune_inbox(session, [viewer.user_id])
        return await append_device_changes(session, [DeviceChange(viewer.user_id, viewer.device_id, added=False)])

    appended = await services.db.transaction(work)
    await publish_device_changes(services, appended)
    await announce_revoked(services, [(viewer.device_id, viewer.user_id)])
    log.info("device %s of user %s logged out", viewer.device_id, viewer.user_id)


async def get_users(services: Services, user_ids: Sequence[int]) -> dict[int, User]:
    """Users by id (missing ids are absent); one session, one statement per 1,000 ids."""
    unique = list(dict.fromkeys(user_ids))
    if not unique:
        return {}
    found: dict[int, User] = {}
    async with services.db.session() as session:
        for chunk in chunks(unique):
            rows = (await session.execute(select(User).where(col(User.id).in_(chunk)))).scalars().all()
            found.update((user.id, user) for user in rows if user.id is not None)
    return found


MAX_SEARCH_PAGE = 50


async def search_users(services: Services, *, prefix: str, first: int) -> list[User]:
    """Users whose username or display name starts with `prefix` (case-insensitive)."""
    text = prefix.strip().lower()
    if not 1 <= len(text) <= 64:
        raise BadUserInput("prefix is 1 to 64 characters.")
    if not 1 <= first <= MAX_SEARCH_PAGE:
        raise BadUserInput(f"first is between 1 and {MAX_SEARCH_PAGE}.")
    pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with services.db.session() as session:
        rows = (
            (
                await session.execute(
                    select(User)
                    .where(
                        or_(
                            col(User.username).like(pattern, escape="\\"),
                            col(User.display_name_key).like(pattern, escape="\\"),
                        ),
                        col(User.deleted_at).is_(None),
                    )
                    .order_by(func.length(col(User.username)), col(User.username))
                    .limit(first)
                )
            )
            .scalars()
            .all()
        )
    return list(rows)


# Bus channel of revocation notices: every process closes the revoked devices' sockets.
REVOKED_CHANNEL = "devices:revoked"
# Device ids per statement when touching or checking many (asyncpg takes at most 32,767 binds).
_ID_CHUNK = 10_000
_NOTICE_CHUNK = 1_000


def activity_interval(limits: Limits) -> timedelta:
    """How often a device in use has its activity written: rarely, but well within the expiry."""
    return min(ACTIVITY_WRITE_INTERVAL, timedelta(days=limits.device_inactivity_days) / 4)


def revoked_devices(message: str) -> list[int]:
    """The device ids a notice on `REVOKED_CHANNEL` names (none for anything malformed)."""
    try:
        data = json.loads(message)
        return [int(device_id) for device_id in data["devices"]]
    except (ValueError, TypeError, KeyError):
        log.warning("ignored a malformed revocation notice")
        return []


async def announce_revoked(services: Services, revoked: Sequence[tuple[int, int]]) -> None:
    """Tells every process that these (device, user) pairs are revoked (after the commit).

    Sockets of those devices close and their event streams end; a lost notice leaves a
    socket open whose operations still fail where they touch the device (and a process
    re-checks its sockets against the database after a broker outage).
    """
    pairs = sorted(set(revoked))
    # In chunks: a sweep may expire many devices at once, and every stream scans the list.
    for chunk in chunks(pairs, _NOTICE_CHUNK):
        device_ids = [device_id for device_id, _ in chunk]
        try:
            await services.bus.publish_many([(REVOKED_CHANNEL, json.dumps({"devices": device_ids}))])
        except Exception:
            log.warning("publish of the revocation of %d devices failed", len(device_ids), exc_info=True)
        # Its event streams end with UNAUTHENTICATED on this per-user notice, if it beats the close.
        await publish_signal_best_effort(services, {user_id for _, user_id in chunk}, revocation_signal(device_ids))


async def _require_device(session: AsyncSession, viewer: Viewer) -> None:
    """`Unauthenticated` unless the viewer's device still exists (a socket's viewer is fixed at connect)."""
    found = await session.execute(
        select(col(Device.id)).where(col(Device.id) == viewer.device_id, col(Device.user_id) == viewer.user_id)
    )
    if found.scalar_one_or_none() is None:
        raise Unauthenticated("This token is not valid (logged out or expired).")


async def list_devices(services: Services, viewer: Viewer) -> list[Device]:
    """The viewer's own devices, most recently active first."""
    async with services.db.session() as session:
        rows = list(
            (
                await session.execute(
                    select(Device)
                    .where(col(Device.user_id) == viewer.user_id)
                    .order_by(col(Device.last_active_at).desc(), col(Device.id).desc())
                )
            )
            .scalars()
            .all()
        )
    if not any(row.id == viewer.device_id for row in rows):
        raise Unauthenticated("This token is not valid (logged out or expired).")
    return rows


async def revoke_device(services: Services, viewer: Viewer, device_id: int) -> None:
    """Revokes one of the viewer's devices (maybe the current one) and drops its pending events.

    `NotFound` for a device that is not the viewer's. Its sockets close on every process.
    """

    async def work(session: AsyncSession) -> list[Appended]:
        await _require_device(session, viewer)
        deleted = await session.execute(
            delete(Device)
            .where(col(Device.id) == device_id, col(Device.user_id) == viewer.user_id)
            .returning(col(Device.id))
        )
        if deleted.scalar_one_or_none() is None:
            raise NotFound("No such device.")
        await prune_inbox(session, [viewer.user_id])
        return await append_device_changes(session, [DeviceChange(viewer.user_id, device_id, added=False)])

    appended = await services.db.transaction(work)
    await publish_device_changes(services, appended)
    await announce_revoked(services, [(device_id, viewer.user_id)])
    log.info("device %s of user %s revoked by device %s", device_id, viewer.user_id, viewer.device_id)


async def change_password(services: Services, viewer: Viewer, *, old_password: str, new_password: str) -> list[int]:
    """Sets a new password and revokes every other device of the user; returns their ids.

    The current device stays logged in. A wrong old password is `Unauthenticated`, and
    repeated failures are rate limited like logins (a stolen token must not guess it).
    """
    # Counted before the check, atomically: parallel guesses cannot all pass.
    await auth_limits.count_password_check(services, viewer.user_id)
    async with services.db.session() as session:
        current = (
            await session.execute(select(col(User.password_hash)).where(col(User.id) == viewer.user_id))
        ).scalar_one_or_none()
    if not await services.passwords.verify(current, old_password):
        raise Unauthenticated("The old password is wrong.")
    _check_password(new_password)
    new_hash = await services.passwords.hash(new_password)

    async def work(session: AsyncSession) -> list[int]:
        await _require_device(session, viewer)
        await session.execute(update(User).where(col(User.id) == viewer.user_id).values(password_hash=new_hash))
        others = await session.execute(
            delete(Device)
            .where(col(Device.user_id) == viewer.user_id, col(Device.id) != viewer.device_id)
            .returning(col(Device.id))
        )
        revoked = [device_id for (device_id,) in others.all() if device_id is not None]
        if revoked:
            await prune_inbox(session, [viewer.user_id])
        appended[:] = await append_device_changes(
            session, [DeviceChange(viewer.user_id, device_id, added=False) for device_id in revoked]
        )
        return revoked

    appended: list[Appended] = []
    revoked = await services.db.transaction(work)
    await publish_device_changes(services, appended)
    await auth_limits.password_check_succeeded(services, viewer.user_id)
    await announce_revoked(services, [(device_id, viewer.user_id) for device_id in revoked])
    log.info("user %s changed the password; %d other devices revoked", viewer.user_id, len(revoked))
    return revoked


async def touch_devices(services: Services, device_ids: Sequence[int], *, now: datetime) -> None:
    """Records activity of devices in use without a request (open sockets), as `authenticate` would."""
    ids = sorted(set(device_ids))
    touch_before = now - activity_interval(services.limits)

    async def work(session: AsyncSession) -> None:
        for chunk in chunks(ids, _ID_CHUNK):
            await session.execute(
                update(Device)
                .where(col(Device.id).in_(chunk), col(Device.last_active_at) < touch_before)
                .values(last_active_at=now)
                .execution_options(synchronize_session=False)
            )

    if ids:
        await services.db.transaction(work)


async def existing_devices(services: Services, device_ids: Sequence[int]) -> set[int]:
    """Those of these devices that are not revoked."""
    ids = sorted(set(device_ids))
    found: set[int] = set()
    async with services.db.session() as session:
        for chunk in chunks(ids, _ID_CHUNK):
            # A suspended account's devices stay, but count as revoked (their tokens are refused too).
            rows = await session.execute(
                select(col(Device.id))
                .join(User, col(User.id) == col(Device.user_id))
                .where(col(Device.id).in_(chunk), col(User.suspended_at).is_(None))
            )
            found.update(device_id for (device_id,) in rows.all() if device_id is not None)
    return found


async def update_own_account(services: Services, viewer: Viewer, **values: bool) -> User:
    """Stores the viewer's own settings (columns of `users`) and returns their account."""
    async with services.db.session() as session:
        await session.execute(
            update(User)
            .where(col(User.id) == viewer.user_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        user = await session.get(User, viewer.user_id, populate_existing=True)
    if user is None:
        raise NotFound("Your account no longer exists.")
    return user
