"""Account operations: register, login, logout, heartbeat, and looking up users."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import AuthPayload, Device, User
from resolvers import accounts
from resolvers.errors import NotFound
from resolvers.ids import parse_row_id


def _payload(session: accounts.Session) -> AuthPayload:
    return AuthPayload(
        token=session.token,
        user=User.from_row(session.user, is_self=True),
        device=Device.from_row(session.device),
    )


@strawberry.type
class AccountQuery:
    @strawberry.field
    async def me(self, info: Info) -> User:
        viewer = await info.context.require_viewer()
        row = await info.context.loaders(info).users.load(viewer.user_id)
        if row is None:
            raise NotFound("Your account no longer exists.")
        return User.from_row(row, is_self=True)

    @strawberry.field
    async def user(self, info: Info, id: strawberry.ID) -> User | None:
        await info.context.require_viewer()
        try:
            row = await info.context.loaders(info).users.load(parse_row_id(id, what="user"))
        except NotFound:
            return None
        return User.from_row(row) if row else None

    @strawberry.field(description="The viewer's own devices (logins), most recently active first.")
    async def devices(self, info: Info) -> list[Device]:
        viewer = await info.context.require_viewer()
        rows = await accounts.list_devices(info.context.services, viewer)
        return [Device.from_row(row, current=row.id == viewer.device_id) for row in rows]

    @strawberry.field(description="Users whose username or display name starts with `prefix`.")
    async def search_users(self, info: Info, prefix: str, first: int | None = 20) -> list[User]:
        await info.context.require_viewer()
        rows = await accounts.search_users(info.context.services, prefix=prefix, first=20 if first is None else first)
        return [User.from_row(row) for row in rows]


@strawberry.type
class AccountMutation:
    @strawberry.mutation
    async def register(
        self,
        info: Info,
        username: str,
        password: str,
        display_name: str | None = None,
        device_name: str | None = None,
    ) -> AuthPayload:
        session = await accounts.register(
            info.context.services,
            username=username,
            password=password,
            display_name=display_name,
            device_name=device_name,
            address=info.context.client_address,
        )
        return _payload(session)

    @strawberry.mutation
    async def login(self, info: Info, username: str, password: str, device_name: str | None = None) -> AuthPayload:
        session = await accounts.login(
            info.context.services,
            username=username,
            password=password,
            device_name=device_name,
            address=info.context.client_address,
        )
        return _payload(session)

    @strawberry.mutation(description="Ends the current device's session and drops its pending events.")
    async def logout(self, info: Info) -> bool:
        viewer = await info.context.require_viewer()
        await accounts.logout(info.context.services, viewer)
        await info.context.devices_revoked([viewer.device_id])
        return True

    @strawberry.mutation(
        description="Logs out one of the viewer's devices (this one too): its token stops working, its "
        "WebSockets close (4403) and its pending events are dropped. NOT_FOUND for another user's device."
    )
    async def revoke_device(self, info: Info, id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        device_id = parse_row_id(id, what="device")
        await accounts.revoke_device(info.context.services, viewer, device_id)
        await info.context.devices_revoked([device_id])
        return True

    @strawberry.mutation(
        description="Sets a new password and logs out every other device of the viewer; this device stays "
        "logged in. A wrong `oldPassword` is UNAUTHENTICATED."
    )
    async def change_password(self, info: Info, old_password: str, new_password: str) -> bool:
        viewer = await info.context.require_viewer()
        revoked = await accounts.change_password(
            info.context.services, viewer, old_password=old_password, new_password=new_password
        )
        await info.context.devices_revoked(revoked)
        return True

    @strawberry.mutation(description="Liveness ping; returns the stored last-seen time.")
    async def heartbeat(self, info: Info) -> datetime:
        # heartbeat stores last seen itself: not a second time through the activity throttle.
        viewer = await info.context.require_viewer(record_activity=False)
        return await info.context.services.presence.touch(viewer.user_id)
