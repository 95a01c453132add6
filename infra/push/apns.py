"""APNs over HTTP/2 with token (ES256 JWT) auth.

httpx with h2 rather than aioapns, which hard-codes Apple's hosts and parses every
DATA frame as JSON (docs/upstream-notes.md): the endpoint is a setting so tests use a local
HTTP/2 server. One client, so one multiplexed connection is reused; the provider
token is renewed every 50 minutes (Apple refuses tokens older than an hour and
throttles renewing more often than every 20).
"""

from __future__ import annotations

import json
import time

import httpx

from infra.push.jwt import es256
from infra.push.senders import SENT, Answer, Outcome, PushContent, Result, failure, post, transient
from models import PushRegistration

TOKEN_LIFETIME_SECONDS = 50 * 60
# Reasons (with 400) meaning the token will never work again: the registration goes.
GONE_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})


class ApnsSender:
    """POST /3/device/<token> with `authorization: bearer <JWT>` and an alert payload."""

    def __init__(
        self, *, key: str, key_id: str, team_id: str, topic: str, endpoint: str, ttl_seconds: int, timeout: float
    ) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._ttl = ttl_seconds
        self._token = ""
        self._token_at = 0.0
        self._timeout = timeout
        es256(key, {"iss": team_id, "iat": 0}, kid=key_id)  # a bad key fails at startup, not per send
        # APNs speaks HTTP/2 only: no HTTP/1.1 fallback (and h2 with prior knowledge on a plain-http test endpoint).
        self._http = httpx.AsyncClient(base_url=endpoint, http1=False, http2=True, timeout=timeout, trust_env=False)

    def _provider_token(self, *, renew: bool = False) -> str:
        now = time.time()
        if renew or not self._token or now - self._token_at > TOKEN_LIFETIME_SECONDS:
            self._token = es256(self._key, {"iss": self._team_id, "iat": int(now)}, kid=self._key_id)
            self._token_at = now
        return self._token

    def _payload(self, content: PushContent) -> bytes:
        title = content.sender_name
        body = (
            content.body
            if content.body is not None
            else ("New message" if content.count == 1 else f"{content.count} new messages")
        )
        aps = {"alert": {"title": title, "body": body[:1000]}, "thread-id": content.conversation_id, "sound": "default"}
        return json.dumps({"aps": aps, **content.data()}, separators=(",", ":")).encode()

    async def send(self, registration: PushRegistration, content: PushContent) -> Result:
        """One request on the shared HTTP/2 connection; an expired provider token is renewed once."""
        if not registration.token:
            return Result(Outcome.FAILED, "APNs registration without a token")
        for renew in (False, True):
            headers = {
                "authorization": f"bearer {self._provider_token(renew=renew)}",
                "apns-topic": self._topic,
                "apns-push-type": "alert",
                "apns-priority": "10",
                "apns-expiration": str(int(time.time()) + self._ttl),
                "apns-collapse-id": f"c{content.conversation_id}"[:64],
                "content-type": "application/json",
            }
            try:
                response = await post(
                    self._http,
                    f"/3/device/{registration.token}",
                    deadline=self._timeout,
                    content=self._payload(content),
                    headers=headers,
                )
            except httpx.HTTPError as error:
                return failure(error)
            if response.status_code == 200:
                return SENT
            reason = _reason(response)
            if response.status_code == 403 and reason == "ExpiredProviderToken" and not renew:
                continue
            if response.status_code == 410 or (response.status_code == 400 and reason in GONE_REASONS):
                return Result(Outcome.GONE, f"HTTP {response.status_code} {reason}")
            return transient(response) or Result(Outcome.FAILED, f"HTTP {response.status_code} {reason}")
        return Result(Outcome.FAILED, "provider token refused")

    async def close(self) -> None:
        """Closes the HTTP/2 connection."""
        await self._http.aclose()


def _reason(response: Answer) -> str:
    try:
        return str(response.json().get("reason", ""))
    except (ValueError, AttributeError):
        return ""
