"""The before-send hook over HTTP: a signed POST of each message to the operator's URL, with a deadline.

Signed per the Standard Webhooks specification with the `standardwebhooks` library
(`webhook-id`, `webhook-timestamp`, `webhook-signature`), so the hook verifies with that
library. One `httpx.AsyncClient` per process keeps HTTP/1.1 connections to the hook alive
(a bounded pool), redirects are never followed, and at most `max_answer_bytes` of an answer
are read. Outside development the URL passes the checks of `resolvers/outbound.py` and the
request goes to the checked address; the check is repeated every `RECHECK_SECONDS` rather
than per send, since the name is the operator's and a lookup per message would cost a DNS
round trip on the send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from infra.settings import Settings
from resolvers.errors import BadUserInput, Unavailable
from resolvers.ids import MessageIds
from resolvers.outbound import check_url, pinned_url
from resolvers.ports import HookFailed, OutgoingMessage
from resolvers.services import BeforeSend

log = logging.getLogger("parley.before_send")

# How long a checked address of the hook's host is used before it is looked up and checked again.
RECHECK_SECONDS = 60.0
# An answer is a small JSON object; a replaced body of the longest allowed message, escaped, still fits.
MIN_ANSWER_BYTES = 64 * 1024
# Connections to the hook per process: sends beyond that wait for one, within their deadline.
MAX_CONNECTIONS = 64
EVENT_TYPE = "message.before_send"


class HttpBeforeSendHook:
    """POSTs `{"type", "timestamp", "data"}` to the hook and returns its JSON object answer."""

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout_seconds: float,
        allow_private: bool,
        ids: MessageIds,
        client: httpx.AsyncClient,
        max_answer_bytes: int = MIN_ANSWER_BYTES,
    ) -> None:
        self._url = url
        self._signer = Webhook(secret)
        self._timeout = timeout_seconds
        self._allow_private = allow_private
        self._ids = ids
        self._client = client
        self._max_answer_bytes = max_answer_bytes
        self._checked: tuple[str, float] | None = None  # (address, time.monotonic() of its check)
        self._checking = asyncio.Lock()

    async def _target(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """The URL to connect to, with its Host header and TLS extensions (the checked address outside development)."""
        if self._allow_private:
            return self._url, {}, {}
        async with self._checking:  # one lookup when the check expires, not one per waiting send
            if self._checked is None or time.monotonic() - self._checked[1] > RECHECK_SECONDS:
                try:
                    addresses = await check_url(self._url, allow_private=False, what="the before-send hook URL")
                except (BadUserInput, Unavailable) as refused:
                    raise HookFailed(refused.message) from None
                self._checked = (addresses[0], time.monotonic())
            address = self._checked[0]
        return pinned_url(self._url, address)

    def _payload(self, message: OutgoingMessage) -> bytes:
        """The request body: ids as the API shows them (numbers as strings, signed message ids)."""
        data = {
            "conversationId": str(message.conversation_id),
            "sender": {"id": str(message.sender_id), "username": message.sender_username},
            "clientId": message.client_id,
            "body": message.body,
            "mentions": [str(uid) for uid in message.mentions],
            "attachmentCount": message.attachment_count,
            "replyToId": self._ids.encode(message.reply_to) if message.reply_to is not None else None,
            "editOf": self._ids.encode(message.edit_of) if message.edit_of is not None else None,
        }
        event = {"type": EVENT_TYPE, "timestamp": datetime.now(UTC).isoformat(), "data": data}
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()

    def _signed(self, message: OutgoingMessage, payload: bytes) -> dict[str, str]:
        # The same send (sender, clientId) keeps its id, so a hook may recognise an attempt it already judged;
        # an edit is another message to judge (its text is new), so its text is part of its id.
        key = f"{message.sender_id}\x00{message.client_id}".encode()
        if message.edit_of is not None:
            key += b"\x00edit\x00" + (message.body or "").encode()
        webhook_id = "msg_" + hashlib.sha256(b"parley before-send\x00" + key).hexdigest()[:32]
        now = datetime.now(UTC)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(webhook_id, now, payload),
            "content-type": "application/json",
            "accept-encoding": "identity",  # read raw: no decompression can grow the answer
        }

    async def ask(self, message: OutgoingMessage) -> Mapping[str, Any]:
        """The hook's JSON object answer; `HookFailed` past the deadline, on a non-2xx, or when it is not JSON."""
        payload = self._payload(message)
        headers = self._signed(message, payload)
        try:
            async with asyncio.timeout(self._timeout):
                url, host, extensions = await self._target()
                async with self._client.stream(
                    "POST", url, content=payload, headers={**headers, **host}, extensions=extensions
                ) as response:
                    if not 200 <= response.status_code < 300:
                        raise HookFailed(f"HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > self._max_answer_bytes:
                            raise HookFailed(f"answer longer than {self._max_answer_bytes} bytes")
        except TimeoutError:
            raise HookFailed(f"no answer within {self._timeout * 1000:.0f} ms") from None
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise HookFailed(f"{type(error).__name__}: {error}"[:200]) from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise HookFailed("answer is not JSON") from None
        if not isinstance(answer, dict):
            raise HookFailed("answer is not a JSON object")
        return answer


@contextlib.asynccontextmanager
async def before_send_hook(settings: Settings, ids: MessageIds) -> AsyncIterator[BeforeSend | None]:
    """The hook with its connection pool when `PARLEY_HOOK_BEFORE_SEND_URL` is set, else None (closed on exit)."""
    url = settings.hook_before_send_url
    if not url:
        yield None
        return
    if not settings.hook_secret:
        raise RuntimeError("PARLEY_HOOK_BEFORE_SEND_URL needs PARLEY_HOOK_SECRET (a `whsec_…` secret)")
    try:
        Webhook(settings.hook_secret)
    except Exception as error:  # the library raises several kinds for a secret it cannot decode
        raise RuntimeError(
            f"PARLEY_HOOK_SECRET is not a Standard Webhooks secret (`whsec_` + base64): {error}"
        ) from None
    timeout = settings.hook_before_send_timeout_ms / 1000
    # httpx logs every request at INFO: one line per message sent would drown the log.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    # trust_env=False: no proxy or netrc from the environment decides where the messages go.
    client = httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
    )
    hook = HttpBeforeSendHook(
        url=url,
        secret=settings.hook_secret,
        timeout_seconds=timeout,
        allow_private=settings.hook_before_send_private_allowed,
        ids=ids,
        client=client,
        # A replaced body of the longest allowed message, every character escaped (\uXXXX\uXXXX).
        max_answer_bytes=max(MIN_ANSWER_BYTES, 12 * settings.max_body_length + 4096),
    )
    log.info(
        "before-send hook on (timeout %d ms, fail-%s)",
        settings.hook_before_send_timeout_ms,
        "open" if settings.hook_before_send_fail_open else "closed",
    )
    try:
        yield BeforeSend(hook=hook, fail_open=settings.hook_before_send_fail_open)
    finally:
        await client.aclose()
