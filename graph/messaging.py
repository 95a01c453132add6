"""Messaging operations: send, acknowledge, mark read, typing, and the event stream."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from graph.context import Info
from graph.conversations import _conversation_id, _user_ids
from graph.reports import api_event
from graph.types import Event, Message, SendMessageInput
from resolvers import events, lifecycle, messages, receipts
from resolvers import typing as typing_indicators


@strawberry.type
class MessagingQuery:
    @strawberry.field(
        description="Pull-based sync (e.g. after a push wake-up): this device's pending durable events "
        "after `after`, oldest first."
    )
    async def pending_events(self, info: Info, after: str | None = None, first: int | None = 100) -> list[Event]:
        viewer = await info.context.require_viewer()
        views = await events.pending_events(
            info.context.services, viewer, after=after, first=100 if first is None else first
        )
        return [api_event(view, info) for view in views]


@strawberry.type
class MessagingMutation:
    @strawberry.mutation(description="Persists, then fans out. The returned message is the SENT receipt.")
    async def send_message(self, info: Info, input: SendMessageInput) -> Message:
        viewer = await info.context.require_viewer()
        view = await messages.send_message(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(input.conversation_id),
            client_id=input.client_id,
            body=input.body,
            attachment_ids=[str(a) for a in input.attachment_ids or []],
            # A forged id is BAD_USER_INPUT here; one of another conversation in the use case.
            reply_to=info.context.ids.decode(str(input.reply_to_id)) if input.reply_to_id is not None else None,
            mentions=_user_ids(input.mentions or []),
            ciphertext=input.ciphertext,
        )
        return Message.from_view(view, info)

    @strawberry.mutation(
        description="Changes the text of your own message within the edit window; every member's devices "
        "get a MessageEditedEvent. In an end-to-end encrypted conversation the new content is `ciphertext` "
        "(and no body); elsewhere `body` (and no ciphertext)."
    )
    async def edit_message(
        self, info: Info, message_id: strawberry.ID, body: str | None = None, ciphertext: str | None = None
    ) -> bool:
        viewer = await info.context.require_viewer()
        ref = info.context.ids.decode(str(message_id))
        await lifecycle.edit_message(info.context.services, viewer, ref, body, ciphertext=ciphertext)
        return True

    @strawberry.mutation(
        description="Deletes a message for everyone: your own within the delete window, or any in a group "
        "you own or administer. Members get a MessageDeletedEvent; where it is still pending it is gone."
    )
    async def delete_message(self, info: Info, message_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        ref = info.context.ids.decode(str(message_id))
        await lifecycle.delete_message(info.context.services, viewer, ref)
        return True

    @strawberry.mutation(description="Adds your reaction (exactly one emoji) to a message; again is a no-op.")
    async def react(self, info: Info, message_id: strawberry.ID, emoji: str) -> bool:
        viewer = await info.context.require_viewer()
        ref = info.context.ids.decode(str(message_id))
        await lifecycle.react(info.context.services, viewer, ref, emoji, added=True)
        return True

    @strawberry.mutation(description="Removes your reaction from a message; removing an absent one is a no-op.")
    async def unreact(self, info: Info, message_id: strawberry.ID, emoji: str) -> bool:
        viewer = await info.context.require_viewer()
        ref = info.context.ids.decode(str(message_id))
        await lifecycle.react(info.context.services, viewer, ref, emoji, added=False)
        return True

    @strawberry.mutation(
        description="This device has received every durable event up to and including `cursor`. "
        "Emits DELIVERED receipts."
    )
    async def acknowledge(self, info: Info, cursor: str) -> bool:
        viewer = await info.context.require_viewer()
        await receipts.acknowledge(info.context.services, viewer, cursor)
        return True

    @strawberry.mutation(
        description="The viewer has read these messages (typically the newest one per sender). "
        "Emits READ receipts to their senders. The newest of them is the viewer's read position in the "
        "conversation (it never moves back): unreadCount and unreadMentions are recounted from it, and the "
        "viewer's devices get a ReadStateEvent."
    )
    async def mark_read(self, info: Info, conversation_id: strawberry.ID, message_ids: list[strawberry.ID]) -> bool:
        viewer = await info.context.require_viewer()
        await receipts.mark_read(
            info.context.services,
            viewer,
            info.context.ids,
            conversation_id=_conversation_id(conversation_id),
            message_ids=[str(m) for m in message_ids],
        )
        return True

    @strawberry.mutation
    async def set_typing(self, info: Info, conversation_id: strawberry.ID, typing: bool) -> bool:
        viewer = await info.context.require_viewer()
        await typing_indicators.set_typing(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            typing=typing,
        )
        return True


@strawberry.type
class MessagingSubscription:
    @strawberry.subscription(
        description="This device's event stream over graphql-transport-ws: first every pending durable\n"
        "event after `after` (default: after the device's last acknowledged cursor), then\n"
        "live events, with no gap and no duplicate between the two."
    )
    async def events(self, info: Info, after: str | None = None) -> AsyncGenerator[Event, None]:
        viewer = await info.context.require_viewer()
        async for view in events.stream_events(info.context.services, viewer, after=after):
            yield api_event(view, info)
