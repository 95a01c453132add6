"""SQLModel tables: importing this package registers every table on `SQLModel.metadata`."""

from models.attachment import Attachment, ThumbnailState, UploadState
from models.block import Block
from models.conversation import Conversation, ConversationKind, Member, MemberRole
from models.inbox import EventKind, InboxEntry, InboxHead, ReceiptWatermark
from models.message import Message, Reaction, SentKey
from models.push import PushPlatform, PushRegistration
from models.user import Device, User

__all__ = [
    "Attachment",
    "Block",
    "Conversation",
    "ConversationKind",
    "Device",
    "EventKind",
    "InboxEntry",
    "InboxHead",
    "Member",
    "MemberRole",
    "Message",
    "PushPlatform",
    "PushRegistration",
    "Reaction",
    "ReceiptWatermark",
    "SentKey",
    "ThumbnailState",
    "UploadState",
    "User",
]
