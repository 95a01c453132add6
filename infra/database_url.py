"""PostgreSQL URLs that name several servers (a primary and its standbys), in each driver's spelling.

`PARLEY_DATABASE_URL` is SQLAlchemy's form, which names the servers as repeated `host=` query
parameters: `postgresql+asyncpg://user:password@/parley?host=db1:5432&host=db2:5432`. libpq's form,
the servers in the authority (`postgresql+asyncpg://user@db1:5432,db2:5432/parley`), is accepted
too. SQLAlchemy's engine gets the first spelling and the hot path's asyncpg pool the second, both
with every server. With several servers and no `target_session_attrs`, `read-write` is asked for:
Parley writes on every connection, and a standby listed first would otherwise take them all.
A URL naming one server passes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

DEFAULT_PORT = 5432
_SESSION_ATTRS = "target_session_attrs"


class DatabaseUrlError(ValueError):
    """The database URL names its servers in a way neither driver can follow."""


@dataclass(frozen=True, slots=True)
class PostgresUrl:
    """A PostgreSQL URL taken apart: its servers, and the rest as written."""

    scheme: str
    userinfo: str  # as written, still percent-encoded (`user:password`, or empty)
    database: str  # as written, still percent-encoded
    hosts: tuple[tuple[str, int], ...]
    query: tuple[tuple[str, str], ...]  # every parameter but the servers', in order

    def _query(self, extra: list[tuple[str, str]]) -> str:
        params = [*extra, *self.query]
        if len(self.hosts) > 1 and not any(name == _SESSION_ATTRS for name, _ in params):
            params.append((_SESSION_ATTRS, "read-write"))
        return f"?{urlencode(params, safe=':/[],')}" if params else ""

    def _at(self) -> str:
        return f"{self.userinfo}@" if self.userinfo else ""

    def sqlalchemy(self) -> str:
        """SQLAlchemy's spelling: each server a `host=name:port` query parameter."""
        hosts = [("host", f"{name}:{port}") for name, port in self.hosts]
        return f"{self.scheme}://{self._at()}/{self.database}{self._query(hosts)}"

    def asyncpg(self) -> str:
        """asyncpg's (and libpq's) spelling: the servers, comma-separated, in the authority."""
        hosts = ",".join(f"{name}:{port}" for name, port in self.hosts)
        return f"postgresql://{self._at()}{hosts}/{self.database}{self._query([])}"


def _host_port(token: str, port: str | None = None) -> tuple[str, int]:
    """`name`, `name:port`, `[v6]:port` or a bare IPv6 address; `port` when given apart (`host=a,b&port=1,2`)."""
    if token.startswith("["):
        name, bracket, after = token.partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise DatabaseUrlError(f"database URL: {token!r} is not a host")
        name, written = f"{name}]", after[1:]
    elif token.count(":") == 1:
        name, _, written = token.partition(":")
    else:
        name, written = (f"[{token}]", "") if ":" in token else (token, "")
    if port is not None:
        if written:
            raise DatabaseUrlError(f"database URL: {token!r} has a port and a `port` parameter gives another")
        written = port
    if not name:
        raise DatabaseUrlError(f"database URL: {token!r} names no host")
    try:
        number = int(written) if written else DEFAULT_PORT
    except ValueError:
        raise DatabaseUrlError(f"database URL: {token!r} has a port that is not a number") from None
    if not 0 < number < 65536:
        raise DatabaseUrlError(f"database URL: port {number} of {name!r} is out of range")
    return name, number


def parse_postgres_url(url: str) -> PostgresUrl:
    """Takes a PostgreSQL URL apart in either spelling; raises `DatabaseUrlError` for one neither driver reads."""
    parts = urlsplit(url)
    userinfo, at, hostspec = parts.netloc.rpartition("@")
    if not at:
        userinfo, hostspec = "", parts.netloc
    params = parse_qsl(parts.query, keep_blank_values=True)
    query_hosts = [value for name, value in params if name == "host"]
    query_ports = [value for name, value in params if name == "port"]
    rest = tuple((name, value) for name, value in params if name not in ("host", "port"))
    hosts: list[tuple[str, int]] = []
    if hostspec:
        if query_hosts:
            raise DatabaseUrlError("database URL: name the servers either before the database or as `host=`, not both")
        hosts = [_host_port(token) for token in hostspec.split(",")]
    elif query_hosts:
        tokens = [token for value in query_hosts for token in value.split(",")]
        ports = [port for value in query_ports for port in value.split(",")]
        if ports and len(ports) != len(tokens):
            raise DatabaseUrlError("database URL: give one `port` per `host`, or each host as `name:port`")
        hosts = [_host_port(token, ports[n] if ports else None) for n, token in enumerate(tokens)]
    elif query_ports:
        rest = (*rest, *(("port", port) for port in query_ports))
    return PostgresUrl(
        scheme=parts.scheme,
        userinfo=userinfo,
        database=parts.path.lstrip("/"),
        hosts=tuple(hosts),
        query=rest,
    )


def _several_hosts(url: str) -> PostgresUrl | None:
    if not url.startswith("postgresql"):
        return None
    parsed = parse_postgres_url(url)
    return parsed if len(parsed.hosts) > 1 else None


def sqlalchemy_url(url: str) -> str:
    """The URL for SQLAlchemy's engine: several servers as `host=` parameters; any other URL as it is."""
    several = _several_hosts(url)
    return url if several is None else several.sqlalchemy()


def asyncpg_dsn(url: str) -> str:
    """The DSN for an asyncpg pool, keeping every server the URL names (and what it asks of them)."""
    several = _several_hosts(url)
    if several is None:
        return url.replace("postgresql+asyncpg://", "postgresql://", 1)
    return several.asyncpg()
