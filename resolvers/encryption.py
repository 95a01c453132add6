"""End-to-end encrypted conversations: what the server checks of content it cannot read.

A conversation is encrypted from its creation and for good (`conversations.encrypted`).
There a message (or an edit) carries an opaque `ciphertext` (base64, at most the
`max_ciphertext_length` setting) and never a body; a plaintext conversation refuses
ciphertext. The send decides the mismatch in its own statement, as the moderation rules
(infra/pg_inbox_store.py `verdict`; infra/sql_inbox_store.py), and names it with one of
the refusals below; uploads for an encrypted conversation are opaque blobs
(`CreateUploadInput.encrypted`, resolvers/files.py). docs/security.md says what the
server still sees.
"""

from __future__ import annotations

import base64
import binascii
import re

from sqlalchemy import select
from sqlmodel import col

from models import Conversation
from resolvers.errors import BadUserInput
from resolvers.services import Services

# The send's refusals (SendOutcome.refusal) for content of the wrong kind.
NEEDS_CIPHERTEXT = "needs_ciphertext"
REFUSES_CIPHERTEXT = "refuses_ciphertext"
REFUSALS = frozenset({NEEDS_CIPHERTEXT, REFUSES_CIPHERTEXT})

# What an encrypted conversation's attachments are stored as: the server cannot tell more.
OPAQUE_CONTENT_TYPE = "application/octet-stream"

# The standard alphabet, padded or not (Olm and Megolm write it unpadded).
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def direct_key(low: int, high: int, *, encrypted: bool) -> str:
    """The unique key of a pair's DIRECT conversation; the encrypted one is another conversation (≤ 41 chars)."""
    return f"e:{low}:{high}" if encrypted else f"{low}:{high}"


def check_ciphertext(services: Services, ciphertext: str) -> str:
    """`ciphertext` if it is non-empty base64 within the size limit; `BadUserInput` otherwise."""
    limit = services.limits.max_ciphertext_length
    if len(ciphertext) > limit:
        raise BadUserInput(f"A ciphertext is at most {limit} characters.")
    if not _BASE64.fullmatch(ciphertext):
        raise BadUserInput("A ciphertext is base64.")
    unpadded = ciphertext.rstrip("=")
    try:
        base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadUserInput("A ciphertext is base64.") from error
    return ciphertext


def mismatch(encrypted: bool, *, body: str | None, ciphertext: str | None) -> str | None:
    """Why content of this kind cannot go to a conversation (one of REFUSALS), or None when it can."""
    if encrypted and (body is not None or ciphertext is None):
        return NEEDS_CIPHERTEXT
    if not encrypted and ciphertext is not None:
        return REFUSES_CIPHERTEXT
    return None


def refusal_error(refusal: str) -> BadUserInput:
    """The error a client gets for a refusal of REFUSALS."""
    if refusal == NEEDS_CIPHERTEXT:
        return BadUserInput("This conversation is end-to-end encrypted: send a ciphertext and no body.")
    return BadUserInput("This conversation is not end-to-end encrypted: it takes no ciphertext.")


async def is_encrypted(services: Services, conversation_id: int) -> bool:
    """Whether the conversation is end-to-end encrypted (False when there is none: the send's check says NOT_FOUND)."""
    async with services.db.session() as session:
        encrypted = await session.scalar(
            select(col(Conversation.encrypted)).where(col(Conversation.id) == conversation_id)
        )
    return bool(encrypted)
