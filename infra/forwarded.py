"""The client's address behind reverse proxies we trust, and only those.

Anyone can send `X-Forwarded-For`; believing it from any peer would let a client pick
the address its login attempts are counted against. Only when the socket's peer is
one of `trusted_proxies` is the header read: from its right end (the entry the
nearest proxy added), hops are skipped while they are trusted proxies too; the first
other address is the client. `X-Forwarded-Proto` from a trusted proxy sets the scheme.

uvicorn has the same logic built in, trusting 127.0.0.1 by default: `parley serve`
turns it off so this, configured by Settings, is the only place that decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> list[IPNetwork]:
    """Networks from IPs and CIDRs ("10.0.0.5", "10.0.0.0/8", "fd00::/8"); `ValueError` for anything else."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values]


def _address(value: str) -> IPAddress | None:
    """An IP from a peer or an `X-Forwarded-For` entry, with any port removed; None if not an IP."""
    value = value.strip()
    if value.startswith("["):  # "[2001:db8::1]:443"
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:  # "203.0.113.7:51234"
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """ASGI middleware: `scope["client"]` and `scope["scheme"]` as the trusted proxies report them."""

    def __init__(self, app: ASGIApp, *, trusted: Sequence[str]) -> None:
        self.app = app
        self._trusted = parse_networks(trusted)

    def _is_trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in network for network in self._trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._trusted and scope["type"] in {"http", "websocket"} and scope.get("client"):
            self._resolve(scope)
        await self.app(scope, receive, send)

    def _resolve(self, scope: Scope) -> None:
        peer = _address(str(scope["client"][0]))
        if not self._is_trusted(peer):
            return
        forwarded: list[str] = []
        proto: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.extend(value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip().lower()
        client = peer
        for entry in reversed(forwarded):
            if not self._is_trusted(client):
                break
            hop = _address(entry)
            if hop is None:  # garbage: stay with the last address a trusted proxy vouched for
                break
            client = hop
        scope["client"] = (str(client), 0)
        if proto in {"http", "https"}:
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
