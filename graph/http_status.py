"""GraphQL-over-HTTP responses: the media type a client accepts and the status code each response gets."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from graph.persisted_queries import NOT_FOUND_CODE

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
# Apollo Server's answer to an unknown persisted query: 200, never cached (GET requests may carry hashes).
NOT_FOUND_HEADERS = {"Cache-Control": "private, no-cache, must-revalidate"}
_SERVER_FAILURES = frozenset({"INTERNAL_SERVER_ERROR", "UNAVAILABLE"})


def accepts_graphql_response(accept: str) -> bool:
    """True when the client prefers application/graphql-response+json (at least as much as application/json)."""
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                with contextlib.suppress(ValueError):
                    weight = float(value)
        media = media.lower()
        weights[media] = max(weight, weights.get(media, 0.0))
    wanted = weights.get(GRAPHQL_RESPONSE_JSON, 0.0)
    return wanted > 0 and wanted >= weights.get("application/json", 0.0)


def status_of(response: Mapping[str, Any]) -> int:
    """The GraphQL-over-HTTP status of a single response sent as application/graphql-response+json.

    A request error (parse, validation, variable coercion, a refused persisted query) has no
    data and no error with a path: 400. A request that executed: 200, whatever its field errors.
    """
    errors = response.get("errors") or []
    if response.get("data") is not None or not errors:
        return 200
    if any(isinstance(error, Mapping) and error.get("path") for error in errors):
        return 200
    codes = {(error.get("extensions") or {}).get("code") for error in errors if isinstance(error, Mapping)}
    return 500 if codes & _SERVER_FAILURES else 400


def only_not_found(response: Mapping[str, Any]) -> bool:
    """True when every error of the response is an unknown persisted query (answered as Apollo Server does)."""
    errors = response.get("errors") or []
    return bool(errors) and all(
        isinstance(error, Mapping) and (error.get("extensions") or {}).get("code") == NOT_FOUND_CODE for error in errors
    )
