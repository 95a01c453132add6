"""Unread badges, read state, mentions and per-user conversation state: their documents and helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from resolvers.ids import MessageIds
from tests.support.client import Json, Subscription
from tests.support.helpers import EVENT_FIELDS, Person
from tests.support.settings import TEST_SECRET

STATE_FIELDS = "id unreadCount unreadMentions muted mutedUntil archived pinned"
TOTAL = "{ me { unreadTotal { conversations messages mentions mutedConversations mutedMessages } } }"
READ_STATE_FIELDS = "cursor conversationId readUpTo unreadCount unreadMentions at"
EVENTS = (
    "subscription E($after: String) { events(after: $after) { "
    f"{EVENT_FIELDS} ... on ReadStateEvent {{ {READ_STATE_FIELDS} }} }} }}"
)
SEND = (
    "mutation S($input: SendMessageInput!) { sendMessage(input: $input) "
    "{ id body conversationId mentions { id username } } }"
)
LIST = f"query L($archived: Boolean, $first: Int) {{ conversations(archived: $archived, first: $first) {{ {STATE_FIELDS} }} }}"
IDS = MessageIds(TEST_SECRET)


def number(message_id: str) -> int:
    """The server's row id inside a message id (ids order messages within a conversation)."""
    return IDS.decode(message_id).message_id


async def send(person: Person, conversation_id: str, body: str, *, mentions: Sequence[Person] = ()) -> Json:
    """Sends a message that mentions `mentions`; returns it with its mentioned users."""
    data = await person.data(
        SEND,
        input={
            "conversationId": conversation_id,
            "clientId": uuid.uuid4().hex,
            "body": body,
            "mentions": [m.user_id for m in mentions],
        },
    )
    message: Json = data["sendMessage"]
    return message


async def state(person: Person, conversation_id: str) -> Json:
    """The person's own view of one conversation (badges, mute, archive, pin)."""
    data = await person.data(f"query C($id: ID!) {{ conversation(id: $id) {{ {STATE_FIELDS} }} }}", id=conversation_id)
    conversation: Json = data["conversation"]
    return conversation


async def counts(person: Person, conversation_id: str) -> tuple[int, int]:
    """(unreadCount, unreadMentions) of one conversation as the person sees it."""
    found = await state(person, conversation_id)
    return found["unreadCount"], found["unreadMentions"]


async def total(person: Person) -> Json:
    """The person's badge (`me { unreadTotal }`)."""
    result: Json = (await person.data(TOTAL))["me"]["unreadTotal"]
    return result


async def listed(person: Person, *, archived: bool = False) -> list[str]:
    """The ids of the person's conversation list, in its order."""
    data = await person.data(LIST, archived=archived, first=100)
    return [c["id"] for c in data["conversations"]]


async def set_state(person: Person, field: str, conversation_id: str, **arguments: Any) -> Json:
    """Calls `muteConversation`, `archiveConversation` or `pinConversation` with `arguments`; the conversation."""
    declared = ", ".join(f"${name}: {_type(value)}" for name, value in arguments.items())
    passed = ", ".join(f"{name}: ${name}" for name in arguments)
    data = await person.data(
        f"mutation M($c: ID!, {declared}) {{ {field}(conversationId: $c, {passed}) {{ {STATE_FIELDS} }} }}",
        c=conversation_id,
        **arguments,
    )
    conversation: Json = data[field]
    return conversation


def _type(value: Any) -> str:
    return "Boolean!" if isinstance(value, bool) else "DateTime"


@asynccontextmanager
async def read_states(person: Person, after: str | None = None) -> AsyncIterator[Subscription]:
    """The person's device's events stream, with the read state fields."""
    async with person.socket() as socket:
        yield await socket.subscribe(EVENTS, after=after)


async def next_read_state(sub: Subscription, timeout: float = 10) -> Json:
    """The next ReadStateEvent on a stream, skipping other events."""
    while True:
        event: Json = (await sub.next(timeout))["events"]
        if event["__typename"] == "ReadStateEvent":
            return event
