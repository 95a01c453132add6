"""The key directory of end-to-end encryption: devices publish their public keys, others fetch and claim them.

The server holds public keys only. It checks their form (Curve25519 and Ed25519 keys are
32 bytes, signatures 64, as unpadded base64), not the signatures themselves: clients verify
each signature with the device's signing key before trusting a key (docs/security.md).
A one-time key is handed out once: the claim deletes the row it returns, in one statement
that concurrent claimers (and processes) cannot both win; an empty pool hands out the
device's fallback key instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from models import Block, Device, DeviceKey, EventKind, Member, OneTimeKey, User
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, Conflict, Unauthenticated
from resolvers.inbox import Appended, append_for_devices
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend
from resolvers.services import Services

log = logging.getLogger("parley.device_keys")

KEYS_LOW = EventKind.KEYS_LOW.value
MAX_USERS = 100
MAX_DEVICES = 100
KEY_ID = re.compile(r"^[A-Za-z0-9+/=_:.\-]{1,64}$")
# Unpadded base64 lengths of a 32-byte key and a 64-byte signature (what vodozemac's to_base64 gives).
KEY_CHARS, SIGNATURE_CHARS = 43, 86
_HOUR = 3600


@dataclass(frozen=True, slots=True)
class SignedKey:
    key_id: str
    key: str
    signature: str


@dataclass(frozen=True, slots=True)
class KeyUpload:
    """What `uploadDeviceKeys` carries."""

    identity_key: str
    signing_key: str
    signature: str
    fallback_key: SignedKey | None
    one_time_keys: Sequence[SignedKey]


@dataclass(frozen=True, slots=True)
class KeyCount:
    """The device's one-time keys left on the server, and whether it has a fallback key there."""

    one_time_keys: int
    fallback_key: bool


@dataclass(frozen=True, slots=True)
class PublishedKeys:
    """A device's identity keys and its signature over them."""

    device_id: int
    user_id: int
    identity_key: str
    signing_key: str
    signature: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A key handed out for one device: a one-time key, or its fallback key (`fallback`)."""

    device_id: int
    key_id: str
    key: str
    signature: str
    fallback: bool


@dataclass(frozen=True, slots=True)
class KeysLowEventView:
    """A device's one-time keys ran low: it should upload more."""

    cursor: str
    remaining: int


def keys_low_event_of(cursor: str, data: dict[str, Any]) -> KeysLowEventView:
    """The view of a stored KEYS_LOW entry's payload."""
    return KeysLowEventView(cursor=cursor, remaining=int(data["remaining"]))


def _check_base64(value: str, *, chars: int, what: str) -> str:
    """`value` when it is unpadded standard base64 of exactly `chars` characters; else `BadUserInput`."""
    if len(value) != chars:
        raise BadUserInput(f"{what} is {chars} characters of unpadded base64.")
    try:
        raw = base64.b64decode(value + "=" * (-chars % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadUserInput(f"{what} is not base64.") from None
    # Canonical: unused trailing bits set would give two spellings of one key.
    if base64.b64encode(raw).decode().rstrip("=") != value:
        raise BadUserInput(f"{what} is not canonical base64.")
    return value


def _check_signed(key: SignedKey, *, what: str) -> None:
    if not KEY_ID.fullmatch(key.key_id):
        raise BadUserInput(f"{what} keyId is 1 to 64 characters: letters, digits and + / = _ : . -")
    _check_base64(key.key, chars=KEY_CHARS, what=f"{what} key")
    _check_base64(key.signature, chars=SIGNATURE_CHARS, what=f"{what} signature")


def _check_upload(services: Services, upload: KeyUpload) -> None:
    _check_base64(upload.identity_key, chars=KEY_CHARS, what="identityKey")
    _check_base64(upload.signing_key, chars=KEY_CHARS, what="signingKey")
    _check_base64(upload.signature, chars=SIGNATURE_CHARS, what="signature")
    if upload.fallback_key is not None:
        _check_signed(upload.fallback_key, what="fallbackKey")
    most = services.limits.max_one_time_keys_per_upload
    if len(upload.one_time_keys) > most:
        raise BadUserInput(f"At most {most} one-time keys per upload.")
    for key in upload.one_time_keys:
        _check_signed(key, what="oneTimeKeys")
    if len({key.key_id for key in upload.one_time_keys}) != len(upload.one_time_keys):
        raise BadUserInput("oneTimeKeys repeats a keyId.")


async def upload_device_keys(services: Services, viewer: Viewer, upload: KeyUpload) -> KeyCount:
    """Stores the viewer's device keys and adds one-time keys to its pool; returns what the pool holds.

    The identity and signing keys of a device never change (`Conflict`); the same again is fine.
    A one-time key id already stored with another key is `Conflict`; with the same key, nothing new.
    """
    _check_upload(services, upload)
    await spend(
        services,
        f"keys:upload:{viewer.device_id}",
        limit=services.limits.key_uploads_per_hour,
        window_seconds=_HOUR,
        refusal="Too many key uploads from this device; try again later.",
    )

    async def work(session: AsyncSession) -> KeyCount:
        # The device row, locked: a revoke in flight either sees these keys or has removed the device.
        found = await session.execute(
            select(col(Device.id))
            .where(col(Device.id) == viewer.device_id, col(Device.user_id) == viewer.user_id)
            .with_for_update()
        )
        if found.scalar_one_or_none() is None:
            raise Unauthenticated("This token is not valid (logged out or expired).")
        await _store_identity(session, viewer, upload)
        await _store_one_time_keys(session, services, viewer.device_id, upload.one_time_keys)
        count = await session.scalar(
            select(func.count()).select_from(OneTimeKey).where(col(OneTimeKey.device_id) == viewer.device_id)
        )
        fallback = await session.scalar(
            select(col(DeviceKey.fallback_key)).where(col(DeviceKey.device_id) == viewer.device_id)
        )
        return KeyCount(one_time_keys=int(count or 0), fallback_key=fallback is not None)

    counted = await services.db.transaction(work)
    log.info(
        "device %s of user %s uploaded keys: %d one-time keys sent, %d stored",
        viewer.device_id,
        viewer.user_id,
        len(upload.one_time_keys),
        counted.one_time_keys,
    )
    return counted


async def _store_identity(session: AsyncSession, viewer: Viewer, upload: KeyUpload) -> None:
    current = await session.get(DeviceKey, viewer.device_id, with_for_update=True)
    fallback = upload.fallback_key
    if current is None:
        session.add(
            DeviceKey(
                device_id=viewer.device_id,
                user_id=viewer.user_id,
                identity_key=upload.identity_key,
                signing_key=upload.signing_key,
                signature=upload.signature,
                fallback_key_id=fallback.key_id if fallback else None,
                fallback_key=fallback.key if fallback else None,
                fallback_signature=fallback.signature if fallback else None,
            )
        )
        await session.flush()
        return
    if (current.identity_key, current.signing_key) != (upload.identity_key, upload.signing_key):
        raise Conflict("This device's identity keys are set and cannot change; log in as a new device instead.")
    values: dict[str, Any] = {"signature": upload.signature, "updated_at": utcnow(), "low_keys_notified": False}
    if fallback is not None:
        values |= {
            "fallback_key_id": fallback.key_id,
            "fallback_key": fallback.key,
            "fallback_signature": fallback.signature,
        }
    await session.execute(
        update(DeviceKey)
        .where(col(DeviceKey.device_id) == viewer.device_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def _store_one_time_keys(
    session: AsyncSession, services: Services, device_id: int, keys: Sequence[SignedKey]
) -> None:
    if not keys:
        return
    rows = await session.execute(
        select(col(OneTimeKey.key_id), col(OneTimeKey.key)).where(
            col(OneTimeKey.device_id) == device_id, col(OneTimeKey.key_id).in_([k.key_id for k in keys])
        )
    )
    stored: dict[str, str] = dict(rows.all())
    if any(stored[k.key_id] != k.key for k in keys if k.key_id in stored):
        raise Conflict("A one-time key with that keyId is stored with another key.")
    new = [k for k in keys if k.key_id not in stored]
    if not new:
        return
    held = int(
        await session.scalar(select(func.count()).select_from(OneTimeKey).where(col(OneTimeKey.device_id) == device_id))
        or 0
    )
    most = services.limits.max_one_time_keys
    if held + len(new) > most:
        raise BadUserInput(f"A device holds at most {most} one-time keys on the server; {held} are stored.")
    now = utcnow()
    await session.execute(
        insert(OneTimeKey),
        [
            {"device_id": device_id, "key_id": k.key_id, "key": k.key, "signature": k.signature, "created_at": now}
            for k in new
        ],
    )


def _parse_ids(values: Sequence[str], *, most: int, what: str) -> list[int]:
    """Distinct numeric ids in order; anything that names no row is left out (as an unreachable one is)."""
    if len(values) > most:
        raise BadUserInput(f"At most {most} {what} per call.")
    ids: dict[int, None] = {}
    for value in values:
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) > 0:
            ids[int(text)] = None
    return list(ids)


async def reachable_users(session: AsyncSession, viewer: Viewer, user_ids: Sequence[int]) -> set[int]:
    """Those of `user_ids` whose keys the viewer may see: themselves, and users sharing a conversation.

    Suspended and deleted accounts, and users who blocked the viewer, are left out.
    """
    if not user_ids:
        return set()
    mine, theirs = aliased(Member), aliased(Member)
    others = [uid for uid in user_ids if uid != viewer.user_id]
    candidates = {viewer.user_id} if viewer.user_id in user_ids else set()
    if others:
        shared = await session.execute(
            select(col(theirs.user_id))
            .join(mine, col(mine.conversation_id) == col(theirs.conversation_id))
            .where(col(mine.user_id) == viewer.user_id, col(theirs.user_id).in_(others))
            .distinct()
        )
        candidates |= {uid for (uid,) in shared.all()}
        blockers = await session.execute(
            select(col(Block.blocker_id)).where(
                col(Block.blocked_id) == viewer.user_id, col(Block.blocker_id).in_(list(candidates))
            )
        )
        candidates -= {uid for (uid,) in blockers.all()}
    if not candidates:
        return set()
    live = await session.execute(
        select(col(User.id)).where(
            col(User.id).in_(list(candidates)), col(User.deleted_at).is_(None), col(User.suspended_at).is_(None)
        )
    )
    return {uid for (uid,) in live.all() if uid is not None}


async def device_keys(services: Services, viewer: Viewer, user_ids: Sequence[str]) -> list[PublishedKeys]:
    """The published keys of the current devices of these users, those the viewer may reach; others left out."""
    ids = _parse_ids(user_ids, most=MAX_USERS, what="userIds")
    async with services.db.session() as session:
        reachable = await reachable_users(session, viewer, ids)
        if not reachable:
            return []
        rows = (
            (
                await session.execute(
                    select(DeviceKey)
                    .where(col(DeviceKey.user_id).in_(sorted(reachable)))
                    .order_by(col(DeviceKey.user_id), col(DeviceKey.device_id))
                )
            )
            .scalars()
            .all()
        )
    return [
        PublishedKeys(
            device_id=row.device_id,
            user_id=row.user_id,
            identity_key=row.identity_key,
            signing_key=row.signing_key,
            signature=row.signature,
        )
        for row in rows
    ]


async def _over_device_limit(services: Services, device_id: int) -> bool:
    """Counts a claim of the device's keys; True past the hourly limit (then only its fallback key goes out)."""
    try:
        count = await services.rate_limiter.hit(f"keys:claimed:{device_id}", window_seconds=_HOUR)
    except Exception:
        log.warning("one-time key claims of device %s uncounted", device_id, exc_info=True)
        return False
    return count > services.limits.key_claims_per_device_per_hour


async def claim_one_time_keys(services: Services, viewer: Viewer, device_ids: Sequence[str]) -> list[Claimed]:
    """A key for each of these devices: a one-time key, handed out once, or its fallback key when none is left.

    Devices the viewer may not reach (see `reachable_users`), or without keys, are left out.
    A device's keys claimed more often than the hourly limit go out as its fallback key only.
    """
    ids = _parse_ids(device_ids, most=MAX_DEVICES, what="deviceIds")
    if not ids:
        return []
    await spend(
        services,
        f"keys:claim:{viewer.user_id}",
        limit=services.limits.key_claims_per_hour,
        window_seconds=_HOUR,
        amount=len(ids),
        refusal="Too many one-time key claims; try again later.",
    )
    async with services.db.session() as session:
        owners = dict(
            (
                await session.execute(
                    select(col(DeviceKey.device_id), col(DeviceKey.user_id)).where(col(DeviceKey.device_id).in_(ids))
                )
            ).all()
        )
        reachable = await reachable_users(session, viewer, sorted(set(owners.values())))
    targets = sorted(device_id for device_id, owner in owners.items() if owner in reachable)
    fallback_only = {device_id for device_id in targets if await _over_device_limit(services, device_id)}

    async def work(session: AsyncSession) -> tuple[list[Claimed], list[Appended]]:
        return await _claim(session, services, targets, fallback_only)

    claimed = await commit_then_publish(services, work)
    log.info(
        "user %s claimed keys of %d devices: %d one-time, %d fallback",
        viewer.user_id,
        len(targets),
        sum(not c.fallback for c in claimed),
        sum(c.fallback for c in claimed),
    )
    return claimed


async def _claim(
    session: AsyncSession, services: Services, targets: Sequence[int], fallback_only: set[int]
) -> tuple[list[Claimed], list[Appended]]:
    claimed: dict[int, Claimed] = {}
    for device_id in targets:  # device id order: one lock order for every claimer
        if device_id in fallback_only:
            continue
        # The pick skips rows another claimer holds, and the delete returns the row only to the
        # transaction that removed it: each key goes out once, across processes (SQLite has one writer).
        pick = (
            select(col(OneTimeKey.key_id))
            .where(col(OneTimeKey.device_id) == device_id)
            .order_by(col(OneTimeKey.created_at), col(OneTimeKey.key_id))
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        taken = (
            await session.execute(
                delete(OneTimeKey)
                .where(col(OneTimeKey.device_id) == device_id, col(OneTimeKey.key_id) == pick)
                .returning(col(OneTimeKey.key_id), col(OneTimeKey.key), col(OneTimeKey.signature))
            )
        ).first()
        if taken is not None:
            claimed[device_id] = Claimed(device_id, taken[0], taken[1], taken[2], fallback=False)
    missing = [device_id for device_id in targets if device_id not in claimed]
    if missing:
        fallbacks = await session.execute(
            select(
                col(DeviceKey.device_id),
                col(DeviceKey.fallback_key_id),
                col(DeviceKey.fallback_key),
                col(DeviceKey.fallback_signature),
            ).where(col(DeviceKey.device_id).in_(missing), col(DeviceKey.fallback_key).is_not(None))
        )
        for device_id, key_id, key, signature in fallbacks.all():
            if key_id is not None and key is not None and signature is not None:
                claimed[device_id] = Claimed(device_id, key_id, key, signature, fallback=True)
    appended = await _notify_low(session, services, [c.device_id for c in claimed.values() if not c.fallback])
    return [claimed[device_id] for device_id in targets if device_id in claimed], appended


async def _notify_low(session: AsyncSession, services: Services, device_ids: Sequence[int]) -> list[Appended]:
    """A OneTimeKeysLowEvent for each of these devices whose pool fell below the threshold, once per upload."""
    if not device_ids:
        return []
    threshold = services.limits.one_time_keys_low
    remaining = dict(
        (
            await session.execute(
                select(col(OneTimeKey.device_id), func.count())
                .where(col(OneTimeKey.device_id).in_(device_ids))
                .group_by(col(OneTimeKey.device_id))
            )
        ).all()
    )
    low = sorted(device_id for device_id in device_ids if remaining.get(device_id, 0) < threshold)
    if not low:
        return []
    entries: list[tuple[int, int, str]] = []
    for device_id in low:  # one at a time, in id order: the rows are locked in the order claims take them
        # Only the claim that flips the flag tells the device: concurrent claims wait on the row, then see it set.
        user_id = (
            await session.execute(
                update(DeviceKey)
                .where(col(DeviceKey.device_id) == device_id, col(DeviceKey.low_keys_notified).is_(False))
                .values(low_keys_notified=True)
                .returning(col(DeviceKey.user_id))
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        if user_id is not None:
            entries.append((user_id, device_id, json.dumps({"remaining": remaining.get(device_id, 0)})))
    entries.sort()
    return await append_for_devices(session, entries, EventKind.KEYS_LOW)
