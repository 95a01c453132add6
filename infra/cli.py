"""The `parley` command: serve, migrate, export-schema, worker."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from infra.settings import Settings

log = logging.getLogger("parley")

# Objects allocated (net) before a young-generation collection; CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


def configure_logging(level: str) -> None:
    """One-line log records on stderr: time, level, logger, message."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        messages = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"parley: refusing to start: {messages}") from None


def serve(host: str, port: int) -> None:
    """Serves the API with uvicorn (migrating the embedded SQLite database first)."""
    from infra.app import create_app  # noqa: PLC0415 - keep `parley --help` fast

    settings = _settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    tune_garbage_collector()
    log.info("GraphQL at http://%s:%d/graphql", host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
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
    commands.add_parser("worker", help="run the push notification worker")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "migrate":
        migrate_command()
    elif args.command == "export-schema":
        export_schema(args.output)
    elif args.command == "worker":
        _settings()
        raise SystemExit("parley worker: push notifications are not built yet; nothing to do")


if __name__ == "__main__":
    main()
