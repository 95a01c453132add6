"""What every push sender returns, and how HTTP answers of push services map onto it."""

from __future__ import annotations

import email.utils
import enum
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Protocol

import httpx

from models import PushRegistration


class Outcome(enum.Enum):
    SENT = "sent"
    # The service says the channel no longer exists: forget the registration.
    GONE = "gone"
    # Worth trying again later (5xx, 429, timeouts, connection failures).
    RETRY = "retry"
    # Will not work however often it is tried (bad request, refused endpoint).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Result:
    """One send attempt's outcome; `retry_after` in seconds when the service asked for a delay."""

    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None


SENT = Result(Outcome.SENT)


@dataclass(frozen=True, slots=True)
class Notice:
    """What a notification says (every platform renders it its own way)."""

    conversation_id: str
    message_id: str
    sender_name: str
    count: int
    body: str | None

    def data(self) -> dict[str, str | int]:
        """The notification's JSON fields, as the WebPush payload and the APNs/FCM custom data."""
        fields: dict[str, str | int] = {
            "type": "message",
            "conversationId": self.conversation_id,
            "messageId": self.message_id,
            "sender": self.sender_name,
            "count": self.count,
        }
        if self.body is not None:
            fields["body"] = self.body
        return fields


class Sender(Protocol):
    """Sends one notification to one registration."""

    async def send(self, registration: PushRegistration, notice: Notice) -> Result: ...

    async def close(self) -> None: ...


def retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` delay in seconds (delta or HTTP date), if the response has one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def transient(response: httpx.Response) -> Result | None:
    """RETRY for 429 and 5xx answers (with their Retry-After), else None."""
    if response.status_code == 429 or response.status_code >= 500:
        return Result(Outcome.RETRY, f"HTTP {response.status_code}", retry_after(response))
    return None


def failure(error: Exception) -> Result:
    """RETRY for timeouts and connection failures."""
    return Result(Outcome.RETRY, f"{type(error).__name__}: {error}"[:300])
