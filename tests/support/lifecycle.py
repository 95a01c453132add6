"""Replies, edits, deletes and reactions: their GraphQL documents and helpers to send and read them."""

from __future__ import annotations

import uuid

from tests.support.client import Json
from tests.support.helpers import Person

MESSAGE = "id clientId conversationId body replyToId sender { id }"
LIFECYCLE_EVENTS = f"""
  __typename
  ... on MessageEvent {{ cursor message {{ {MESSAGE} }} }}
  ... on ReceiptEvent {{ cursor }}
  ... on ConversationEvent {{ cursor change }}
  ... on MessageEditedEvent {{ cursor messageId conversationId body editedAt editor {{ id }} }}
  ... on MessageDeletedEvent {{ cursor messageId conversationId deletedAt deletedBy {{ id }} }}
  ... on ReactionEvent {{ cursor messageId conversationId emoji added at user {{ id }} }}
"""
PENDING = f"query P($after: String) {{ pendingEvents(after: $after, first: 500) {{ {LIFECYCLE_EVENTS} }} }}"
STREAM = f"subscription E($after: String) {{ events(after: $after) {{ {LIFECYCLE_EVENTS} }} }}"
SEND = f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE} }} }}"
EDIT = "mutation E($m: ID!, $b: String!) { editMessage(messageId: $m, body: $b) }"
DELETE = "mutation D($m: ID!) { deleteMessage(messageId: $m) }"
REACT = "mutation R($m: ID!, $e: String!) { react(messageId: $m, emoji: $e) }"
UNREACT = "mutation U($m: ID!, $e: String!) { unreact(messageId: $m, emoji: $e) }"


async def send(
    person: Person, conversation_id: str, body: str, *, reply_to: str | None = None, client_id: str | None = None
) -> Json:
    """Sends a message (optionally a reply) and returns it."""
    data = await person.data(
        SEND,
        input={
            "conversationId": conversation_id,
            "clientId": client_id or uuid.uuid4().hex,
            "body": body,
            "replyToId": reply_to,
        },
    )
    message: Json = data["sendMessage"]
    return message


async def pending(person: Person, after: str | None = None) -> list[Json]:
    """This device's pending events with the lifecycle fields."""
    events: list[Json] = (await person.data(PENDING, after=after))["pendingEvents"]
    return events


def about(events: list[Json], message_id: str) -> list[str]:
    """What happened to one message, in order: the kinds of the events naming it."""
    kinds = []
    for event in events:
        named = event.get("messageId") or (event.get("message") or {}).get("id")
        if named == message_id:
            kinds.append(event["__typename"])
    return kinds
