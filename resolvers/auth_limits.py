"""Limits on login and register attempts, which each cost a password hash (argon2, 64 MiB).

Two fixed windows of `login_failure_window_seconds`, counted before any hash runs:

- per client address, every login and register attempt (`auth_attempts_per_address`):
  random usernames cannot get around it;
- per username, every login attempt that has not yet succeeded (`login_max_failures`).

Counting is one atomic increment that answers with the new count, so parallel guesses
cannot all pass a check made before any of them is counted. The window's expiry is set
by its first attempt and attempts made while locked do not extend it: whoever keeps
guessing cannot lock the owner out beyond the end of the window.
"""

from __future__ import annotations

import ipaddress

from resolvers.errors import RateLimited
from resolvers.services import Services

# One IPv6 subscriber usually holds a whole /64: count the network, not each address.
IPV6_PREFIX = 64


def address_key(address: str | None) -> str:
    """The counter name of a client address: IPv4 as is, IPv6 by its /64, anything else verbatim."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


async def count_attempt(services: Services, address: str | None) -> None:
    """Counts a login or register attempt from `address`; `RateLimited` past the limit."""
    limits = services.limits
    count = await services.rate_limiter.hit(
        f"auth-address:{address_key(address)}", window_seconds=limits.login_failure_window_seconds
    )
    if count > limits.auth_attempts_per_address:
        raise RateLimited("Too many login or register attempts from this address; try again later.")


async def _count_guess(services: Services, key: str, refusal: str) -> None:
    limits = services.limits
    count = await services.rate_limiter.hit(key, window_seconds=limits.login_failure_window_seconds)
    if count > limits.login_max_failures:
        raise RateLimited(refusal)


async def count_login(services: Services, username: str) -> None:
    """Counts a login attempt for `username` before its password is checked; `RateLimited` past the limit."""
    await _count_guess(services, f"login:{username}", "Too many failed logins for this username; try again later.")


async def attempt_not_made(services: Services, username: str, address: str | None) -> None:
    """Takes back a login counted before the database failed: the password was never checked.

    An app retrying through a database restart would otherwise lock its user out.
    """
    window = services.limits.login_failure_window_seconds
    for key in (f"login:{username}", f"auth-address:{address_key(address)}"):
        try:
            await services.rate_limiter.hit(key, window_seconds=window, amount=-1)
        except Exception:  # the limiter may be down too; the window ends anyway
            return


async def login_succeeded(services: Services, username: str) -> None:
    """Forgets the username's failures: its owner just proved the password."""
    await services.rate_limiter.reset(f"login:{username}")


async def count_password_check(services: Services, user_id: int) -> None:
    """Counts a check of the user's current password (changePassword) the same way as a login."""
    await _count_guess(services, f"password:{user_id}", "Too many wrong passwords; try again later.")


async def password_check_succeeded(services: Services, user_id: int) -> None:
    """Forgets the wrong passwords given for this user: the right one just came."""
    await services.rate_limiter.reset(f"password:{user_id}")
