"""The APNs and FCM senders against local servers: a plain HTTP/2 server for APNs, HTTP for FCM and its token endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.events
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from infra.push.apns import ApnsSender
from infra.push.fcm import FcmSender
from infra.push.runtime import worker_config
from infra.push.senders import Outcome, PushContent, known_push_host
from infra.push.webpush import WebPushSender, new_vapid_keys
from infra.push.worker import retry_delay
from infra.settings import Settings
from models import PushPlatform, PushRegistration
from tests.support.push_fakes import CHUNK, PushEndpoint, Reply, Subscription, b64url

CONTENT = PushContent(conversation_id="7", message_id="m.signed", sender_name="Alice", count=2, body=None)
APNS_TOKEN = "ab" * 32


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    header, claims, signature = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(claims)), f"{header}.{claims}".encode(), _unb64(signature)


@dataclass
class H2Request:
    connection: int
    headers: dict[str, str]
    body: bytes


@dataclass
class H2Server:
    """An HTTP/2 server (prior knowledge, no TLS) answering each request with the next queued (status, JSON)."""

    answers: deque[tuple[int, dict[str, Any] | None]] = field(default_factory=deque)
    requests: list[H2Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        with sock:
            while data := sock.recv(65535):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                        headers = {_str(k): _str(v) for k, v in event.headers or ()}
                        streams[event.stream_id] = (headers, bytearray())
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
                        streams[event.stream_id][1].extend(event.data or b"")
                        conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
                        headers, body = streams.pop(event.stream_id)
                        self.requests.append(H2Request(number, headers, bytes(body)))
                        status, answer = self.answers.popleft() if self.answers else (200, None)
                        payload = json.dumps(answer).encode() if answer is not None else b""
                        conn.send_headers(
                            event.stream_id, [(":status", str(status)), ("content-length", str(len(payload)))]
                        )
                        conn.send_data(event.stream_id, payload, end_stream=True)
                sock.sendall(conn.data_to_send())

    def close(self) -> None:
        self._listener.close()


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def apns_server() -> Iterator[H2Server]:
    server = H2Server()
    yield server
    server.close()


def _apns_key() -> tuple[str, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), key.public_key()


def _registration(platform: PushPlatform, token: str) -> PushRegistration:
    return PushRegistration(device_id=1, user_id=1, platform=platform, token=token)


async def test_apns_requests_are_well_formed_and_share_one_http2_connection(apns_server: H2Server) -> None:
    pem, public = _apns_key()
    sender = ApnsSender(
        key=pem,
        key_id="KEY1234567",
        team_id="TEAM123456",
        topic="app.parley",
        endpoint=apns_server.url,
        ttl_seconds=3600,
        timeout=5,
    )
    try:
        for _ in range(2):
            assert (await sender.send(_registration(PushPlatform.APNS, APNS_TOKEN), CONTENT)).outcome is Outcome.SENT
    finally:
        await sender.close()
    first, second = apns_server.requests
    assert apns_server.connections == 1
    assert first.connection == second.connection
    headers = first.headers
    assert (headers[":method"], headers[":path"]) == ("POST", f"/3/device/{APNS_TOKEN}")
    assert headers["apns-topic"] == "app.parley"
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert int(headers["apns-expiration"]) > time.time()
    scheme, token = headers["authorization"].split(" ")
    assert scheme == "bearer"
    header, claims, signed, signature = _jwt_parts(token)
    assert header == {"alg": "ES256", "kid": "KEY1234567"}
    assert claims["iss"] == "TEAM123456"
    assert abs(claims["iat"] - time.time()) < 60
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    body = json.loads(first.body)
    assert body["aps"]["alert"] == {"title": "Alice", "body": "2 new messages"}
    assert (body["conversationId"], body["messageId"], body["count"]) == ("7", "m.signed", 2)
    assert "body" not in body


@pytest.mark.parametrize(
    ("status", "answer", "outcome"),
    [
        (410, {"reason": "Unregistered"}, Outcome.GONE),
        (400, {"reason": "BadDeviceToken"}, Outcome.GONE),
        (400, {"reason": "PayloadTooLarge"}, Outcome.FAILED),
        (503, {"reason": "ServiceUnavailable"}, Outcome.RETRY),
        (429, {"reason": "TooManyRequests"}, Outcome.RETRY),
    ],
)
async def test_apns_errors_map_to_outcomes(
    apns_server: H2Server, status: int, answer: dict[str, Any], outcome: Outcome
) -> None:
    pem, _public = _apns_key()
    sender = ApnsSender(
        key=pem, key_id="K", team_id="T", topic="app", endpoint=apns_server.url, ttl_seconds=60, timeout=5
    )
    apns_server.answers.append((status, answer))
    try:
        assert (await sender.send(_registration(PushPlatform.APNS, APNS_TOKEN), CONTENT)).outcome is outcome
    finally:
        await sender.close()


async def test_apns_renews_an_expired_provider_token(apns_server: H2Server) -> None:
    pem, _public = _apns_key()
    sender = ApnsSender(
        key=pem, key_id="K", team_id="T", topic="app", endpoint=apns_server.url, ttl_seconds=60, timeout=5
    )
    apns_server.answers.append((403, {"reason": "ExpiredProviderToken"}))
    try:
        assert (await sender.send(_registration(PushPlatform.APNS, APNS_TOKEN), CONTENT)).outcome is Outcome.SENT
    finally:
        await sender.close()
    assert len(apns_server.requests) == 2


@dataclass
class FakeFcm:
    """Google's token endpoint and FCM's messages:send, on one local HTTP server."""

    public_key: rsa.RSAPublicKey
    expires_in: int = 3600
    answers: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    grants: list[dict[str, Any]] = field(default_factory=list)
    sends: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Sends answered 503 with a body this long (streamed), and whether the client hung up on one.
    huge_body: int = 0
    hung_up: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path == "/token":
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    header, claims, signed, signature = _jwt_parts(form["assertion"])
                    assert header["alg"] == "RS256"
                    fake.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                    fake.grants.append(claims)
                    self._answer(
                        200,
                        {
                            "access_token": f"token-{len(fake.grants)}",
                            "expires_in": fake.expires_in,
                            "token_type": "Bearer",
                        },
                    )
                    return
                fake.sends.append((self.headers["Authorization"], json.loads(body)))
                if fake.huge_body:
                    self._stream(fake.huge_body)
                    return
                status, answer, headers = (
                    fake.answers.popleft() if fake.answers else (200, {"name": "projects/p/messages/1"}, {})
                )
                self._answer(status, answer, headers)

            def _stream(self, size: int) -> None:
                self.send_response(503)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size // CHUNK):
                        self.wfile.write(bytes(CHUNK))
                except OSError:
                    fake.hung_up.set()

            def _answer(self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                payload = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@pytest.fixture
def fcm() -> Iterator[tuple[FakeFcm, FcmSender]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fake = FakeFcm(key.public_key())
    server = fake.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    account = {
        "type": "service_account",
        "project_id": "parley-test",
        "private_key_id": "kid1",
        "private_key": pem.decode(),
        "client_email": "push@parley-test.iam.gserviceaccount.com",
    }
    sender = FcmSender(
        service_account=json.dumps(account), endpoint=url, token_url=f"{url}/token", ttl_seconds=600, timeout=5
    )
    yield fake, sender
    server.shutdown()
    server.server_close()


async def test_fcm_requests_are_well_formed_and_reuse_the_access_token(fcm: tuple[FakeFcm, FcmSender]) -> None:
    fake, sender = fcm
    try:
        for _ in range(2):
            assert (await sender.send(_registration(PushPlatform.FCM, "fcm-token-1"), CONTENT)).outcome is Outcome.SENT
    finally:
        await sender.close()
    [grant] = fake.grants
    assert grant["iss"] == "push@parley-test.iam.gserviceaccount.com"
    assert grant["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert grant["aud"].endswith("/token")
    assert grant["exp"] > time.time()
    (authorization, body), _second = fake.sends
    assert authorization == "Bearer token-1"
    message = body["message"]
    assert message["token"] == "fcm-token-1"
    assert message["data"] == {
        "type": "message",
        "conversationId": "7",
        "messageId": "m.signed",
        "sender": "Alice",
        "count": "2",
    }
    assert message["android"]["priority"] == "HIGH"
    assert message["android"]["ttl"] == "600s"


async def test_fcm_renews_the_token_before_it_expires_and_when_refused(fcm: tuple[FakeFcm, FcmSender]) -> None:
    fake, sender = fcm
    fake.expires_in = 200  # inside the renewal margin: every send fetches a fresh one
    fake.answers.append((401, {"error": {"status": "UNAUTHENTICATED"}}, {}))
    try:
        assert (await sender.send(_registration(PushPlatform.FCM, "t"), CONTENT)).outcome is Outcome.SENT
        assert (await sender.send(_registration(PushPlatform.FCM, "t"), CONTENT)).outcome is Outcome.SENT
    finally:
        await sender.close()
    assert len(fake.grants) == 3
    assert [auth for auth, _ in fake.sends] == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]


@pytest.mark.parametrize(
    ("status", "answer", "headers", "outcome", "retry_after"),
    [
        (404, {"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}, {}, Outcome.GONE, None),
        (
            400,
            {"error": {"status": "INVALID_ARGUMENT", "details": [{"errorCode": "UNREGISTERED"}]}},
            {},
            Outcome.GONE,
            None,
        ),
        (
            400,
            {"error": {"status": "INVALID_ARGUMENT", "details": [{"errorCode": "INVALID_ARGUMENT"}]}},
            {},
            Outcome.FAILED,
            None,
        ),
        (503, {"error": {"status": "UNAVAILABLE"}}, {"Retry-After": "7"}, Outcome.RETRY, 7.0),
        (
            429,
            {"error": {"status": "RESOURCE_EXHAUSTED", "details": [{"errorCode": "QUOTA_EXCEEDED"}]}},
            {},
            Outcome.RETRY,
            None,
        ),
    ],
)
async def test_fcm_errors_map_to_outcomes(
    fcm: tuple[FakeFcm, FcmSender],
    *,
    status: int,
    answer: dict[str, Any],
    headers: dict[str, str],
    outcome: Outcome,
    retry_after: float | None,
) -> None:
    fake, sender = fcm
    fake.answers.append((status, answer, headers))
    try:
        result = await sender.send(_registration(PushPlatform.FCM, "t"), CONTENT)
    finally:
        await sender.close()
    assert (result.outcome, result.retry_after) == (outcome, retry_after)


async def test_fcm_reads_only_the_start_of_a_huge_answer(fcm: tuple[FakeFcm, FcmSender]) -> None:
    """Review 2, item 7: every push service's answer is read up to a few KiB, then the sender hangs up."""
    fake, sender = fcm
    fake.huge_body = 64 * 1024 * 1024
    try:
        result = await sender.send(_registration(PushPlatform.FCM, "t"), CONTENT)
    finally:
        await sender.close()
    assert result.outcome is Outcome.RETRY
    assert await asyncio.to_thread(fake.hung_up.wait, 10)


async def test_retry_after_is_honoured_only_from_known_push_services_and_capped() -> None:
    """Review 2, item 7: a WebPush endpoint anyone runs cannot make the worker wait minutes per attempt."""
    private_key, _public = new_vapid_keys()
    sender = WebPushSender(
        vapid_private_key=private_key,
        subject="mailto:push@example.com",
        ttl_seconds=60,
        urgency="high",
        allow_private_endpoints=True,
        timeout=5,
    )
    subscription = Subscription()
    with PushEndpoint() as endpoint:
        endpoint.standing["stranger"] = Reply(429, {"Retry-After": "300"})
        registration = PushRegistration(
            device_id=1,
            user_id=1,
            platform=PushPlatform.WEBPUSH,
            endpoint=endpoint.url("stranger"),
            p256dh=subscription.p256dh,
            auth=b64url(subscription.auth),
        )
        try:
            result = await sender.send(registration, CONTENT)
        finally:
            await sender.close()
    assert (result.outcome, result.retry_after) == (Outcome.RETRY, None)
    for host in ("fcm.googleapis.com", "updates.push.services.mozilla.com", "web.push.apple.com"):
        assert known_push_host(host)
    assert known_push_host("wns2-par02p.notify.windows.com")
    for host in ("127.0.0.1", "push.example.com", "fcm.googleapis.com.example.com", "evilnotify.windows.com"):
        assert not known_push_host(host)
    # A known service's Retry-After is honoured up to the cap (PARLEY_PUSH_RETRY_AFTER_MAX_SECONDS).
    config = worker_config(Settings(push_retry_after_max_seconds=60))
    assert retry_delay(1, 7.0, config) == 7.0
    assert retry_delay(1, 300.0, config) == 60.0
