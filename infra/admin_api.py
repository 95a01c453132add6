"""The admin API: operator actions as HTTP JSON on a port of its own, behind the operator token.

Served by a second uvicorn server inside the app's lifespan, on `PARLEY_ADMIN_HOST`:
`PARLEY_ADMIN_PORT`, and only when `PARLEY_ADMIN_TOKEN` is set: the public app has no
`/admin` route at all. That server leaves the process's signals to the main one (whose
graceful shutdown closes this one through the lifespan). With `parley serve --workers N`
the first worker to bind the port serves it; every action works through the database and
the bus, so which process answers does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hmac
import json
import logging
import multiprocessing
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.settings import Settings
from resolvers import admin, webhooks
from resolvers.errors import BadUserInput, ParleyError
from resolvers.reports import ReportRecord
from resolvers.services import Services

log = logging.getLogger("parley.admin")

MAX_BODY = 16 * 1024
_STATUS = {
    "BAD_USER_INPUT": 400,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "RATE_LIMITED": 429,
    "UNAVAILABLE": 503,
}
_REPORT_STATUS: dict[str, bool | None] = {"open": False, "resolved": True, "all": None}

Handler = Callable[[Request, Services], Awaitable[Any]]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _plain(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _int(request: Request, name: str, default: int | None = None) -> int:
    raw = request.path_params.get(name, request.query_params.get(name))
    if raw is None:
        if default is None:
            raise BadUserInput(f"{name} is required.")
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise BadUserInput(f"{name} must be a number.") from None


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadUserInput("The request body is too large.")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadUserInput("The request body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise BadUserInput("The request body must be a JSON object.")
    return data


class _Endpoint:
    """One route: checks the operator token, runs the handler, answers JSON (errors as {"error": …})."""

    def __init__(self, handler: Handler, *, token: str, services: Services) -> None:
        self._handler = handler
        self._token = token.encode()
        self._services = services

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Constant time: the comparison reveals nothing of the token to a timing attacker.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    async def handle(self, request: Request) -> Response:
        """The route's endpoint."""
        if not self._authorized(request):
            log.warning("admin API: refused %s %s without a valid operator token", request.method, request.url.path)
            return _error(401, "UNAUTHENTICATED", "A valid operator token is required (Authorization: Bearer …).")
        try:
            result = await self._handler(request, self._services)
        except ParleyError as error:
            return _error(_STATUS.get(error.code, 500), error.code, str(error))
        except Exception:
            log.exception("admin API: %s %s failed", request.method, request.url.path)
            return _error(500, "INTERNAL_SERVER_ERROR", "The action failed; the server log says why.")
        return JSONResponse(_plain(result))


async def _find_users(request: Request, services: Services) -> dict[str, Any]:
    users = await admin.find_users(
        services,
        prefix=request.query_params.get("prefix", ""),
        after=_int(request, "after", 0),
        limit=_int(request, "limit", 50),
    )
    return {"users": users}


async def _show_user(request: Request, services: Services) -> admin.UserDetails:
    return await admin.user_details(services, await admin.resolve_user(services, request.path_params["ref"]))


async def _suspend(request: Request, services: Services) -> admin.UserDetails:
    return await admin.suspend_user(services, await admin.resolve_user(services, request.path_params["ref"]))


async def _unsuspend(request: Request, services: Services) -> admin.UserDetails:
    return await admin.unsuspend_user(services, await admin.resolve_user(services, request.path_params["ref"]))


async def _delete_user(request: Request, services: Services) -> dict[str, Any]:
    user_id = await admin.resolve_user(services, request.path_params["ref"])
    return {"id": user_id, "deleted": True, "devices_revoked": await admin.delete_user(services, user_id)}


async def _list_reports(request: Request, services: Services) -> dict[str, Any]:
    status = request.query_params.get("status", "open")
    if status not in _REPORT_STATUS:
        raise BadUserInput("status is one of open, resolved, all.")
    reports = await admin.list_reports(
        services, resolved=_REPORT_STATUS[status], after=_int(request, "after", 0), limit=_int(request, "limit", 50)
    )
    return {"reports": reports}


async def _resolve_report(request: Request, services: Services) -> ReportRecord:
    resolution = (await _json_body(request)).get("resolution")
    if not isinstance(resolution, str):
        raise BadUserInput("resolution (a string) is required.")
    return await admin.resolve_report(services, _int(request, "report_id"), resolution=resolution)


def _freezer(*, frozen: bool) -> Handler:
    async def handler(request: Request, services: Services) -> dict[str, Any]:
        conversation_id = _int(request, "conversation_id")
        frozen_at = await admin.set_frozen(services, conversation_id, frozen=frozen)
        return {"id": conversation_id, "frozen_at": frozen_at}

    return handler


async def _list_webhooks(_request: Request, services: Services) -> dict[str, Any]:
    return {"webhooks": await admin.list_webhooks(services)}


async def _add_webhook(request: Request, services: Services) -> dict[str, Any]:
    body = await _json_body(request)
    url, events, description = body.get("url"), body.get("events", ["*"]), body.get("description")
    if not isinstance(url, str) or not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise BadUserInput("url (a string) and events (a list of event types) are required.")
    if description is not None and not isinstance(description, str):
        raise BadUserInput("description is a string.")
    view, secret = await admin.add_webhook(services, url=url, events=events, description=description)
    return {"webhook": view, "secret": secret}


async def _disable_webhook(request: Request, services: Services) -> webhooks.EndpointView:
    return await admin.disable_webhook(services, _int(request, "endpoint_id"))


async def _dead_letters(request: Request, services: Services) -> dict[str, Any]:
    return {"dead_letters": await admin.dead_letters(services, limit=_int(request, "limit", 50))}


async def _replay(request: Request, services: Services) -> dict[str, Any]:
    dead_id = request.path_params["dead_id"]
    await admin.replay_dead_letter(services, dead_id)
    return {"id": dead_id, "replayed": True}


ROUTES: list[tuple[str, Handler, str]] = [
    ("/admin/users", _find_users, "GET"),
    ("/admin/users/{ref}", _show_user, "GET"),
    ("/admin/users/{ref}", _delete_user, "DELETE"),
    ("/admin/users/{ref}/suspend", _suspend, "POST"),
    ("/admin/users/{ref}/unsuspend", _unsuspend, "POST"),
    ("/admin/reports", _list_reports, "GET"),
    ("/admin/reports/{report_id}/resolve", _resolve_report, "POST"),
    ("/admin/conversations/{conversation_id}/freeze", _freezer(frozen=True), "POST"),
    ("/admin/conversations/{conversation_id}/unfreeze", _freezer(frozen=False), "POST"),
    ("/admin/webhooks", _list_webhooks, "GET"),
    ("/admin/webhooks", _add_webhook, "POST"),
    ("/admin/webhooks/dead-letters", _dead_letters, "GET"),
    ("/admin/webhooks/dead-letters/{dead_id}/replay", _replay, "POST"),
    ("/admin/webhooks/{endpoint_id}/disable", _disable_webhook, "POST"),
]


def admin_app(token: str, services: Services) -> Starlette:
    """The admin API's Starlette app: every route needs `Authorization: Bearer <token>`."""
    return Starlette(
        routes=[
            Route(path, _Endpoint(handler, token=token, services=services).handle, methods=[method])
            for path, handler, method in ROUTES
        ]
    )


class _AdminServer(uvicorn.Server):
    """uvicorn, leaving signals to the process's main server (infra/server.py)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No handlers of its own: the main server's shutdown ends this one through the lifespan."""
        yield


async def _bind(host: str, port: int) -> socket.socket:
    family, *_ = (await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
    return socket.create_server((host, port), family=family)


@contextlib.asynccontextmanager
async def admin_exposed(settings: Settings, services: Services) -> AsyncIterator[None]:
    """While the app runs: serves the admin API on the admin port, when both it and the token are set."""
    token = (settings.admin_token or "").strip()
    if settings.admin_port is None or not token:
        if settings.admin_port is not None or token:
            log.warning("admin API off: it needs both PARLEY_ADMIN_PORT and PARLEY_ADMIN_TOKEN")
        yield
        return
    try:
        sock = await _bind(settings.admin_host, settings.admin_port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE and multiprocessing.parent_process() is not None:
            log.debug("admin port %d is served by another worker of this machine", settings.admin_port)
            yield
            return
        raise RuntimeError(
            f"cannot serve the admin API on {settings.admin_host}:{settings.admin_port} (PARLEY_ADMIN_PORT): "
            f"{error.strerror}"
        ) from error
    config = uvicorn.Config(
        admin_app(token, services),
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    server = _AdminServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="parley.admin.server")
    log.info("admin API at http://%s:%d/admin", settings.admin_host, sock.getsockname()[1])
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
