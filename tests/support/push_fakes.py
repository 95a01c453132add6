"""Fake push services for tests: a WebPush endpoint that decrypts what it gets, subscription keys, the push settings."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from infra.push.webpush import new_vapid_keys
from tests.support.waiting import until

HANG = -1
# Bodies of scripted answers go out in chunks of this size.
CHUNK = 64 * 1024
# The servers' VAPID key pair, for the whole run.
VAPID_PRIVATE, VAPID_PUBLIC = new_vapid_keys()
# Short windows and backoffs, so the tests wait little.
PUSH_SETTINGS: dict[str, object] = {
    "push_vapid_private_key": VAPID_PRIVATE,
    "push_coalesce_seconds": 0.3,
    "push_retry_base_seconds": 0.05,
    "push_max_attempts": 3,
    "push_claim_idle_seconds": 1.0,
}
REGISTER_PUSH = "mutation P($input: PushRegistrationInput!) { registerPush(input: $input) }"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """A browser's PushSubscription: its key pair and auth secret."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def p256dh(self) -> str:
        return b64url(
            self.key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    def decrypt(self, body: bytes) -> Any:
        return json.loads(http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass(frozen=True)
class Reply:
    """A scripted answer: a status, headers, and a body of `body_bytes` zero bytes (a hostile endpoint's)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body_bytes: int = 0


def verify_vapid(authorization: str, *, public_key: str, audience: str) -> dict[str, Any]:
    """The claims of a `vapid t=…,k=…` header, after checking its key, ES256 signature, audience and expiry."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    values = dict(part.strip().split("=", 1) for part in params.split(","))
    assert values["k"] == public_key
    header_b64, claims_b64, signature_b64 = values["t"].split(".")
    assert json.loads(unb64url(header_b64))["alg"] == "ES256"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(public_key))
    signature = unb64url(signature_b64)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AssertionError("VAPID signature does not verify") from None
    claims: dict[str, Any] = json.loads(unb64url(claims_b64))
    assert claims["aud"] == audience
    assert time.time() < claims["exp"] <= time.time() + 86400
    assert claims["sub"].startswith("mailto:")
    return claims


class PushEndpoint:
    """A local WebPush service: records every POST and answers with the queued statuses (then 201).

    A status of HANG holds the request unanswered until `release()`. Queued `Reply`s, and
    the standing replies of `standing` (by subscription name, for every request to it),
    script the headers and body too; `cut_short` counts bodies the client hung up on.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: deque[int | Reply] = deque()
        self.standing: dict[str, Reply] = {}
        self.default_status = 201
        self.cut_short = 0
        self._released = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                reply = endpoint.standing.get(self.path.rsplit("/", 1)[-1])
                if reply is None:
                    queued = endpoint.statuses.popleft() if endpoint.statuses else endpoint.default_status
                    reply = queued if isinstance(queued, Reply) else Reply(queued)
                endpoint.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, reply.status)
                )
                if reply.status == HANG:
                    endpoint._released.wait(30)
                    return
                with contextlib.suppress(OSError):
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(reply.body_bytes))
                    self.end_headers()
                sent = 0
                try:
                    while sent < reply.body_bytes:
                        chunk = min(CHUNK, reply.body_bytes - sent)
                        self.wfile.write(bytes(chunk))
                        sent += chunk
                except OSError:
                    endpoint.cut_short += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str = "sub") -> str:
        return f"{self.origin}/push/{name}"

    def release(self) -> None:
        self._released.set()

    async def wait_for(self, count: int, *, timeout: float = 15) -> list[Received]:
        """Waits until at least `count` requests arrived."""
        await until(lambda: len(self.received) >= count, f"{count} push requests", timeout=timeout)
        return list(self.received)

    def __enter__(self) -> PushEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
