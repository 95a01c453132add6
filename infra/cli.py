"""The `parley` command: serve, migrate, export-schema, worker, vapid-keys."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from infra.settings import Settings

log = logging.getLogger("parley")

# Objects allocated (net) before a young-generation collection; CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


# Libraries whose debug records carry SQL parameters (message bodies, password hashes):
# kept at INFO even when Parley logs at DEBUG. (SQLAlchemy's own hides them: infra/db.py.)
PARAMETER_LOGGERS = ("aiosqlite",)


def configure_logging(level: str) -> None:
    """One-line log records on stderr: time, level, logger, message."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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


def serve(host: str, port: int) -> None:
    """Serves the API with uvicorn (migrating the embedded SQLite database first)."""
    from infra.app import create_app  # noqa: PLC0415 - keep `parley --help` fast

    settings = _settings()
    configure_logging(settings.log_level)
    check_secret_exposure(settings, host)
    app = create_app(settings)
    tune_garbage_collector()
    log.info("GraphQL at http://%s:%d/graphql", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        # X-Forwarded-For/-Proto are read by the app, from PARLEY_TRUSTED_PROXIES only
        # (infra/forwarded.py); uvicorn's own handling would trust 127.0.0.1 by default.
        proxy_headers=False,
        ws="websockets-sansio",
        ws_max_size=settings.max_request_bytes,
        # Frames are small JSON; deflate doubles the CPU per frame and keeps ≈35 KiB of
        # zlib state per socket whose client offers it.
        ws_per_message_deflate=False,
    )


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
    configure_logging(settings.log_level)
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


def worker_command(host: str, port: int | None) -> None:
    """Sends push notifications from the Redis queue until SIGTERM (in-flight jobs finish or are handed back)."""
    from infra.push.runtime import run_worker  # noqa: PLC0415

    settings = _settings()
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings, host=host, port=port))


def vapid_keys() -> None:
    """Prints a new VAPID key pair as the settings that take it."""
    from infra.push.webpush import new_vapid_keys  # noqa: PLC0415

    private, public = new_vapid_keys()
    sys.stdout.write(
        f"PARLEY_PUSH_VAPID_PRIVATE_KEY={private}\n# public key (clients read it as webPushPublicKey): {public}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `parley` console script."""
    parser = argparse.ArgumentParser(prog="parley", description="Parley chat backend")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the GraphQL API")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    commands.add_parser("migrate", help="apply database migrations")
    export = commands.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", "-o", help="write to this file instead of stdout")
    worker = commands.add_parser("worker", help="run a push notification worker (production mode: needs Redis)")
    worker.add_argument("--host", default="127.0.0.1", help="address of the liveness endpoint")
    worker.add_argument("--port", type=int, help="serve GET /healthz (liveness) on this port")
    commands.add_parser("vapid-keys", help="print a new VAPID key pair for WebPush")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "migrate":
        migrate_command()
    elif args.command == "export-schema":
        export_schema(args.output)
    elif args.command == "worker":
        worker_command(args.host, args.port)
    elif args.command == "vapid-keys":
        vapid_keys()


if __name__ == "__main__":
    main()
