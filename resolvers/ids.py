"""Public ids: plain numbers for rows that live, signed compound ids for messages.

A message id carries its conversation and sender, signed with the secret key,
so a READ receipt can be routed to its sender after the message row is gone
(it is deleted once delivered) and cannot be forged for another conversation.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from resolvers.errors import BadUserInput, NotFound

MAX_ID_LENGTH = 100


def parse_row_id(value: str, *, what: str) -> int:
    """A numeric id from the API; `NotFound` for anything that cannot name a row."""
    if len(value) > 20 or not value.isdigit() or int(value) <= 0:
        raise NotFound(f"No such {what}.")
    return int(value)


@dataclass(frozen=True)
class MessageRef:
    """What a message id says: the row, its conversation and its sender."""

    message_id: int
    conversation_id: int
    sender_id: int


class MessageIds:
    """Encodes and checks message ids."""

    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"parley message id\x00" + secret_key.encode()).digest()
        # Every receipt of a group message names the same message: sign it once, not per reader.
        self._cached_encode = lru_cache(maxsize=4096)(self._encode)

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:16]

    def encode(self, ref: MessageRef) -> str:
        """The public id of a message."""
        return self._cached_encode(ref)

    def _encode(self, ref: MessageRef) -> str:
        body = f"{ref.message_id}.{ref.conversation_id}.{ref.sender_id}"
        return f"{body}.{self._sign(body)}"

    def decode(self, value: str) -> MessageRef:
        """The reference inside an id; `BadUserInput` for one this server did not issue."""
        parts = value.split(".") if len(value) <= MAX_ID_LENGTH else []
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            raise BadUserInput(f"Not a message id: {value[:MAX_ID_LENGTH]!r}.")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body), parts[3]):
            raise BadUserInput(f"Not a message id: {value!r}.")
        return MessageRef(int(parts[0]), int(parts[1]), int(parts[2]))


def parse_cursor(value: str) -> int:
    """An inbox position from a cursor string."""
    if not value.isdigit() or len(value) > 19:
        raise BadUserInput("Not a valid cursor.")
    return int(value)


def format_cursor(seq: int) -> str:
    """The cursor string of an inbox position (opaque to clients)."""
    return str(seq)
