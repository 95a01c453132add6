"""Per-user rate limits on chatting, which fail open: a cache outage must not stop people from chatting.

(Login and register limits, which must not fail open, are `resolvers/auth_limits.py`.)
"""

from __future__ import annotations

import logging

from resolvers.errors import RateLimited
from resolvers.services import Services

log = logging.getLogger("parley.rate_limits")


async def spend(
    services: Services, key: str, *, limit: int, window_seconds: int, refusal: str, amount: int = 1
) -> None:
    """Counts `amount` against `key`'s window; `RateLimited(refusal)` past `limit`, nothing if the limiter is down."""
    try:
        count = await services.rate_limiter.hit(key, window_seconds=window_seconds, amount=amount)
    except Exception:
        log.warning("rate limit %s unchecked", key, exc_info=True)
        return
    if count > limit:
        raise RateLimited(refusal)


async def take_back(services: Services, key: str, *, window_seconds: int, amount: int = 1) -> None:
    """Uncounts `amount` that `spend` counted against `key`; best effort, as the window ends anyway."""
    try:
        await services.rate_limiter.hit(key, window_seconds=window_seconds, amount=-amount)
    except Exception:
        log.warning("rate limit %s not taken back", key, exc_info=True)
