"""The `parley` command: serve, migrate, export-schema, worker, vapid-keys, admin."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from infra.settings import Settings

log = logging.getLogger("parley")

# Objects allocated (net) before a young-generation collection; CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


# Libraries whose debug records carry SQL parameters (message bodies, password hashes):
# kept at INFO even when Parley logs at DEBUG. (SQLAlchemy's own hides them: infra/db.py.)
PARAMETER_LOGGERS = ("aiosqlite",)


def configure_logging(level: str, log_format: str = "text") -> None:
    """One record per line on stderr: time, level, logger, message, as text or as a JSON object (infra/log_format.py)."""
    from infra import log_format as formats  # noqa: PLC0415 - keep `parley --help` fast

    formats.configure_logging(level, log_format)
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        messages = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"parley: refusing to start: {messages}") from None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (names other than localhost count as public)."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_secret_exposure(settings: Settings, host: str) -> None:
    """Refuses or warns when the published development secret would serve other machines.

    With that secret anyone can forge message ids. Production never has it (Settings
    refuses). On a loopback address it is harmless. On any other address: with
    PARLEY_ENV unset, refuse to start; with PARLEY_ENV=development chosen explicitly, run
    but log a loud warning.
    """
    if not settings.uses_development_secret or is_loopback(host):
        return
    if not settings.env_chosen:
        raise SystemExit(
            f"parley: refusing to start: listening on {host} with the public development secret. "
            "Set PARLEY_SECRET_KEY (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`), "
            "or set PARLEY_ENV=development to accept the risk on a trusted network."
        )
    log.warning(
        "INSECURE: serving on %s with the public development secret (PARLEY_SECRET_KEY unset): "
        "anyone who can reach this server can forge message ids. Set PARLEY_SECRET_KEY, or "
        "listen on 127.0.0.1 only.",
        host,
    )


def serve(host: str, port: int, workers: int = 1, fd: int | None = None) -> None:
    """Serves the API with uvicorn until SIGTERM, then drains (infra/server.py); `workers` processes share the port.

    `fd`: serve on that inherited, bound socket instead of binding `host`:`port`.
    """
    from infra import server  # noqa: PLC0415 - keep `parley --help` fast

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    sock = None if fd is None else server.inherited_socket(fd)
    if sock is not None:
        host, port = sock.getsockname()[:2]  # what the exposure check and the log must name
    check_secret_exposure(settings, host)
    server.check_workers(settings, workers)
    log.info("GraphQL at http://%s:%d/graphql", host, port)
    if workers > 1:
        server.run_workers(settings, host=host, port=port, workers=workers, sock=sock)
        return
    from infra.app import create_app  # noqa: PLC0415

    app = create_app(settings)
    tune_garbage_collector()
    server.run(settings, app, host=host, port=port, sock=sock)


def tune_garbage_collector() -> None:
    """Fewer, cheaper cyclic collections for a long-running server holding many sockets.

    A full collection walks every object alive: with thousands of open sockets that
    was ~10% of a reconnect storm's CPU, charged to whichever allocation set it off.
    What exists once the app is built (modules, the schema) lives as long as the
    process: `gc.freeze()` keeps collections from walking it again. Allocation-heavy
    requests then trigger the youngest generation less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def migrate_command() -> None:
    """Applies every pending migration to PARLEY_DATABASE_URL."""
    from infra.migrate import migrate  # noqa: PLC0415

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(migrate(settings.database_url))
    log.info("database is at the newest schema")


def export_schema(output: str | None) -> None:
    """Prints the schema SDL (or writes it to a file)."""
    from graph.schema import build_schema  # noqa: PLC0415

    sdl = build_schema().as_str() + "\n"
    if output:
        Path(output).write_text(sdl)
    else:
        sys.stdout.write(sdl)


def worker_command(host: str, port: int | None, fd: int | None = None) -> None:
    """Sends push notifications from the Redis queue until SIGTERM (in-flight jobs finish or are handed back)."""
    from infra.push.runtime import run_worker  # noqa: PLC0415
    from infra.server import inherited_socket  # noqa: PLC0415

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_worker(settings, host=host, port=port, sock=None if fd is None else inherited_socket(fd)))


def vapid_keys() -> None:
    """Prints a new VAPID key pair as the settings that take it."""
    from infra.push.webpush import new_vapid_keys  # noqa: PLC0415

    private, public = new_vapid_keys()
    sys.stdout.write(
        f"PARLEY_PUSH_VAPID_PRIVATE_KEY={private}\n# public key (clients read it as webPushPublicKey): {public}\n"
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `parley` console script."""
    parser = argparse.ArgumentParser(prog="parley", description="Parley chat backend")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the GraphQL API")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument(
        "--fd",
        type=int,
        help="serve on this inherited file descriptor, a bound TCP socket (e.g. from systemd), instead of --host/--port",
    )
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes sharing the port, each a node of the presence registry (needs Redis and PostgreSQL)",
    )
    commands.add_parser("migrate", help="apply database migrations")
    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", "-o", help="write to this file instead of stdout")
    worker = commands.add_parser("worker", help="run a push notification worker (production mode: needs Redis)")
    worker.add_argument("--host", default="127.0.0.1", help="address of the liveness endpoint")
    worker.add_argument("--port", type=int, help="serve GET /healthz (liveness) on this port")
    worker.add_argument("--fd", type=int, help="serve the liveness endpoint on this inherited, bound TCP socket")
    commands.add_parser("vapid-keys", help="print a new VAPID key pair for WebPush")
    from infra import admin_client  # noqa: PLC0415 - keep `parley --help` fast

    admin_client.add_parser(commands)
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.host, args.port, args.workers, args.fd)
    elif args.command == "migrate":
        migrate_command()
    elif args.command == "export-schema":
        export_schema(args.output)
    elif args.command == "worker":
        worker_command(args.host, args.port, args.fd)
    elif args.command == "vapid-keys":
        vapid_keys()
    elif args.command == "admin":
        admin_client.run(args)


if __name__ == "__main__":
    main()
