"""What every push sender returns, and how HTTP answers of push services map onto it.

A WebPush endpoint is any server a client names, so its answers are untrusted: at
most `MAX_ANSWER_BYTES` of a body is read, the whole exchange has a deadline, and its
`Retry-After` counts only when the endpoint is one of `KNOWN_PUSH_HOSTS`.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import json
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol

import httpx

from models import PushRegistration

# What is read of an answer's body: an error's JSON fits; an endless body stops here.
MAX_ANSWER_BYTES = 16 * 1024
# The WebPush services whose `Retry-After` the worker honours (APNs and FCM are configured
# endpoints, trusted as such): exact names, and suffixes starting with a dot.
KNOWN_PUSH_HOSTS = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "web.push.apple.com",
    ".notify.windows.com",
)


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
class PushContent:
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

    async def send(self, registration: PushRegistration, content: PushContent) -> Result: ...

    async def close(self) -> None: ...


def known_push_host(host: str) -> bool:
    """Whether `host` is one of the big push services (`KNOWN_PUSH_HOSTS`), whose `Retry-After` is honoured."""
    host = host.lower().rstrip(".")
    return any(host.endswith(name) if name.startswith(".") else host == name for name in KNOWN_PUSH_HOSTS)


@dataclass(frozen=True, slots=True)
class Answer:
    """A push service's answer: its status, headers and at most `MAX_ANSWER_BYTES` of its body."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        """The (possibly cut) body as text."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON (`ValueError` if it is not, or was cut)."""
        return json.loads(self.content)


async def post(client: httpx.AsyncClient, url: str, *, deadline: float, **request: Any) -> Answer:
    """POSTs and reads at most `MAX_ANSWER_BYTES` of the answer, all within `deadline` seconds.

    httpx has no bound on a body's size, and its timeouts are per read: a trickled body
    would hold the request indefinitely. The body is read raw (and asked for without
    content coding), so no decompression can grow it. `httpx.TimeoutException` past the deadline.
    """
    headers = httpx.Headers(request.pop("headers", None))
    headers.setdefault("accept-encoding", "identity")
    try:
        async with asyncio.timeout(deadline), client.stream("POST", url, headers=headers, **request) as response:
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk[: MAX_ANSWER_BYTES - len(body)]
                if len(body) >= MAX_ANSWER_BYTES:
                    break  # leaving `stream` closes the response (and a connection with unread bytes)
            return Answer(response.status_code, response.headers, bytes(body))
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {deadline:g} s") from None


def retry_after(response: Answer) -> float | None:
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


def transient(response: Answer, *, honour_retry_after: bool = True) -> Result | None:
    """RETRY for 429 and 5xx answers (with their Retry-After, if honoured), else None."""
    if response.status_code == 429 or response.status_code >= 500:
        delay = retry_after(response) if honour_retry_after else None
        return Result(Outcome.RETRY, f"HTTP {response.status_code}", delay)
    return None


def failure(error: Exception) -> Result:
    """RETRY for timeouts and connection failures."""
    return Result(Outcome.RETRY, f"{type(error).__name__}: {error}"[:300])
