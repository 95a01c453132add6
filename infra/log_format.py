"""Log output of a Parley process: readable text lines, or one JSON object per line (`PARLEY_LOG_FORMAT=json`).

Both formats go to stderr through the root logger. With JSON, uvicorn is told not to
install its own text handlers (`uvicorn_log_config`), so its records (startup, access
log, WebSocket handshakes) are JSON objects too. In both formats, paths in uvicorn's
records lose their query string and download tokens: those are bearer capabilities.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn.config
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from infra.storage.local_http import DOWNLOAD_PATH

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# uvicorn's records carry a colourised copy of their message: noise in a JSON line.
_NOT_FIELDS = (*RESERVED_ATTRS, "color_message")

# uvicorn's loggers whose records carry request paths (the access log; WebSocket handshakes).
_PATH_LOGGERS = ("uvicorn.access", "uvicorn.error")


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and any `extra` fields."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        reserved_attrs=_NOT_FIELDS,
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Every record to stderr in `log_format` ("text" or "json") at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # On the loggers, not on a handler: uvicorn replaces its handlers when it configures
    # logging, and keeps the loggers' filters.
    for name in _PATH_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactPaths) for f in logger.filters):
            logger.addFilter(RedactPaths())


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """What `uvicorn.run(log_config=…)` takes: its own text handlers, or none (records go to ours) for JSON."""
    return None if log_format == "json" else uvicorn.config.LOGGING_CONFIG


def redact_path(path: str) -> str:
    """A request path fit for a log: without its query string, and without a download URL's token."""
    path = path.split("?", 1)[0]
    if path.startswith(f"{DOWNLOAD_PATH}/"):
        return f"{DOWNLOAD_PATH}/[token]"
    return path


class RedactPaths(logging.Filter):
    """Rewrites the request paths among a uvicorn record's arguments with `redact_path`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keeps the record, with its path arguments redacted."""
        if isinstance(record.args, tuple) and any(isinstance(a, str) and a.startswith("/") for a in record.args):
            record.args = tuple(redact_path(a) if isinstance(a, str) and a.startswith("/") else a for a in record.args)
        return True
