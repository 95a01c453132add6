"""Strawberry types of the public API; converted from domain objects with `from_*` classmethods."""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Union

import strawberry

from graph.context import Info
from graph.keys import DeviceListEvent, OneTimeKeysLowEvent
from graph.unread_types import NotificationPreferences, ReadStateEvent, UnreadTotal
from models import Conversation as ConversationRow
from models import ConversationKind as ConversationKindModel
from models import Member as MemberRow
from models import MemberRole as MemberRoleModel
from models import User as UserRow
from models.user import Device as DeviceRow
from resolvers import files, unread
from resolvers.conversations import (
    MAX_MEMBERS_PAGE,
    MEMBERS_PAGE,
    ConversationHeader,
    ConversationView,
    page_of,
)
from resolvers.device_keys import KeysLowEventView
from resolvers.device_lists import DeviceListEventView
from resolvers.errors import BadUserInput, NotFound
from resolvers.events import (
    ConversationEventView,
    LifecycleEventView,
    MessageEventView,
    ReadStateEventView,
    ReceiptEventView,
    TypingEventView,
)
from resolvers.files import AttachmentView
from resolvers.ids import MessageIds, parse_row_id
from resolvers.member_state import MemberState
from resolvers.messages import MessageView
from resolvers.privacy import SELF, PresenceVisibility
from resolvers.records import DELETED_DISPLAY_NAME, DELETED_USERNAME
from resolvers.to_device import ToDeviceEventView

if TYPE_CHECKING:
    from graph.reports import ReportEvent

ConversationKind = strawberry.enum(ConversationKindModel, name="ConversationKind")
MemberRole = strawberry.enum(MemberRoleModel, name="MemberRole")


@strawberry.enum
class ReceiptStatus(Enum):
    DELIVERED = "DELIVERED"
    READ = "READ"


@strawberry.enum
class ConversationChange(Enum):
    CREATED = "CREATED"
    MEMBERS_ADDED = "MEMBERS_ADDED"
    MEMBER_REMOVED = "MEMBER_REMOVED"
    RENAMED = "RENAMED"
    LEFT = "LEFT"
    ROLE_CHANGED = strawberry.enum_value("ROLE_CHANGED", description="A member's role changed (setMemberRole).")
    DISAPPEARING_TIMER_CHANGED = strawberry.enum_value(
        "DISAPPEARING_TIMER_CHANGED",
        description="The disappearing-message timer changed (setDisappearingTimer); the conversation's "
        "`disappearAfterSeconds` is the new value.",
    )
    JOINED = strawberry.enum_value("JOINED", description="A user joined by an invite link (joinByInvite).")
    SETTINGS_CHANGED = strawberry.enum_value(
        "SETTINGS_CHANGED",
        description="The group's settings changed (updateConversationSettings); the conversation's `settings` are the "
        "new ones.",
    )
    MEMBER_MUTED = strawberry.enum_value(
        "MEMBER_MUTED", description="An owner or admin muted the member in `users` (muteMember)."
    )
    MEMBER_UNMUTED = strawberry.enum_value(
        "MEMBER_UNMUTED", description="The member in `users` may send again (unmuteMember)."
    )
    FROZEN = strawberry.enum_value(
        "FROZEN",
        description="The operators froze the conversation: nobody sends, reacts or types there. `actor` is no user.",
    )
    UNFROZEN = strawberry.enum_value("UNFROZEN", description="The operators unfroze the conversation.")


@strawberry.type(description="A group's rules for sending and editing (updateConversationSettings).")
class ConversationSettings:
    only_admins_send: bool = strawberry.field(
        default=False, description="Announcement group: only owners and admins send messages."
    )
    only_admins_edit: bool = strawberry.field(
        default=True,
        description="Only owners and admins change the title and the disappearing timer; false: every member may.",
    )
    slow_mode_seconds: int | None = strawberry.field(
        default=None,
        description="Each member (not owners and admins) sends at most one message per this many seconds; null: off.",
    )


@strawberry.type
class User:
    id: strawberry.ID
    username: str
    display_name: str
    # The caller's own account (me, register/login, setPrivacy): shown in full without a lookup,
    # which also serves register and login, whose callers have no token yet.
    is_self: strawberry.Private[bool] = False
    own_hide_last_seen: strawberry.Private[bool | None] = None
    own_read_receipts: strawberry.Private[bool | None] = None
    # Known when built from an account row; otherwise looked up (batched) when it matters.
    row_deleted: strawberry.Private[bool | None] = None

    async def _visibility(self, info: Info) -> PresenceVisibility:
        if self.is_self:
            return SELF
        return await info.context.loaders(info).presence_visibility.load(int(self.id))

    async def _deleted(self, info: Info) -> bool:
        if self.row_deleted is not None:
            return self.row_deleted
        row = await info.context.loaders(info).users.load(int(self.id))
        return row is not None and row.deleted_at is not None

    async def _suspended(self, info: Info) -> bool:
        row = await info.context.loaders(info).users.load(int(self.id))
        return row is not None and row.suspended_at is not None

    @strawberry.field(
        description="Suspended by the operators: the account cannot log in or be reached; it is never online and "
        "has no last seen while suspended."
    )
    async def suspended(self, info: Info) -> bool:
        return await self._suspended(info)

    @strawberry.field(
        description='A deleted account (deleteAccount): its displayName is "Deleted account", it is never online '
        "and has no last seen, and it cannot be added to conversations."
    )
    async def deleted(self, info: Info) -> bool:
        return await self._deleted(info)

    @strawberry.field(
        description="Online now: at least one live connection anywhere in the cluster. Shown only to users who "
        "share a conversation with this user that this user created or sent a message in (false for anyone else)."
    )
    async def online(self, info: Info) -> bool:
        if not (await self._visibility(info)).online or await self._deleted(info) or await self._suspended(info):
            return False
        return await info.context.loaders(info).online.load(int(self.id))

    @strawberry.field(
        description="Last heartbeat or activity; null when never seen. Shown only to users who share a "
        "conversation with this user that this user created or sent a message in, and to nobody when the user "
        "hides it (setPrivacy)."
    )
    async def last_seen(self, info: Info) -> datetime | None:
        if not (await self._visibility(info)).last_seen or await self._deleted(info) or await self._suspended(info):
            return None
        return await info.context.loaders(info).last_seen.load(int(self.id))

    @strawberry.field(
        description="Your own privacy setting: your last seen is hidden from everyone (setPrivacy). "
        "Null on other users."
    )
    async def hide_last_seen(self, info: Info) -> bool | None:
        if self.is_self:
            return self.own_hide_last_seen
        viewer = await info.context.require_viewer()
        if int(self.id) != viewer.user_id:
            return None
        row = await info.context.loaders(info).users.load(viewer.user_id)
        return row.hide_last_seen if row is not None else None

    @strawberry.field(
        description="Your own privacy setting: whether you send and see READ receipts in direct conversations "
        "(setPrivacy). Null on other users."
    )
    async def read_receipts(self, info: Info) -> bool | None:
        if self.is_self:
            return self.own_read_receipts
        viewer = await info.context.require_viewer()
        if int(self.id) != viewer.user_id:
            return None
        row = await info.context.loaders(info).users.load(viewer.user_id)
        return not row.hide_read_receipts if row is not None else None

    async def _own_row(self, info: Info) -> UserRow | None:
        """The account row when this is the viewer's own account, else None."""
        viewer = await info.context.require_viewer()
        if int(self.id) != viewer.user_id:
            return None
        return await info.context.loaders(info).users.load(viewer.user_id)

    @strawberry.field(description="Your own unread badge over all your conversations. Null on other users.")
    async def unread_total(self, info: Info) -> UnreadTotal | None:
        viewer = await info.context.require_viewer()
        if int(self.id) != viewer.user_id:
            return None
        return UnreadTotal.of(await unread.unread_total(info.context.services, viewer))

    @strawberry.field(description="Your own notification preferences (setNotificationPreferences). Null on others.")
    async def notification_preferences(self, info: Info) -> NotificationPreferences | None:
        row = await self._own_row(info)
        return NotificationPreferences.of(row) if row is not None else None

    @classmethod
    def from_row(cls, row: UserRow, *, is_self: bool = False) -> User:
        """The API user of an account row; `is_self` when it is the caller's own account."""
        return cls(
            id=strawberry.ID(str(row.id)),
            username=row.username,
            display_name=row.display_name,
            is_self=is_self,
            own_hide_last_seen=row.hide_last_seen if is_self else None,
            own_read_receipts=not row.hide_read_receipts if is_self else None,
            row_deleted=row.deleted_at is not None,
        )


async def load_user(info: Info, user_id: int) -> User:
    """A user by id for nested fields; a deleted account shows as a placeholder, not an error."""
    row = await info.context.loaders(info).users.load(user_id)
    if row is None:
        return User(
            id=strawberry.ID(str(user_id)),
            username=DELETED_USERNAME,
            display_name=DELETED_DISPLAY_NAME,
            row_deleted=True,
        )
    return User.from_row(row)


@strawberry.type(
    description="A logged-in client (a phone, a browser tab's install, ...). Events are delivered per device."
)
class Device:
    id: strawberry.ID
    name: str
    created_at: datetime
    last_active_at: datetime = strawberry.field(
        description="When this device last used the API (recorded every few minutes at most)."
    )
    current: bool = strawberry.field(description="Whether this is the device the request's token names.")

    @classmethod
    def from_row(cls, row: DeviceRow, *, current: bool = True) -> Device:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            created_at=row.created_at,
            last_active_at=row.last_active_at,
            current=current,
        )


@strawberry.type
class AuthPayload:
    token: str = strawberry.field(
        description="Bearer token: HTTP `Authorization: Bearer <token>`, or `authorization` in the WebSocket connection_init payload."
    )
    user: User
    device: Device


@strawberry.type
class Member:
    user_id: strawberry.Private[int]
    role: MemberRole  # type: ignore[valid-type]
    joined_at: datetime

    @strawberry.field
    async def user(self, info: Info) -> User:
        return await load_user(info, self.user_id)


async def _members(
    root: Conversation, info: Info, first: int | None = MEMBERS_PAGE, after: strawberry.ID | None = None
) -> list[Member]:
    if not root.members_visible:
        return []
    size = MEMBERS_PAGE if first is None else first
    after_id = None if after is None else parse_row_id(after, what="user")
    if root.all_members is not None:
        rows = page_of(root.all_members, first=size, after=after_id)
    else:
        if not 1 <= size <= MAX_MEMBERS_PAGE:  # checked before the loader: one bad page must not fail a batch
            raise BadUserInput(f"first is between 1 and {MAX_MEMBERS_PAGE}.")
        rows = await info.context.loaders(info).member_pages.load((int(root.id), size, after_id))
    return [Member(user_id=m.user_id, role=m.role, joined_at=m.joined_at) for m in rows]


def _settings(row: ConversationRow) -> ConversationSettings:
    return ConversationSettings(
        only_admins_send=row.only_admins_send,
        only_admins_edit=row.only_admins_edit,
        slow_mode_seconds=row.slow_mode_seconds,
    )


def _own_state(state: MemberState) -> dict[str, Any]:
    """The viewer's own fields of a conversation (resolvers/member_state.py)."""
    return {
        "muted_until": state.muted_until,
        "unread_count": state.unread_count,
        "unread_mentions": state.unread_mentions,
        "archived": state.archived,
        "pinned": state.pinned,
    }


@strawberry.type
class Conversation:
    id: strawberry.ID
    kind: ConversationKind  # type: ignore[valid-type]
    title: str | None = strawberry.field(description="Null for DIRECT conversations.")
    members: list[Member] = strawberry.field(
        resolver=_members,
        description="Members in joining order: `first` (1 to 100) after the member whose user id is `after`. "
        "A page after a user who is not a member is empty.",
    )
    created_at: datetime
    muted: bool = strawberry.field(
        description="Muted for the viewer now: no push notifications (but for mentions, unless turned off), and "
        "left out of unreadTotal's counts. Muted for good, or until `mutedUntil`."
    )
    muted_until: datetime | None = strawberry.field(
        default=None, description="The viewer muted it until this time (muteConversation `until`); null otherwise."
    )
    unread_count: int = strawberry.field(
        default=0, description="Messages from others after the viewer's read position (markRead)."
    )
    unread_mentions: int = strawberry.field(default=0, description="Of those, the ones that mention the viewer.")
    archived: bool = strawberry.field(
        default=False, description="Archived by the viewer: listed by conversations(archived: true) only."
    )
    pinned: bool = strawberry.field(default=False, description="Pinned by the viewer: listed first.")
    disappear_after_seconds: int | None = strawberry.field(
        default=None,
        description="Messages sent while this is set disappear this many seconds after they were sent "
        "(`Message.expiresAt`); null: off. Changed by setDisappearingTimer.",
    )
    settings: ConversationSettings = strawberry.field(default_factory=ConversationSettings)
    frozen: bool = strawberry.field(
        default=False, description="Frozen by the operators: nobody sends, reacts or types here until unfrozen."
    )
    encrypted: bool = strawberry.field(
        default=False,
        description="End-to-end encrypted (chosen at creation, for good): messages and edits carry `ciphertext`, "
        "never a body, and attachments are opaque uploads (CreateUploadInput.encrypted).",
    )
    # Every member, when the use case had them already (mutation results): pages are cut from it.
    all_members: strawberry.Private[list[MemberRow] | None] = None
    # False for a conversation the viewer has left (an event names it): no members shown.
    members_visible: strawberry.Private[bool] = True

    @classmethod
    def from_view(cls, view: ConversationView) -> Conversation:
        """A conversation with every member at hand (a mutation's result)."""
        c = view.conversation
        return cls(
            id=strawberry.ID(str(view.id)),
            kind=c.kind,
            title=c.title,
            created_at=c.created_at,
            muted=view.muted,
            disappear_after_seconds=c.disappear_after_seconds,
            settings=_settings(c),
            frozen=c.frozen_at is not None,
            encrypted=c.encrypted,
            all_members=list(view.members),
            **_own_state(view.state),
        )

    @classmethod
    def from_header(cls, header: ConversationHeader) -> Conversation:
        """A conversation whose members are loaded in pages when asked for."""
        c = header.conversation
        return cls(
            id=strawberry.ID(str(header.id)),
            kind=c.kind,
            title=c.title,
            created_at=c.created_at,
            muted=header.muted,
            disappear_after_seconds=c.disappear_after_seconds,
            settings=_settings(c),
            frozen=c.frozen_at is not None,
            encrypted=c.encrypted,
            members_visible=header.is_member,
            **_own_state(header.state),
        )


@strawberry.type
class Attachment:
    id: strawberry.ID
    filename: str
    content_type: str
    size: int = strawberry.field(description="Bytes.")
    view: strawberry.Private[AttachmentView]

    @classmethod
    def from_view(cls, view: AttachmentView) -> Attachment:
        """The API object of one attachment of a message."""
        return cls(
            id=strawberry.ID(str(view.id)),
            filename=view.filename,
            content_type=view.content_type,
            size=view.size,
            view=view,
        )

    async def _check_member(self, info: Info) -> None:
        # Only members get URLs: a removed member replaying old events gets none.
        header = await info.context.loaders(info).conversations.load(self.view.conversation_id)
        if header is None or not header.is_member:
            raise NotFound("No such attachment.")

    @strawberry.field(description="Short-lived download URL, minted for the viewer.")
    async def url(self, info: Info) -> str:
        await self._check_member(info)
        return await files.download_url(info.context.services, self.view, base_url=info.context.public_base_url)

    @strawberry.field(description="Short-lived URL of a small preview image, when one exists.")
    async def thumbnail_url(self, info: Info) -> str | None:
        if not self.view.previewable:
            return None
        await self._check_member(info)
        key = await info.context.loaders(info).thumbnails.load(self.view.id)
        if key is None:
            return None
        return await files.thumbnail_url(info.context.services, self.view, key, base_url=info.context.public_base_url)


@strawberry.type
class Message:
    id: strawberry.ID
    client_id: str = strawberry.field(description="The sender's idempotency key, echoed back.")
    conversation_id: strawberry.ID
    # A plain attribute built from what the message carries: no lookup per event.
    sender: User
    body: str | None
    attachments: list[Attachment]
    sent_at: datetime = strawberry.field(description="Server time at which the message was accepted (the SENT moment).")
    reply_to_id: strawberry.ID | None = strawberry.field(
        default=None, description="The message (of the same conversation) this one replies to."
    )
    expires_at: datetime | None = strawberry.field(
        default=None,
        description="A disappearing message's end: no device receives it after this time, the server removes it "
        "then, and clients delete their copy then. Null: it does not disappear.",
    )
    ciphertext: str | None = strawberry.field(
        default=None,
        description="An end-to-end encrypted conversation's message, opaque to the server (base64, as the sender "
        "sent it); its body is null. Null in a plaintext conversation.",
    )
    mention_ids: strawberry.Private[tuple[int, ...]] = ()

    @strawberry.field(description="The users the message mentions (SendMessageInput.mentions).")
    async def mentions(self, info: Info) -> list[User]:
        return list(await asyncio.gather(*(load_user(info, uid) for uid in self.mention_ids)))

    @classmethod
    def from_view(cls, view: MessageView, info: Info) -> Message:
        """The API object of a message; one per view, shared by every subscriber it is sent to."""
        ids = info.context.ids
        # Keyed by message: a group message reaches a process once per channel shard, as equal views.
        cached = _MESSAGES.get(view.ref.message_id)
        if cached is not None and cached[1] is ids and (cached[0] is view or cached[0] == view):
            return cached[2]
        ref = view.ref
        message = cls(
            id=strawberry.ID(ids.encode(ref)),
            client_id=view.client_id,
            conversation_id=strawberry.ID(str(ref.conversation_id)),
            sender=User(
                id=strawberry.ID(str(ref.sender_id)),
                username=view.sender_username,
                display_name=view.sender_display_name,
            ),
            body=view.body,
            attachments=[Attachment.from_view(attachment) for attachment in view.attachments],
            sent_at=view.sent_at,
            reply_to_id=strawberry.ID(ids.encode(view.reply_to)) if view.reply_to is not None else None,
            expires_at=view.expires_at,
            ciphertext=view.ciphertext,
            mention_ids=view.mentions,
        )
        if len(_MESSAGES) >= _MESSAGE_CACHE_SIZE:
            _MESSAGES.pop(next(iter(_MESSAGES)))
        _MESSAGES[view.ref.message_id] = (view, ids, message)
        return message


# The API objects of the most recent messages: a group message reaches every local member's
# stream as one view per shard, and is built (and projected, see graph/projection.py) once.
_MESSAGE_CACHE_SIZE = 256
_MESSAGES: dict[int, tuple[MessageView, MessageIds, Message]] = {}


@strawberry.type(
    description="A watermark: `user` has received (or read) `messageId` and every earlier message\n"
    "from the same sender in the same conversation."
)
class Receipt:
    conversation_id: strawberry.ID
    message_id: strawberry.ID
    # A plain attribute: receipts carry their reader's names, so no lookup per event.
    user: User
    status: ReceiptStatus
    at: datetime


@strawberry.type(description="Durable events carry a cursor and stay pending for the device until acknowledged.")
class MessageEvent:
    cursor: str
    message: Message


@strawberry.type
class ReceiptEvent:
    cursor: str
    receipt: Receipt


@strawberry.type
class ConversationEvent:
    cursor: str
    change: ConversationChange
    conversation_id: strawberry.Private[int]
    user_ids: strawberry.Private[list[int]]
    actor_id: strawberry.Private[int]
    at: datetime

    @strawberry.field
    async def conversation(self, info: Info) -> Conversation:
        # Batched: every ConversationEvent of one result (pendingEvents) shares one query.
        header = await info.context.loaders(info).conversations.load(self.conversation_id)
        if header is None:  # deleted since: show what the event knew
            return Conversation(
                id=strawberry.ID(str(self.conversation_id)),
                kind=ConversationKindModel.GROUP,
                title=None,
                created_at=self.at,
                muted=False,
                members_visible=False,
            )
        return Conversation.from_header(header)

    @strawberry.field(description="The members the change is about (added, removed, left).")
    async def users(self, info: Info) -> list[User]:
        return list(await asyncio.gather(*(load_user(info, uid) for uid in self.user_ids)))

    @strawberry.field
    async def actor(self, info: Info) -> User:
        return await load_user(info, self.actor_id)


@strawberry.type(description="Ephemeral: never stored, never acknowledged.")
class TypingEvent:
    conversation_id: strawberry.ID
    user_id: strawberry.Private[int]
    typing: bool
    at: datetime

    @strawberry.field
    async def user(self, info: Info) -> User:
        return await load_user(info, self.user_id)


@strawberry.type(
    description="A message was edited by its sender: show `body` instead of its text. Ignore it for a message "
    "this device never received."
)
class MessageEditedEvent:
    cursor: str
    message_id: strawberry.ID
    conversation_id: strawberry.ID
    body: str | None = strawberry.field(description="The new text; null once the message was deleted.")
    edited_at: datetime
    editor: User
    ciphertext: str | None = strawberry.field(
        default=None,
        description="The new content in an end-to-end encrypted conversation (opaque base64); null elsewhere "
        "and once the message was deleted.",
    )


@strawberry.type(
    description="A message was deleted for everyone (by its sender, or a group owner or admin): drop its text "
    "and attachments. Ignore it for a message this device never received."
)
class MessageDeletedEvent:
    cursor: str
    message_id: strawberry.ID
    conversation_id: strawberry.ID
    deleted_at: datetime
    deleted_by: User


@strawberry.type(description="`user` added (or removed) the reaction `emoji` on a message: a per (user, emoji) toggle.")
class ReactionEvent:
    cursor: str
    message_id: strawberry.ID
    conversation_id: strawberry.ID
    user: User
    emoji: str
    added: bool
    at: datetime


@strawberry.type(
    description="Durable, for this device only: an opaque message a device of `sender` sent it with sendToDevice "
    "(how Olm sessions and group-session keys travel). Acknowledge it like any event; once acknowledged it is "
    "deleted. The user's other devices never see it."
)
class ToDeviceEvent:
    cursor: str
    sender: User
    sender_device_id: strawberry.ID
    type: str = strawberry.field(description="What the payload is, as the sender named it (1 to 64 visible ASCII).")
    payload: str = strawberry.field(description="Exactly what the sender sent; the server never reads it.")

    @classmethod
    def of(cls, view: ToDeviceEventView) -> ToDeviceEvent:
        """The API event of a to-device message."""
        m = view.message
        return cls(
            cursor=view.cursor,
            # A plain attribute: the sender's names are stored with the message, so no lookup per event.
            sender=User(
                id=strawberry.ID(str(m.sender_id)), username=m.sender_username, display_name=m.sender_display_name
            ),
            sender_device_id=strawberry.ID(str(m.sender_device_id)),
            type=m.type,
            payload=m.payload,
        )


EventType = (
    MessageEvent
    | ReceiptEvent
    | ConversationEvent
    | TypingEvent
    | MessageEditedEvent
    | MessageDeletedEvent
    | ReactionEvent
    | ReadStateEvent
    | DeviceListEvent
    | OneTimeKeysLowEvent
    | ToDeviceEvent
)
# ReportEvent (graph/reports.py) builds on this module's types, so the union names it lazily:
# graph/reports.py is imported when the schema is built. `api_event` there renders every member.
if TYPE_CHECKING:
    Event = Annotated[EventType | ReportEvent, strawberry.union("Event")]
else:
    Event = Annotated[
        Union[EventType, strawberry.LazyType("ReportEvent", "graph.reports")],  # noqa: UP007 - no `|` for a LazyType
        strawberry.union("Event"),
    ]


def _lifecycle_event(view: LifecycleEventView, info: Info) -> MessageEditedEvent | MessageDeletedEvent | ReactionEvent:
    change = view.change
    message_id = strawberry.ID(info.context.ids.encode(change.message))
    conversation_id = strawberry.ID(str(change.message.conversation_id))
    # A plain attribute: the actor's names are stored with the event, so no lookup per event.
    actor = User(
        id=strawberry.ID(str(change.actor_id)), username=change.actor_username, display_name=change.actor_display_name
    )
    if view.kind == "EDIT":
        return MessageEditedEvent(
            cursor=view.cursor,
            message_id=message_id,
            conversation_id=conversation_id,
            body=change.body,
            ciphertext=change.ciphertext,
            edited_at=change.at,
            editor=actor,
        )
    if view.kind == "DELETE":
        return MessageDeletedEvent(
            cursor=view.cursor,
            message_id=message_id,
            conversation_id=conversation_id,
            deleted_at=change.at,
            deleted_by=actor,
        )
    return ReactionEvent(
        cursor=view.cursor,
        message_id=message_id,
        conversation_id=conversation_id,
        user=actor,
        emoji=change.emoji or "",
        added=change.added,
        at=change.at,
    )


def event_from_view(
    view: MessageEventView
    | ReceiptEventView
    | ConversationEventView
    | TypingEventView
    | LifecycleEventView
    | ReadStateEventView
    | DeviceListEventView
    | KeysLowEventView
    | ToDeviceEventView,
    info: Info,
) -> EventType:
    """The API type of a domain event."""
    if isinstance(view, ToDeviceEventView):
        return ToDeviceEvent.of(view)
    if isinstance(view, DeviceListEventView):
        return DeviceListEvent.of(view)
    if isinstance(view, KeysLowEventView):
        return OneTimeKeysLowEvent.of(view)
    return _user_event(view, info)


def _user_event(
    view: MessageEventView
    | ReceiptEventView
    | ConversationEventView
    | TypingEventView
    | LifecycleEventView
    | ReadStateEventView,
    info: Info,
) -> EventType:
    if isinstance(view, LifecycleEventView):
        return _lifecycle_event(view, info)
    if isinstance(view, ReadStateEventView):
        return ReadStateEvent.of(view.cursor, view.position, view.at, info)
    if isinstance(view, MessageEventView):
        return MessageEvent(cursor=view.cursor, message=Message.from_view(view.message, info))
    if isinstance(view, ReceiptEventView):
        r = view.receipt
        message_id = r.message if isinstance(r.message, str) else info.context.ids.encode(r.message)
        receipt = Receipt(
            conversation_id=strawberry.ID(str(r.conversation_id)),
            message_id=strawberry.ID(message_id),
            user=User(
                id=strawberry.ID(str(r.reader_id)),
                username=r.reader_username or DELETED_USERNAME,
                display_name=r.reader_display_name or DELETED_DISPLAY_NAME,
            ),
            status=ReceiptStatus(r.status),
            at=r.at,
        )
        return ReceiptEvent(cursor=view.cursor, receipt=receipt)
    if isinstance(view, ConversationEventView):
        return ConversationEvent(
            cursor=view.cursor,
            change=ConversationChange(view.change),
            conversation_id=view.conversation_id,
            user_ids=view.user_ids,
            actor_id=view.actor_id,
            at=view.at,
        )
    return TypingEvent(
        conversation_id=strawberry.ID(str(view.conversation_id)),
        user_id=view.user_id,
        typing=view.typing,
        at=view.at,
    )


@strawberry.input
class SendMessageInput:
    conversation_id: strawberry.ID
    client_id: str = strawberry.field(
        description="Unique per sender; resending the same clientId returns the first message and stores nothing new."
    )
    body: str | None = None
    ciphertext: str | None = strawberry.field(
        default=None,
        description="In an end-to-end encrypted conversation, the message as the client encrypted it (base64, at "
        "most the server's limit) instead of a body; BAD_USER_INPUT in a plaintext conversation.",
    )
    attachment_ids: list[strawberry.ID] | None = strawberry.field(default_factory=list)
    reply_to_id: strawberry.ID | None = strawberry.field(
        default=None, description="A message of the same conversation this one replies to."
    )
    mentions: list[strawberry.ID] | None = strawberry.field(
        default_factory=list,
        description="Users the message mentions: members of the conversation only (else BAD_USER_INPUT and nothing "
        "is stored), at most the group member cap; repeats and the sender are left out. Counted in their "
        "unreadMentions, and pushed to them even where they muted the conversation unless they turned that off.",
    )
