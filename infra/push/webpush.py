"""WebPush (RFC 8030/8291/8292): an aes128gcm-encrypted payload, VAPID-signed, POSTed to the subscription.

pywebpush does the same with requests/aiohttp and connects wherever the endpoint's
name points at send time; here the endpoint is resolved and checked first
(`resolvers.push.check_endpoint`) and the request goes to the checked address, with
the name as Host and TLS server name, so DNS cannot be turned against our own
network between the check and the connection. Redirects are never followed, at
most a few KiB of an answer are read (`senders.post`), and `Retry-After` counts
only from the big push services (`senders.KNOWN_PUSH_HOSTS`).
"""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import http_ece
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from infra.push.senders import SENT, Outcome, PushContent, Result, failure, known_push_host, post, transient
from models import PushRegistration
from resolvers.errors import BadUserInput, Unavailable
from resolvers.push import check_endpoint

# A VAPID token's lifetime (RFC 8292 allows at most 24 h).
VAPID_TOKEN_SECONDS = 12 * 3600
# The payload must fit the 4096-byte record push services accept: long bodies are cut.
MAX_BODY_CHARACTERS = 1000


def b64url(data: bytes) -> str:
    """Unpadded base64url, as WebPush and JWTs write keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_vapid_keys() -> tuple[str, str]:
    """A new VAPID key pair: (private key, public key), both base64url of the raw P-256 values."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_numbers().private_value.to_bytes(32, "big")
    return b64url(private), public_key_of(key)


def public_key_of(key: ec.EllipticCurvePrivateKey) -> str:
    """The applicationServerKey clients subscribe with: the uncompressed public point, base64url."""
    return b64url(
        key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def load_vapid(private_key: str) -> Vapid02:
    """The VAPID signer of a private key from `parley vapid-keys` (raw base64url) or a PEM/DER text."""
    if private_key.lstrip().startswith("-----BEGIN"):
        return Vapid02.from_pem(private_key.encode())
    return Vapid02.from_string(private_key)


class WebPushSender:
    """Encrypts for the subscription's keys and POSTs with `TTL`, `Urgency` and a VAPID `Authorization`."""

    def __init__(
        self,
        *,
        vapid_private_key: str,
        subject: str,
        ttl_seconds: int,
        urgency: str,
        allow_private_endpoints: bool,
        timeout: float,
    ) -> None:
        self._vapid = load_vapid(vapid_private_key)
        self.public_key = public_key_of(self._vapid.private_key)
        self._subject = subject
        self._ttl = ttl_seconds
        self._urgency = urgency
        self._allow_private = allow_private_endpoints
        self._timeout = timeout
        # trust_env=False: no proxy or netrc from the environment decides where we connect.
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    def _authorization(self, audience: str) -> str:
        claims = {"aud": audience, "sub": self._subject, "exp": int(time.time()) + VAPID_TOKEN_SECONDS}
        return str(self._vapid.sign(claims)["Authorization"])

    async def send(self, registration: PushRegistration, content: PushContent) -> Result:  # noqa: PLR0911 - one return per outcome
        """One encrypted POST to the (re-checked) endpoint."""
        endpoint, p256dh, auth = registration.endpoint, registration.p256dh, registration.auth
        if not endpoint or not p256dh or not auth:
            return Result(Outcome.FAILED, "incomplete WebPush registration")
        try:
            addresses = await check_endpoint(endpoint, allow_private=self._allow_private)
        except BadUserInput as refused:
            return Result(Outcome.FAILED, f"endpoint refused: {refused.message}")
        except Unavailable as busy:  # every lookup thread is taken: later
            return Result(Outcome.RETRY, busy.message)
        parts = urlsplit(endpoint)
        assert parts.hostname is not None  # check_endpoint refuses URLs without a host
        address = addresses[0]
        host = f"[{address}]" if ":" in address else address
        url = urlunsplit(
            (parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path or "/", parts.query, "")
        )
        origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        data = content.data()
        if isinstance(data.get("body"), str):
            data["body"] = str(data["body"])[:MAX_BODY_CHARACTERS]
        body = http_ece.encrypt(
            json.dumps(data, separators=(",", ":")).encode(),
            salt=os.urandom(16),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=_unb64url(p256dh),
            auth_secret=_unb64url(auth),
            version="aes128gcm",
        )
        headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1],
            "Authorization": self._authorization(origin),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl),
            "Urgency": self._urgency,
            # A newer notification of the same conversation replaces an undelivered older one.
            "Topic": f"c{content.conversation_id}"[:32],
        }
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        try:
            response = await post(
                self._http, url, deadline=self._timeout, content=body, headers=headers, extensions=extensions
            )
        except httpx.HTTPError as error:
            return failure(error)
        if response.status_code in (200, 201, 202):
            return SENT
        if response.status_code in (404, 410):
            return Result(Outcome.GONE, f"HTTP {response.status_code}")
        # Anyone can run an endpoint: one answering "429, Retry-After: 300" gets our own backoff instead.
        return transient(response, honour_retry_after=known_push_host(parts.hostname)) or Result(
            Outcome.FAILED, f"HTTP {response.status_code}: {response.text[:200]}"
        )

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()
