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
# Ids and positions are 64-bit signed integers in the database (PostgreSQL bigint): a larger
# number would fail there as an overflow instead of simply naming no row.
MAX_BIGINT = 2**63 - 1


def _number(value: str) -> int | None:
    """`value` as a non-negative 64-bit integer, or None.

    ASCII digits only: `str.isdigit` also accepts "²" and other digits `int` refuses.
    """
    if not 0 < len(value) <= 19 or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if number <= MAX_BIGINT else None


def parse_row_id(value: str, *, what: str) -> int:
    """A numeric id from the API; `NotFound` for anything that cannot name a row."""
    number = _number(value)
    if number is None or number <= 0:
        raise NotFound(f"No such {what}.")
    return number


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
        numbers = [_number(part) for part in parts[:3]]
        if len(parts) != 4 or not parts[3].isascii() or None in numbers:
            raise BadUserInput(f"Not a message id: {value[:MAX_ID_LENGTH]!r}.")
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._sign(body), parts[3]):
            raise BadUserInput(f"Not a message id: {value!r}.")
        message_id, conversation_id, sender_id = (n for n in numbers if n is not None)
        return MessageRef(message_id, conversation_id, sender_id)


def parse_cursor(value: str) -> int:
    """An inbox position from a cursor string; `BadUserInput` for one no position can have."""
    position = _number(value)
    if position is None:
        raise BadUserInput("Not a valid cursor.")
    return position


def format_cursor(seq: int) -> str:
    """The cursor string of an inbox position (opaque to clients)."""
    return str(seq)
