"""The suite's settings: the embedded and production modes' `Settings`, and a `parley serve` process's environment."""

from __future__ import annotations

from pathlib import Path

from infra.settings import Settings
from tests.support.processes import production_env
from tests.support.services import RedisTarget

TEST_SECRET = "test-secret-key-for-parley-0123456789abcdef"
# The whole suite registers its users from 127.0.0.1 on shared servers, up to 100 at once:
# the per-address limits on login/register attempts and on invalid invite codes, and the bound
# on password hashes running at once, are tested on servers of their own (tests/test_abuse.py,
# tests/test_invites.py).
# Small connection pools: parallel workers each run servers against one PostgreSQL, whose
# max_connections (100 by default) must cover them all.
SUITE_LIMITS: dict[str, object] = {
    "auth_attempts_per_address": 1_000_000,
    "invite_failures_per_address": 1_000_000,
    "max_concurrent_password_hashes": 1000,
    "database_pool_size": 3,
    "database_max_overflow": 5,
    "delivery_pool_size": 4,
}
# The suite's servers run as a developer's do (GraphiQL, introspection, the web chat, local push
# endpoints); a test of the production defaults passes `env` itself.
DEVELOPMENT: dict[str, object] = {"env": "development"}


def suite_process_env(postgres: str, redis: RedisTarget) -> dict[str, str]:
    """The environment of a `parley serve` process of this suite: production mode with the suite's limits."""
    limits = {f"PARLEY_{name.upper()}": str(value) for name, value in SUITE_LIMITS.items()}
    return {**production_env(postgres, redis, TEST_SECRET), **limits}


def embedded_settings(tmp: Path, **changes: object) -> Settings:
    """Settings of the embedded mode: a SQLite file, no Redis."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp / 'parley.db'}",
        secret_key=TEST_SECRET,
        **{**DEVELOPMENT, **SUITE_LIMITS, **changes},  # type: ignore[arg-type]
    )


def production_settings(postgres: str, redis: RedisTarget, **changes: object) -> Settings:
    """Settings of the production mode against this run's PostgreSQL database and Redis."""
    return Settings(
        database_url=postgres,
        redis_url=redis.url,
        redis_prefix=redis.prefix,
        secret_key=TEST_SECRET,
        **{**DEVELOPMENT, **SUITE_LIMITS, **changes},  # type: ignore[arg-type]
    )
