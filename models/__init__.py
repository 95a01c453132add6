"""SQLModel tables: importing this package registers every table on `SQLModel.metadata`."""

from models.attachment import Attachment, ThumbnailState, UploadState
from models.block import Block
from models.conversation import Ban, Conversation, ConversationKind, Invite, Member, MemberRole
from models.inbox import EventKind, InboxEntry, InboxHead, ReceiptWatermark
from models.keys import DeviceKey, OneTimeKey
from models.message import Mention, Message, Reaction, SentKey
from models.moderation import Report, ReportKind, WebhookEndpoint
from models.push import PushPlatform, PushRegistration
from models.user import Device, User

__all__ = [
    "Attachment",
    "Ban",
    "Block",
    "Conversation",
    "ConversationKind",
    "Device",
    "DeviceKey",
    "EventKind",
    "InboxEntry",
    "InboxHead",
    "Invite",
    "Member",
    "MemberRole",
    "Mention",
    "Message",
    "OneTimeKey",
    "PushPlatform",
    "PushRegistration",
    "Reaction",
    "ReceiptWatermark",
    "Report",
    "ReportKind",
    "SentKey",
    "ThumbnailState",
    "UploadState",
    "User",
    "WebhookEndpoint",
]
