"""Accounts and devices: register, log in and out, authenticate a bearer token, find users."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, InboxHead, User
from models.columns import utcnow
from resolvers.errors import BadUserInput, Conflict, RateLimited, Unauthenticated
from resolvers.inbox import prune_inbox
from resolvers.notify import notify_best_effort
from resolvers.ports import Services

log = logging.getLogger("parley.accounts")

USERNAME = re.compile(r"^[a-z0-9_.]{3,32}$")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
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
    return hashlib.sha256(token.encode()).hexdigest()


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
    return text or default


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
) -> Session:
    """Creates an account and its first device; `Conflict` if the username is taken."""
    name = _clean_username(username)
    _check_password(password)
    display = _clean_label(display_name, what="displayName", default=name, limit=MAX_DISPLAY_NAME)
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
    return Session(token=token, user=user, device=device)


async def login(services: Services, *, username: str, password: str, device_name: str | None) -> Session:
    """Checks the password and creates a new device; repeated failures are rate limited."""
    name = username.strip().lower()[:64]
    limit_key = f"login:{name}"
    limits = services.limits
    if await services.rate_limiter.count(limit_key) >= limits.login_max_failures:
        raise RateLimited("Too many failed logins for this username; try again later.")
    async with services.db.session() as session:
        user = (await session.execute(select(User).where(col(User.username) == name))).scalar_one_or_none()
        valid = await services.passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            await services.rate_limiter.hit(limit_key, window_seconds=limits.login_failure_window_seconds)
            log.info("failed login for %r", name)
            raise Unauthenticated("Wrong username or password.")
        assert user.id is not None
        token, device = await _new_device(session, user.id, device_name)
        await session.commit()
    await services.rate_limiter.reset(limit_key)
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
    found = await services.delivery.device_for_token(
        hash_token(token.strip()), now=now, touch_before=now - ACTIVITY_WRITE_INTERVAL
    )
    if found is None:
        raise Unauthenticated("This token is not valid (logged out or expired).")
    device_id, user_id = found
    return Viewer(user_id=user_id, device_id=device_id)


async def logout(services: Services, viewer: Viewer) -> None:
    """Revokes the device's token and drops its pending events."""

    async def work(session: AsyncSession) -> None:
        await session.execute(delete(Device).where(col(Device.id) == viewer.device_id))
        await prune_inbox(session, [viewer.user_id])

    await services.db.transaction(work)
    # Ends this device's open event streams now, on whichever process holds them.
    await notify_best_effort(services, [viewer.user_id], {"logout": viewer.device_id})
    log.info("device %s of user %s logged out", viewer.device_id, viewer.user_id)


async def get_users(services: Services, user_ids: list[int]) -> dict[int, User]:
    """Users by id (missing ids are absent)."""
    if not user_ids:
        return {}
    async with services.db.session() as session:
        rows = (await session.execute(select(User).where(col(User.id).in_(user_ids)))).scalars().all()
    return {user.id: user for user in rows if user.id is not None}


async def search_users(services: Services, *, prefix: str, first: int) -> list[User]:
    """Users whose username or display name starts with `prefix` (case-insensitive)."""
    text = prefix.strip().lower()
    if not 1 <= len(text) <= 64:
        raise BadUserInput("prefix is 1 to 64 characters.")
    if not 1 <= first <= 50:
        raise BadUserInput("first is between 1 and 50.")
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
                        )
                    )
                    .order_by(func.length(col(User.username)), col(User.username))
                    .limit(first)
                )
            )
            .scalars()
            .all()
        )
    return list(rows)
