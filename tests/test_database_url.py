"""Database URLs naming a primary and its standbys reach both drivers with every server (infra/database_url.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url

from infra.database_url import DatabaseUrlError, asyncpg_dsn, parse_postgres_url, sqlalchemy_url

QUERY_FORM = "postgresql+asyncpg://app:s%40cret@/parley?host=db1:5432&host=db2:5433&target_session_attrs=read-write"


def test_one_server_passes_unchanged() -> None:
    """A URL with one server (or a socket directory, or SQLite) means what it meant before multi-host support."""
    for url in (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/parley",
        "postgresql+asyncpg://app@/parley?host=/var/run/postgresql",
        "postgresql+asyncpg://app@db1/parley?ssl=require",
    ):
        assert sqlalchemy_url(url) == url
        assert asyncpg_dsn(url) == url.replace("postgresql+asyncpg://", "postgresql://")
    assert sqlalchemy_url("sqlite+aiosqlite:///./parley.db") == "sqlite+aiosqlite:///./parley.db"


def test_the_asyncpg_pool_gets_every_server_of_sqlalchemys_form() -> None:
    """The hot path's pool is given both servers, the credentials as written and what the URL asks of the servers."""
    assert (
        asyncpg_dsn(QUERY_FORM) == "postgresql://app:s%40cret@db1:5432,db2:5433/parley?target_session_attrs=read-write"
    )
    assert sqlalchemy_url(QUERY_FORM) == QUERY_FORM


def test_libpqs_form_is_accepted_and_given_to_sqlalchemy_as_host_parameters() -> None:
    """`user@db1:5432,db2:5433/db` works too: SQLAlchemy's engine reads every server from what it is given."""
    url = "postgresql+asyncpg://app:s%40cret@db1:5432,db2:5433/parley?target_session_attrs=read-write"
    assert sqlalchemy_url(url) == QUERY_FORM
    assert asyncpg_dsn(url) == asyncpg_dsn(QUERY_FORM)
    # What SQLAlchemy's asyncpg dialect hands the driver: both servers, the password decoded.
    _, kwargs = asyncpg_dialect().create_connect_args(make_url(sqlalchemy_url(url)))  # type: ignore[no-untyped-call]
    assert kwargs["host"] == ["db1", "db2"]
    assert kwargs["port"] == [5432, 5433]
    assert kwargs["password"] == "s@cret"
    assert kwargs["target_session_attrs"] == "read-write"


def test_several_servers_ask_for_the_writable_one_unless_told_otherwise() -> None:
    """Without `target_session_attrs` a standby listed first would take every write; `read-write` is asked for."""
    url = "postgresql+asyncpg://app@/parley?host=standby:5432&host=primary:5432&ssl=require"
    assert (
        asyncpg_dsn(url)
        == "postgresql://app@standby:5432,primary:5432/parley?ssl=require&target_session_attrs=read-write"
    )
    assert sqlalchemy_url(url).endswith("ssl=require&target_session_attrs=read-write")
    explicit = "postgresql+asyncpg://app@/parley?host=a:5432&host=b:5432&target_session_attrs=primary"
    assert asyncpg_dsn(explicit).endswith("?target_session_attrs=primary")


def test_hosts_and_ports_in_every_spelling() -> None:
    """Ports default to 5432; `host=a,b&port=1,2` pairs them; IPv6 addresses keep their brackets."""
    assert parse_postgres_url("postgresql+asyncpg://u@/d?host=a,b&port=6000,6001").hosts == (("a", 6000), ("b", 6001))
    assert parse_postgres_url("postgresql+asyncpg://u@/d?host=a&host=b").hosts == (("a", 5432), ("b", 5432))
    assert parse_postgres_url("postgresql+asyncpg://u@[::1]:6000,b/d").hosts == (("[::1]", 6000), ("b", 5432))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u@a:5432,b:x/d",  # a port that is not a number
        "postgresql+asyncpg://u@a:5432,b:70000/d",  # out of range
        "postgresql+asyncpg://u@a:5432,:5433/d",  # no host
        "postgresql+asyncpg://u@/d?host=a,b&port=1",  # ports do not pair with hosts
        "postgresql+asyncpg://u@a:1,b:2/d?host=c:3",  # servers in both places
    ],
)
def test_a_url_neither_driver_could_follow_is_refused_with_a_reason(url: str) -> None:
    """A mistyped server list fails at start, saying what is wrong, instead of connecting to part of it."""
    with pytest.raises(DatabaseUrlError, match="database URL"):
        sqlalchemy_url(url)
