"""Operator actions behind the admin API (infra/admin_api.py): find and show accounts, suspend, delete, freeze.

Every action is logged at INFO as done by "operator", with what and its target. A suspension
keeps the account's devices but ends them everywhere at once: the revocation notice closes
their sockets (4403) on every process, the token lookup refuses them from the commit on, and
login says the account is suspended. Unsuspending gives login back; the old tokens work again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlmodel import col

from models import Device, Member, User
from resolvers import moderation, reports, webhooks
from resolvers.account_deletion import erase_account
from resolvers.accounts import announce_revoked
from resolvers.device_lists import DeviceChange, append_device_changes, publish_device_changes
from resolvers.errors import BadUserInput, NotFound
from resolvers.inbox import Appended
from resolvers.reports import ReportRecord
from resolvers.services import Services

log = logging.getLogger("parley.admin")

MAX_PAGE = 100
# Usernames (resolvers/accounts.py), and the `deleted-<id>` names deleted accounts keep.
_USERNAME_PART = re.compile(r"^[a-z0-9_.-]{0,40}$")
_ID_REF = re.compile(r"^id:(\d{1,18})$")


@dataclass(frozen=True)
class UserSummary:
    """One account as a search lists it."""

    id: int
    username: str
    display_name: str
    created_at: datetime
    suspended_at: datetime | None
    deleted_at: datetime | None


@dataclass(frozen=True)
class UserDetails:
    """One account as `show` displays it: its summary and how much it holds."""

    user: UserSummary
    devices: int
    conversations: int


def _summary(user: User) -> UserSummary:
    assert user.id is not None  # a row read back
    return UserSummary(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        created_at=user.created_at,
        suspended_at=user.suspended_at,
        deleted_at=user.deleted_at,
    )


def page_size(limit: int) -> int:
    """`limit` if within 1..MAX_PAGE, else `BadUserInput`."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadUserInput(f"limit must be between 1 and {MAX_PAGE}.")
    return limit


async def find_users(services: Services, *, prefix: str = "", after: int = 0, limit: int = 50) -> list[UserSummary]:
    """Accounts whose username starts with `prefix`, by id, after the id `after`."""
    name = prefix.strip().lower()
    if not _USERNAME_PART.fullmatch(name):
        raise BadUserInput("A username prefix has at most 40 of a-z, 0-9, '_', '.' and '-'.")
    async with services.db.session() as session:
        rows = await session.execute(
            select(User)
            .where(col(User.username).startswith(name, autoescape=True), col(User.id) > after)
            .order_by(col(User.id))
            .limit(page_size(limit))
        )
        return [_summary(user) for user in rows.scalars().all()]


async def resolve_user(services: Services, ref: str) -> int:
    """The id of the account `ref` names: `id:<number>` or a username; `NotFound` otherwise."""
    match = _ID_REF.fullmatch(ref.strip())
    name = ref.strip().lower()
    if match is None and not (name and _USERNAME_PART.fullmatch(name)):
        raise BadUserInput("Name an account by its username or as id:<number>.")
    condition = col(User.id) == int(match.group(1)) if match else col(User.username) == name
    async with services.db.session() as session:
        found = (await session.execute(select(col(User.id)).where(condition))).scalar_one_or_none()
    if found is None:
        raise NotFound(f"No account {ref.strip()!r}.")
    return found


async def user_details(services: Services, user_id: int) -> UserDetails:
    """The account and its counts of devices and conversations; `NotFound` if there is none."""
    async with services.db.session() as session:
        user = (await session.execute(select(User).where(col(User.id) == user_id))).scalar_one_or_none()
        if user is None:
            raise NotFound(f"No account id:{user_id}.")
        devices = await session.scalar(select(func.count()).select_from(Device).where(col(Device.user_id) == user_id))
        conversations = await session.scalar(
            select(func.count()).select_from(Member).where(col(Member.user_id) == user_id)
        )
    return UserDetails(user=_summary(user), devices=int(devices or 0), conversations=int(conversations or 0))


async def suspend_user(services: Services, user_id: int) -> UserDetails:
    """Suspends the account: its sockets close everywhere, its tokens and logins are refused.

    Suspending a suspended account changes nothing (and announces nothing again); a deleted
    one is `NotFound`.
    """
    now = services.clock()
    async with services.db.session() as session:
        changed = await session.execute(
            update(User)
            .where(col(User.id) == user_id, col(User.deleted_at).is_(None), col(User.suspended_at).is_(None))
            .values(suspended_at=now)
            .execution_options(synchronize_session=False)
        )
        devices = [
            device_id
            for (device_id,) in (
                await session.execute(select(col(Device.id)).where(col(Device.user_id) == user_id))
            ).all()
            if device_id is not None
        ]
        # Its devices count as gone for the members of its encrypted conversations (they rotate).
        appended = (
            await append_device_changes(session, [DeviceChange(user_id, device, added=False) for device in devices])
            if changed.rowcount  # type: ignore[attr-defined]
            else []
        )
        await session.commit()
    await publish_device_changes(services, appended)
    details = await _live_details(services, user_id)
    if changed.rowcount:  # type: ignore[attr-defined]
        # After the commit: a socket reopened meanwhile is refused by the token lookup.
        await announce_revoked(services, [(device_id, user_id) for device_id in devices])
        log.info("operator suspended user %s: %d devices ended", user_id, len(devices))
        await webhooks.emit(services, "user.suspended", {"user_id": user_id, "at": now.isoformat()})
    else:
        log.info("operator suspended user %s: already suspended", user_id)
    return details


async def unsuspend_user(services: Services, user_id: int) -> UserDetails:
    """Lifts a suspension: the account can log in again and its devices' tokens work again."""
    async with services.db.session() as session:
        lifted = await session.execute(
            update(User)
            .where(col(User.id) == user_id, col(User.deleted_at).is_(None), col(User.suspended_at).is_not(None))
            .values(suspended_at=None)
            .execution_options(synchronize_session=False)
        )
        appended: list[Appended] = []
        if lifted.rowcount:  # type: ignore[attr-defined]
            # Its devices work again: the members of its encrypted conversations share with them again.
            devices = (await session.execute(select(col(Device.id)).where(col(Device.user_id) == user_id))).scalars()
            appended = await append_device_changes(
                session, [DeviceChange(user_id, device, added=True) for device in devices if device is not None]
            )
        await session.commit()
    await publish_device_changes(services, appended)
    details = await _live_details(services, user_id)
    log.info("operator unsuspended user %s", user_id)
    return details


async def _live_details(services: Services, user_id: int) -> UserDetails:
    details = await user_details(services, user_id)
    if details.user.deleted_at is not None:
        raise NotFound(f"Account id:{user_id} is deleted.")
    return details


async def delete_user(services: Services, user_id: int) -> int:
    """Deletes the account as deleteAccount does, without its password; returns the devices ended."""
    deletion = await erase_account(services, user_id)
    await webhooks.emit(services, "user.deleted", {"user_id": user_id, "at": services.clock().isoformat()})
    log.info(
        "operator deleted user %s: %d devices revoked, %d groups left (%d deleted as empty)",
        user_id,
        len(deletion.devices),
        deletion.groups_left,
        deletion.groups_deleted,
    )
    return len(deletion.devices)


async def set_frozen(services: Services, conversation_id: int, *, frozen: bool) -> datetime | None:
    """Freezes (or unfreezes) a conversation, telling its members; returns when it was frozen (None when not)."""
    frozen_at = await moderation.freeze_conversation(services, conversation_id, frozen)
    log.info("operator %s conversation %s", "froze" if frozen else "unfroze", conversation_id)
    return frozen_at


async def list_reports(
    services: Services, *, resolved: bool | None = False, after: int = 0, limit: int = 50
) -> list[ReportRecord]:
    """Reports by id after `after`: open ones (`resolved=False`), resolved ones, or all (`None`)."""
    return await reports.list_reports(services, resolved=resolved, after=after, limit=page_size(limit))


async def resolve_report(services: Services, report_id: int, *, resolution: str) -> ReportRecord:
    """Marks a report resolved with the operator's note; `Conflict` when it was resolved already."""
    record = await reports.resolve_report(services, report_id, resolution)
    log.info("operator resolved report %s", report_id)
    return record


@dataclass(frozen=True)
class DeadLetter:
    """A webhook delivery that failed for good, as the operator lists it."""

    id: str
    endpoint: str
    event_id: str
    event_type: str
    reason: str
    at: datetime
    body: str


async def list_webhooks(services: Services, *, include_disabled: bool = True) -> list[webhooks.EndpointView]:
    """The webhook endpoints added through the admin API (disabled ones too unless told otherwise)."""
    return await webhooks.list_endpoints(services, include_disabled=include_disabled)


async def add_webhook(
    services: Services, *, url: str, events: list[str], description: str | None
) -> tuple[webhooks.EndpointView, str]:
    """Adds an endpoint; returns it and its signing secret, which is shown this once."""
    view, secret = await webhooks.add_endpoint(services, url, events, description)
    log.info("operator added webhook endpoint %s (%s)", view.id, view.url)
    return view, secret


async def disable_webhook(services: Services, endpoint_id: int) -> webhooks.EndpointView:
    """Disables an endpoint: nothing more is delivered to it."""
    view = await webhooks.disable_endpoint(services, endpoint_id)
    log.info("operator disabled webhook endpoint %s", endpoint_id)
    return view


async def dead_letters(services: Services, *, limit: int = 50) -> list[DeadLetter]:
    """The newest deliveries that failed for good, newest first."""
    return [
        DeadLetter(
            id=dead.id,
            endpoint=dead.job.endpoint,
            event_id=dead.job.event_id,
            event_type=dead.job.event_type,
            reason=dead.reason,
            at=datetime.fromtimestamp(dead.at, UTC),
            body=dead.job.body.decode("utf-8", "replace"),
        )
        for dead in await webhooks.list_dead_letters(services, page_size(limit))
    ]


async def replay_dead_letter(services: Services, dead_id: str) -> None:
    """Queues a dead letter again; `NotFound` if there is no such dead letter."""
    if not await webhooks.replay_dead_letter(services, dead_id):
        raise NotFound(f"No dead letter {dead_id!r}.")
    log.info("operator replayed webhook dead letter %s", dead_id)
