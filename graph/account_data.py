"""Account data operations: deleting one's account, and exporting what the server holds about one."""

from __future__ import annotations

import strawberry

from graph.context import Info
from resolvers import account_deletion, data_export


@strawberry.type
class AccountDataQuery:
    @strawberry.field(
        description="What the server holds about you, as one JSON document (a string): profile, privacy and "
        "notification settings, devices with their pending events, push registrations (platform and time only), "
        "conversations with your membership and its state, whom you blocked, invites you created, bans, uploads "
        "and how many of your messages are still pending. No secrets (token hashes, push keys, invite codes). "
        "RATE_LIMITED past a few calls an hour."
    )
    async def export_my_data(self, info: Info) -> str:
        viewer = await info.context.require_viewer()
        return await data_export.export_my_data(info.context.services, viewer)


@strawberry.type
class AccountDataMutation:
    @strawberry.mutation(
        description="Deletes your account for good: every device is logged out (its WebSockets close with 4403), "
        "you leave every group (ownership passes to the longest-standing admin, else member), your pending "
        "messages and uploads are deleted. Direct conversations stay for the other person, showing a deleted "
        "account (`User.deleted`). A wrong `password` is UNAUTHENTICATED and changes nothing."
    )
    async def delete_account(self, info: Info, password: str) -> bool:
        viewer = await info.context.require_viewer()
        revoked = await account_deletion.delete_account(info.context.services, viewer, password=password)
        await info.context.devices_revoked(revoked)
        return True
