"""Push channel operations: bind or unbind the current device's channel, and the server's VAPID key."""

from __future__ import annotations

import strawberry

from graph.context import Info
from models.push import PushPlatform as PushPlatformModel
from resolvers import push

PushPlatform = strawberry.enum(PushPlatformModel, name="PushPlatform")


@strawberry.input
class PushRegistrationInput:
    platform: PushPlatform  # type: ignore[valid-type]
    token: str | None = strawberry.field(default=None, description="APNs device token or FCM registration token.")
    endpoint: str | None = strawberry.field(
        default=None,
        description="WebPush subscription: endpoint URL and the two keys from PushSubscription.getKey().",
    )
    p256dh: str | None = None
    auth: str | None = None


@strawberry.type
class PushQuery:
    @strawberry.field(
        description="The server's VAPID public key (base64url), for PushManager.subscribe's "
        "applicationServerKey; null when WebPush is not configured."
    )
    def web_push_public_key(self, info: Info) -> str | None:
        return info.context.services.push.web_push_public_key


@strawberry.type
class PushMutation:
    @strawberry.mutation(
        description="Binds a push channel to the current device, replacing its previous one. Deleted with "
        "the device (logout, revocation, expiry) or when the push service reports it gone."
    )
    async def register_push(self, info: Info, input: PushRegistrationInput) -> bool:
        viewer = await info.context.require_viewer()
        return await push.register_push(
            info.context.services,
            viewer,
            platform=PushPlatformModel(input.platform),
            token=input.token,
            endpoint=input.endpoint,
            p256dh=input.p256dh,
            auth=input.auth,
        )

    @strawberry.mutation(description="Removes the current device's push channel (true even if it had none).")
    async def unregister_push(self, info: Info) -> bool:
        viewer = await info.context.require_viewer()
        return await push.unregister_push(info.context.services, viewer)
