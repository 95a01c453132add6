"""Test helpers that read like the product: register people, make groups, send, listen."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.client import HttpClient, Json, Subscription, WsClient, ws_connect

PASSWORD = "correct horse battery"

USER_FIELDS = "id username displayName online lastSeen"
CONVERSATION_FIELDS = f"id kind title muted createdAt members {{ role joinedAt user {{ {USER_FIELDS} }} }}"
MESSAGE_FIELDS = "id clientId conversationId body sentAt attachments { id } sender { id username }"
EVENT_FIELDS = f"""
  __typename
  ... on MessageEvent {{ cursor message {{ {MESSAGE_FIELDS} }} }}
  ... on ReceiptEvent {{ cursor receipt {{ conversationId messageId status at user {{ id }} }} }}
  ... on ConversationEvent {{ cursor change at conversation {{ id title members {{ role user {{ id }} }} }}
                              users {{ id }} actor {{ id }} }}
  ... on TypingEvent {{ conversationId typing user {{ id }} }}
  ... on MessageEditedEvent {{ cursor }}
  ... on MessageDeletedEvent {{ cursor }}
  ... on ReactionEvent {{ cursor }}
  ... on DeviceListEvent {{ cursor }}
  ... on OneTimeKeysLowEvent {{ cursor }}
"""
EVENTS = f"subscription Events($after: String) {{ events(after: $after) {{ {EVENT_FIELDS} }} }}"
AUTH = f"token user {{ {USER_FIELDS} }} device {{ id name createdAt }}"


UPLOAD = (
    "mutation U($input: CreateUploadInput!) { createUpload(input: $input) "
    "{ attachmentId url expiresAt fields { name value } } }"
)
ATTACHMENT_FIELDS = "id filename contentType size url thumbnailUrl"


async def post_form(ticket: Json, filename: str, content_type: str, data: bytes) -> httpx.Response:
    """The multipart POST of an upload ticket, as any client does it: the fields in order, then the file."""
    fields = [(field["name"], (None, field["value"])) for field in ticket["fields"]]
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(ticket["url"], files=[*fields, ("file", (filename, data, content_type))])


def unique_name(base: str = "user") -> str:
    """A username no other test uses."""
    return f"{base}_{uuid.uuid4().hex[:10]}"


@dataclass
class Person:
    """A registered user logged in on one device."""

    api: Api
    username: str
    token: str
    user_id: str
    device_id: str
    http: HttpClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = HttpClient(self.api.url, self.token)

    async def data(self, query: str, **variables: Any) -> Json:
        return await self.http.data(query, **variables)

    async def error(self, query: str, **variables: Any) -> str:
        """The `extensions.code` of a call that must fail."""
        return (await self.http.error(query, **variables)).code

    async def other_device(self, name: str = "second device") -> Person:
        """The same user logged in again: a new device with its own events."""
        return await self.api.login(self.username, device_name=name)

    @asynccontextmanager
    async def events(self, after: str | None = None) -> AsyncIterator[Subscription]:
        """This device's live event stream."""
        async with self.socket() as socket:
            yield await socket.subscribe(EVENTS, after=after)

    @asynccontextmanager
    async def socket(self) -> AsyncIterator[WsClient]:
        async with ws_connect(self.api.ws_url, self.token) as socket:
            yield socket

    async def pending(self, after: str | None = None, first: int = 100) -> list[Json]:
        data = await self.data(
            f"query P($after: String, $first: Int) {{ pendingEvents(after: $after, first: $first) {{ {EVENT_FIELDS} }} }}",
            after=after,
            first=first,
        )
        events: list[Json] = data["pendingEvents"]
        return events

    async def acknowledge(self, cursor: str) -> None:
        await self.data("mutation A($c: String!) { acknowledge(cursor: $c) }", c=cursor)

    async def send(self, conversation_id: str, body: str, *, client_id: str | None = None) -> Json:
        data = await self.data(
            f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE_FIELDS} }} }}",
            input={
                "conversationId": conversation_id,
                "clientId": client_id or uuid.uuid4().hex,
                "body": body,
            },
        )
        message: Json = data["sendMessage"]
        return message

    async def ticket(self, filename: str, content_type: str, size: int) -> Json:
        """An upload ticket (createUpload)."""
        data = await self.data(UPLOAD, input={"filename": filename, "contentType": content_type, "size": size})
        ticket: Json = data["createUpload"]
        return ticket

    async def upload(self, filename: str, content_type: str, data: bytes, *, declared_size: int | None = None) -> str:
        """Uploads a file as an app does (ticket, then the form POST); returns its attachment id."""
        ticket = await self.ticket(filename, content_type, len(data) if declared_size is None else declared_size)
        response = await post_form(ticket, filename, content_type, data)
        assert response.status_code in (200, 201, 204), response.text
        return str(ticket["attachmentId"])

    async def send_files(
        self, conversation_id: str, attachment_ids: list[str], *, body: str | None = None, client_id: str | None = None
    ) -> Json:
        """Sends a message with attachments; returns it with its attachments' URLs."""
        data = await self.data(
            f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE_FIELDS} "
            f"attachments {{ {ATTACHMENT_FIELDS} }} }} }}",
            input={
                "conversationId": conversation_id,
                "clientId": client_id or uuid.uuid4().hex,
                "body": body,
                "attachmentIds": attachment_ids,
            },
        )
        message: Json = data["sendMessage"]
        return message

    async def mark_read(self, conversation_id: str, *message_ids: str) -> None:
        await self.data(
            "mutation R($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }",
            c=conversation_id,
            m=list(message_ids),
        )

    async def direct_with(self, other: Person) -> str:
        data = await self.data(
            f"mutation D($u: ID!) {{ startDirectConversation(userId: $u) {{ {CONVERSATION_FIELDS} }} }}",
            u=other.user_id,
        )
        return str(data["startDirectConversation"]["id"])

    async def create_group(self, title: str = "group", *, members: list[Person]) -> str:
        data = await self.data(
            f"mutation G($t: String!, $m: [ID!]!) {{ createGroup(title: $t, memberIds: $m) {{ {CONVERSATION_FIELDS} }} }}",
            t=title,
            m=[m.user_id for m in members],
        )
        return str(data["createGroup"]["id"])

    async def drain(self) -> list[Json]:
        """Acknowledges everything pending (so later assertions see only new events)."""
        # Pages of the server's default size; every durable event has a cursor to page after.
        events: list[Json] = []
        while True:
            page = await self.pending(after=events[-1]["cursor"] if events else None)
            events += page
            if len(page) < 100:
                break
        if events:
            await self.acknowledge(events[-1]["cursor"])
        return events


@dataclass
class Api:
    """A running Parley server."""

    url: str
    ws_url: str
    mode: str

    @property
    def anonymous(self) -> HttpClient:
        return HttpClient(self.url)

    async def register(self, name: str = "user", *, device_name: str = "phone") -> Person:
        username = unique_name(name)
        data = await self.anonymous.data(
            f"mutation R($u: String!, $p: String!, $d: String) {{ register(username: $u, password: $p, deviceName: $d) {{ {AUTH} }} }}",
            u=username,
            p=PASSWORD,
            d=device_name,
        )
        payload = data["register"]
        return Person(self, username, payload["token"], payload["user"]["id"], payload["device"]["id"])

    async def login(self, username: str, *, device_name: str = "phone") -> Person:
        data = await self.anonymous.data(
            f"mutation L($u: String!, $p: String!, $d: String) {{ login(username: $u, password: $p, deviceName: $d) {{ {AUTH} }} }}",
            u=username,
            p=PASSWORD,
            d=device_name,
        )
        payload = data["login"]
        return Person(self, username, payload["token"], payload["user"]["id"], payload["device"]["id"])

    async def people(self, *names: str) -> list[Person]:
        return [await self.register(name) for name in names]
