"""The key directory of end-to-end encryption: uploadDeviceKeys, deviceKeys, claimOneTimeKeys, and its events.

graph/types.py puts this module's events in the `Event` union, so `User` is named lazily here.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import strawberry

from graph.context import Info
from resolvers import device_keys
from resolvers.device_keys import KeysLowEventView, KeyUpload, SignedKey
from resolvers.device_lists import DeviceListEventView

if TYPE_CHECKING:
    from graph.types import User

LazyUser = Annotated["User", strawberry.lazy("graph.types")]


async def _user(info: Info, user_id: int) -> User:
    from graph.types import load_user  # noqa: PLC0415 - graph/types.py imports this module

    return await load_user(info, user_id)


@strawberry.input(description="A key signed by the device's signing key (Ed25519): ids are 1 to 64 characters.")
class SignedKeyInput:
    key_id: str
    key: str = strawberry.field(description="Curve25519, 32 bytes as unpadded base64 (43 characters).")
    signature: str = strawberry.field(description="Ed25519, 64 bytes as unpadded base64 (86 characters).")


@strawberry.input(
    description="A device's public keys: its Olm identity key (Curve25519) and signing key (Ed25519), fixed once "
    "uploaded, its signature over them, and optionally a fallback key and more one-time keys."
)
class DeviceKeysInput:
    identity_key: str
    signing_key: str
    signature: str
    fallback_key: SignedKeyInput | None = strawberry.field(
        default=None, description="Replaces the stored fallback key; null keeps it."
    )
    one_time_keys: list[SignedKeyInput] = strawberry.field(
        default_factory=list,
        description="Added to the device's pool (at most PARLEY_MAX_ONE_TIME_KEYS_PER_UPLOAD per call, "
        "PARLEY_MAX_ONE_TIME_KEYS held).",
    )


@strawberry.type(description="What the server holds for the device after an upload.")
class OneTimeKeyCount:
    one_time_keys: int = strawberry.field(description="One-time keys left to hand out.")
    fallback_key: bool = strawberry.field(description="Whether a fallback key is stored.")


@strawberry.type(description="A device's published identity keys; verify `signature` with `signingKey` before use.")
class DeviceKeys:
    device_id: strawberry.ID
    identity_key: str
    signing_key: str
    signature: str
    user_id: strawberry.Private[int]

    @strawberry.field
    async def user(self, info: Info) -> LazyUser:
        return await _user(info, self.user_id)


@strawberry.type(
    description="A key handed out for a device: a one-time key (never handed out again) or its fallback key."
)
class ClaimedKey:
    device_id: strawberry.ID
    key_id: str
    key: str
    signature: str
    fallback: bool = strawberry.field(
        description="The device's fallback key: its pool was empty (or claimed too often this hour). It is handed "
        "out again until the device replaces it."
    )


@strawberry.enum
class DeviceChange(Enum):
    ADDED = "ADDED"
    REMOVED = "REMOVED"


@strawberry.type(
    description="Durable: `user`, who shares an end-to-end encrypted conversation with you (or is you), gained or "
    "lost the device `deviceId` (login; logout, revocation, expiry, suspension, account deletion). Share your "
    "group sessions with an added device; rotate them when one is removed. One event per change, however many "
    "encrypted conversations you share."
)
class DeviceListEvent:
    cursor: str
    change: DeviceChange
    device_id: strawberry.ID
    user_id: strawberry.Private[int]

    @strawberry.field
    async def user(self, info: Info) -> LazyUser:
        return await _user(info, self.user_id)

    @classmethod
    def of(cls, view: DeviceListEventView) -> DeviceListEvent:
        """The API event of a stored device-list change."""
        return cls(
            cursor=view.cursor,
            change=DeviceChange(view.change),
            device_id=strawberry.ID(str(view.device_id)),
            user_id=view.user_id,
        )


@strawberry.type(
    description="Durable, for this device only: a claim left it fewer one-time keys than the server's threshold. "
    "Upload more (uploadDeviceKeys); no other such event comes until you do."
)
class OneTimeKeysLowEvent:
    cursor: str
    remaining: int

    @classmethod
    def of(cls, view: KeysLowEventView) -> OneTimeKeysLowEvent:
        """The API event of a stored low-keys notice."""
        return cls(cursor=view.cursor, remaining=view.remaining)


def _signed(key: SignedKeyInput) -> SignedKey:
    return SignedKey(key_id=key.key_id, key=key.key, signature=key.signature)


@strawberry.type
class KeyQuery:
    @strawberry.field(
        description="The devices with uploaded keys of these users (at most 100): you, and users you share a "
        "conversation with. Anyone else, and users who blocked you, are left out without an error."
    )
    async def device_keys(self, info: Info, user_ids: list[strawberry.ID]) -> list[DeviceKeys]:
        viewer = await info.context.require_viewer()
        found = await device_keys.device_keys(info.context.services, viewer, [str(uid) for uid in user_ids])
        return [
            DeviceKeys(
                device_id=strawberry.ID(str(keys.device_id)),
                identity_key=keys.identity_key,
                signing_key=keys.signing_key,
                signature=keys.signature,
                user_id=keys.user_id,
            )
            for keys in found
        ]


@strawberry.type
class KeyMutation:
    @strawberry.mutation(
        description="Publishes this device's keys (end-to-end encryption). The identity and signing keys cannot "
        "change once set (CONFLICT; the same again is fine). Keys are checked for form only: clients verify the "
        "signatures. BAD_USER_INPUT past the pool's size; RATE_LIMITED past the hourly uploads."
    )
    async def upload_device_keys(self, info: Info, input: DeviceKeysInput) -> OneTimeKeyCount:
        viewer = await info.context.require_viewer()
        upload = KeyUpload(
            identity_key=input.identity_key,
            signing_key=input.signing_key,
            signature=input.signature,
            fallback_key=_signed(input.fallback_key) if input.fallback_key is not None else None,
            one_time_keys=[_signed(key) for key in input.one_time_keys],
        )
        count = await device_keys.upload_device_keys(info.context.services, viewer, upload)
        return OneTimeKeyCount(one_time_keys=count.one_time_keys, fallback_key=count.fallback_key)

    @strawberry.mutation(
        description="A key for each of these devices (at most 100) to open an Olm session with: a one-time key, "
        "handed out once, else the device's fallback key. Devices you may not reach (as deviceKeys) or without "
        "keys are left out. RATE_LIMITED past the hourly claims (each device asked for counts)."
    )
    async def claim_one_time_keys(self, info: Info, device_ids: list[strawberry.ID]) -> list[ClaimedKey]:
        viewer = await info.context.require_viewer()
        claimed = await device_keys.claim_one_time_keys(info.context.services, viewer, [str(d) for d in device_ids])
        return [
            ClaimedKey(
                device_id=strawberry.ID(str(c.device_id)),
                key_id=c.key_id,
                key=c.key,
                signature=c.signature,
                fallback=c.fallback,
            )
            for c in claimed
        ]
