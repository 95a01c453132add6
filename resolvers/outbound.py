"""Checking URLs the server will POST to on someone else's say (WebPush endpoints, webhook endpoints).

Such a URL must not make the server reach internal hosts (SSRF): unless private
addresses are allowed (development), it must be `https` and every address its host
resolves to must be public (`is_public_address`), checked again before each request
(DNS can change), and the request goes to the address that was checked. The name is
looked up on threads of its own (`_Resolver`), with a timeout: its lookup may hang.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

from resolvers.errors import BadUserInput, Unavailable

MAX_URL = 2048
# A name may be anyone's choice: a slow resolver must not hold a request long.
RESOLVE_TIMEOUT_SECONDS = 3.0
# Lookups running at once per process; more are refused (UNAVAILABLE) rather than queued.
RESOLVER_THREADS = 8
# Prefixes that reach an IPv4 address through a translator or relay (NAT64, RFC 6052 and
# RFC 8215; 6to4, RFC 3056; IPv4-compatible, RFC 4291), which `is_global` takes as public
# whatever IPv4 they embed. The well-known NAT64 prefix is judged by its IPv4 address
# (DNS64 networks reach every host through it); the others are refused.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_REFUSED_IPV6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2002::/16"),
    ipaddress.IPv6Network("::/96"),
)


def is_public_address(address: str) -> bool:
    """Whether an address is globally routable, and so is whatever IPv4 address it leads to."""
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_global
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF).is_global
        if any(ip in network for network in _REFUSED_IPV6):
            return False
    return ip.is_global


class _Resolver:
    """getaddrinfo on a small pool of its own threads.

    The event loop's getaddrinfo runs on the default executor (asyncio), which password
    hashing and thumbnails share, or on libuv's four threads (uvloop), which every other
    name lookup shares: hanging lookups of names someone else chose would hold those. An
    async resolver library (aiodns on c-ares) would need no threads, but it reads DNS
    itself, while the senders connect through getaddrinfo, which follows the system's
    configuration (/etc/hosts, nsswitch): the check must see the addresses the connection
    will use, so it uses getaddrinfo too, on threads bounded here.
    Per process, so shared by every event loop in it (thread-safe, bound to none).
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="parley-resolve")
        # A lookup that times out keeps its thread until getaddrinfo returns: counted until then.
        self._free = threading.BoundedSemaphore(threads)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host`; `Unavailable` when every thread is busy (callers bound the wait)."""
        if not self._free.acquire(blocking=False):
            raise Unavailable("Too many endpoints are being checked; try again in a moment.")
        try:
            lookup = self._pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        except BaseException:
            self._free.release()
            raise
        # Runs when the lookup ends, or when it is cancelled before it started.
        lookup.add_done_callback(lambda _done: self._free.release())
        infos = await asyncio.wrap_future(lookup)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


_resolver = _Resolver(RESOLVER_THREADS)


async def check_url(url: str, *, allow_private: bool, what: str = "endpoint") -> list[str]:
    """The addresses `url`'s host resolves to; `BadUserInput` (naming it `what`) if it may not be used.

    Refused unless private addresses are allowed: other schemes than https, and a host
    with any address that is not globally routable (loopback, private, link-local, the
    cloud metadata address…). The caller connects to one of the returned addresses.
    """
    if len(url) > MAX_URL:
        raise BadUserInput(f"{what} is at most {MAX_URL} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUserInput(f"{what} is not a URL.") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise BadUserInput(f"{what} must be an {' or '.join(schemes)} URL.")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadUserInput(f"{what} must name a host (and no user or password).")
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            addresses = await _resolver.resolve(parts.hostname, port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError, TimeoutError):
        raise BadUserInput(f"{what}'s host does not resolve.") from None
    if not addresses:
        raise BadUserInput(f"{what}'s host does not resolve.")
    if not allow_private and not all(is_public_address(address) for address in addresses):
        raise BadUserInput(f"{what} must be a public address.")
    return addresses


def pinned_url(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` with its host replaced by the checked `address`: the URL, the Host header and the TLS extensions.

    The connection goes to the address that was checked (a second lookup could answer
    otherwise), while TLS still verifies the certificate for the host name (SNI).
    """
    parts = urlsplit(url)
    assert parts.hostname is not None  # check_url refuses URLs without a host
    host = f"[{address}]" if ":" in address else address
    pinned = urlunsplit(
        (parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path or "/", parts.query, "")
    )
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return pinned, {"Host": parts.netloc.rsplit("@", 1)[-1]}, extensions
