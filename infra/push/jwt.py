"""The two JWTs push services want: ES256 for APNs provider tokens, RS256 for Google's OAuth grant.

A dozen lines on `cryptography` (already needed for WebPush) instead of PyJWT: only
signing, never verifying untrusted tokens.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    return f"{_b64(json.dumps(header, separators=(',', ':')).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}".encode()


def es256(private_key_pem: str, claims: dict[str, Any], *, kid: str) -> str:
    """A compact JWS signed with a P-256 key (an APNs .p8 file's PEM text)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the APNs key is not an EC private key")
    signing_input = _signing_input({"alg": "ES256", "kid": kid}, claims)
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{signing_input.decode()}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def rs256(private_key_pem: str, claims: dict[str, Any], *, kid: str | None = None) -> str:
    """A compact JWS signed with an RSA key (a Google service account's private key)."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account key is not an RSA private key")
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = _signing_input(header, claims)
    return f"{signing_input.decode()}.{_b64(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))}"
