"""FCM HTTP v1 with a service account's OAuth token.

The token is fetched with the JWT-bearer grant (RFC 7523) and renewed five minutes
before it expires. Written on httpx rather than firebase-admin, which is synchronous
and heavy (docs/upstream-notes.md), or google-auth, whose refresh runs a blocking HTTP request.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from infra.push.jwt import rs256
from infra.push.senders import SENT, Answer, Outcome, PushContent, Result, failure, post, transient
from models import PushRegistration

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
RENEW_BEFORE_SECONDS = 300


class TokenRefused(Exception):
    """The OAuth token endpoint did not answer 200."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"HTTP {answer.status_code}")
        self.answer = answer


class FcmSender:
    """POST /v1/projects/<project>/messages:send with a data message for the registration token."""

    def __init__(
        self, *, service_account: str, endpoint: str, token_url: str, ttl_seconds: int, timeout: float
    ) -> None:
        account: dict[str, Any] = json.loads(service_account)
        self._project = str(account["project_id"])
        self._email = str(account["client_email"])
        self._key = str(account["private_key"])
        self._key_id = account.get("private_key_id")
        self._token_url = token_url
        self._endpoint = endpoint.rstrip("/")
        self._ttl = ttl_seconds
        self._access_token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self._timeout = timeout
        self._http = httpx.AsyncClient(http2=True, timeout=timeout, trust_env=False)

    async def _token(self, *, renew: bool = False) -> str:
        async with self._lock:
            if renew or time.time() > self._expires_at - RENEW_BEFORE_SECONDS:
                now = int(time.time())
                claims = {"iss": self._email, "scope": SCOPE, "aud": self._token_url, "iat": now, "exp": now + 3600}
                response = await post(
                    self._http,
                    self._token_url,
                    deadline=self._timeout,
                    data={
                        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                        "assertion": rs256(self._key, claims, kid=self._key_id),
                    },
                )
                if response.status_code != 200:
                    raise TokenRefused(response)
                answer = response.json()
                self._access_token = str(answer["access_token"])
                self._expires_at = now + float(answer.get("expires_in", 3600))
            return self._access_token

    def _message(self, registration: PushRegistration, content: PushContent) -> dict[str, Any]:
        return {
            "message": {
                "token": registration.token,
                # Data values must be strings.
                "data": {key: str(value) for key, value in content.data().items()},
                "android": {"priority": "HIGH", "ttl": f"{self._ttl}s", "collapse_key": f"c{content.conversation_id}"},
                "apns": {"headers": {"apns-collapse-id": f"c{content.conversation_id}"[:64]}},
            }
        }

    async def send(self, registration: PushRegistration, content: PushContent) -> Result:  # noqa: PLR0911 - one return per outcome
        """One request; a refused access token (401) is renewed once."""
        if not registration.token:
            return Result(Outcome.FAILED, "FCM registration without a token")
        url = f"{self._endpoint}/v1/projects/{self._project}/messages:send"
        for renew in (False, True):
            try:
                token = await self._token(renew=renew)
                response = await post(
                    self._http,
                    url,
                    deadline=self._timeout,
                    json=self._message(registration, content),
                    headers={"authorization": f"Bearer {token}"},
                )
            except TokenRefused as refused:
                return transient(refused.answer) or Result(
                    Outcome.FAILED, f"OAuth token: HTTP {refused.answer.status_code}"
                )
            except httpx.HTTPError as error:
                return failure(error)
            if response.status_code == 200:
                return SENT
            if response.status_code == 401 and not renew:
                continue
            code = _error_code(response)
            if code == "UNREGISTERED" or response.status_code == 404:
                return Result(Outcome.GONE, f"HTTP {response.status_code} {code}")
            return transient(response) or Result(Outcome.FAILED, f"HTTP {response.status_code} {code}")
        return Result(Outcome.FAILED, "access token refused")

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()


def _error_code(response: Answer) -> str:
    """FCM's errorCode from the error details (UNREGISTERED, INVALID_ARGUMENT…), else the status."""
    try:
        error = response.json().get("error", {})
        for detail in error.get("details", ()):
            if detail.get("errorCode"):
                return str(detail["errorCode"])
        return str(error.get("status", ""))
    except (ValueError, AttributeError):
        return ""
