"""File operations: upload tickets (downloads are `Attachment.url`, see graph/types.py)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from resolvers import files


@strawberry.type
class FormField:
    name: str
    value: str


@strawberry.type(
    description="Where and how to upload one file: an HTTP multipart POST to `url` with `fields`\\n"
    "first and the file last, as the form field `file`."
)
class UploadTicket:
    attachment_id: strawberry.ID
    url: str
    fields: list[FormField]
    expires_at: datetime


@strawberry.input
class CreateUploadInput:
    filename: str
    content_type: str
    size: int = strawberry.field(description="Bytes, as the client will upload them; enforced by the storage.")
    encrypted: bool | None = strawberry.field(
        default=False,
        description="A file the client encrypted for an end-to-end encrypted conversation: stored as "
        "application/octet-stream whatever contentType says, never checked or previewed. Only such uploads "
        "attach to an encrypted conversation's messages, and only there.",
    )


@strawberry.type
class FileMutation:
    @strawberry.mutation(
        description="A ticket to upload one file straight to storage; attach it to a message with "
        "`sendMessage(input: {attachmentIds})` before the ticket expires."
    )
    async def create_upload(self, info: Info, input: CreateUploadInput) -> UploadTicket:
        viewer = await info.context.require_viewer()
        ticket = await files.create_upload(
            info.context.services,
            viewer,
            filename=input.filename,
            content_type=input.content_type,
            size=input.size,
            base_url=info.context.public_base_url,
            encrypted=bool(input.encrypted),
        )
        return UploadTicket(
            attachment_id=strawberry.ID(str(ticket.attachment_id)),
            url=ticket.url,
            fields=[FormField(name=name, value=value) for name, value in ticket.fields],
            expires_at=ticket.expires_at,
        )
