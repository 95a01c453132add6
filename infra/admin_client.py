"""`parley admin …`: calls the admin API (infra/admin_api.py) over HTTP and prints the answer.

As JSON with `--json`, else as aligned tables. Any failure (unreachable, refused token,
an error the API reports) is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

TIMEOUT_SECONDS = 30.0
USER_COLUMNS = ("id", "username", "display_name", "created_at", "suspended_at", "deleted_at")
WEBHOOK_COLUMNS = ("id", "url", "events", "description", "created_at", "disabled_at")
DEAD_COLUMNS = ("id", "event_type", "endpoint", "reason", "at")
REPORT_COLUMNS = (
    "id",
    "kind",
    "reporter_id",
    "reported_user_id",
    "conversation_id",
    "reason",
    "created_at",
    "resolved_at",
)


class AdminError(Exception):
    """A call that failed: the message is what the operator reads."""


@dataclass(frozen=True)
class Call:
    """One request to the admin API and how to print its answer."""

    method: str
    path: str
    params: dict[str, str | int] | None = None
    body: dict[str, Any] | None = None
    # The key holding a list to print as a table, with its columns; None: one object, as key/value rows.
    rows: str | None = None
    columns: Sequence[str] = ()


def _user(ref: str) -> str:
    return quote(ref, safe=":")


def _users_call(args: argparse.Namespace) -> Call:
    if args.users_action == "find":
        params: dict[str, str | int] = {"prefix": args.prefix, "limit": args.limit, "after": args.after}
        return Call("GET", "/admin/users", params=params, rows="users", columns=USER_COLUMNS)
    return Call("GET", f"/admin/users/{_user(args.user)}")


def _reports_call(args: argparse.Namespace) -> Call:
    if args.reports_action == "list":
        params: dict[str, str | int] = {"status": args.status, "limit": args.limit, "after": args.after}
        return Call("GET", "/admin/reports", params=params, rows="reports", columns=REPORT_COLUMNS)
    return Call("POST", f"/admin/reports/{args.report}/resolve", body={"resolution": args.resolution})


def _webhooks_call(args: argparse.Namespace) -> Call:
    action = args.webhooks_action
    if action == "list":
        return Call("GET", "/admin/webhooks", rows="webhooks", columns=WEBHOOK_COLUMNS)
    if action == "add":
        body = {"url": args.url_to, "events": args.events.split(","), "description": args.description}
        return Call("POST", "/admin/webhooks", body=body)
    if action == "disable":
        return Call("POST", f"/admin/webhooks/{args.endpoint}/disable")
    if action == "dead-letters":
        params: dict[str, str | int] = {"limit": args.limit}
        return Call("GET", "/admin/webhooks/dead-letters", params=params, rows="dead_letters", columns=DEAD_COLUMNS)
    return Call("POST", f"/admin/webhooks/dead-letters/{quote(args.dead_letter, safe='')}/replay")


def call_for(args: argparse.Namespace) -> Call:
    """The request an `admin` subcommand makes."""
    action = args.admin_action
    if action == "users":
        return _users_call(args)
    if action == "reports":
        return _reports_call(args)
    if action == "webhooks":
        return _webhooks_call(args)
    if action in {"suspend", "unsuspend"}:
        return Call("POST", f"/admin/users/{_user(args.user)}/{action}")
    if action == "delete-account":
        if not args.yes:
            raise AdminError("deleting an account cannot be undone: add --yes to go ahead")
        return Call("DELETE", f"/admin/users/{_user(args.user)}")
    if action in {"freeze", "unfreeze"}:
        return Call("POST", f"/admin/conversations/{args.conversation}/{action}")
    raise AdminError(f"unknown admin command {action!r}")


def request(call: Call, *, url: str, token: str) -> Any:
    """Makes the call; the decoded JSON answer, or `AdminError` saying what went wrong."""
    import httpx  # noqa: PLC0415 - only `parley admin` needs it: keep the other commands' start fast

    try:
        response = httpx.request(
            call.method,
            url.rstrip("/") + call.path,
            params=call.params,
            json=call.body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT_SECONDS,
        )
    except httpx.HTTPError as error:
        raise AdminError(f"cannot reach the admin API at {url}: {error}") from None
    try:
        data = response.json()
    except ValueError:
        raise AdminError(
            f"the admin API answered {response.status_code} without JSON (is {url} its address?)"
        ) from None
    if response.is_error:
        said = data.get("error", {}) if isinstance(data, dict) else {}
        raise AdminError(f"{said.get('code', response.status_code)}: {said.get('message', 'request failed')}")
    return data


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns under a header line."""
    cells = [list(columns), *([_cell(row.get(column)) for column in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _flat(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            pairs += _flat(value, f"{prefix}{key}.")
        else:
            pairs.append((prefix + key, _cell(value)))
    return pairs


def render(call: Call, data: Any) -> str:
    """The answer as the operator reads it: a table of rows, or one object's fields, aligned."""
    if call.rows is not None:
        rows = data.get(call.rows, []) if isinstance(data, dict) else []
        return table(rows, call.columns) if rows else f"(no {call.rows})"
    if not isinstance(data, dict):
        return _cell(data)
    pairs = _flat(data)
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _default_url() -> str | None:
    if url := os.environ.get("PARLEY_ADMIN_URL"):
        return url
    port = os.environ.get("PARLEY_ADMIN_PORT")
    return f"http://127.0.0.1:{port}" if port else None


def run(args: argparse.Namespace) -> None:
    """Runs one `parley admin` command; exits non-zero with a message on stderr when it fails."""
    url = args.url or _default_url()
    token = args.token or os.environ.get("PARLEY_ADMIN_TOKEN")
    try:
        if not url:
            raise AdminError("no admin API address: set PARLEY_ADMIN_URL (or PARLEY_ADMIN_PORT) or pass --url")
        if not token:
            raise AdminError("no operator token: set PARLEY_ADMIN_TOKEN or pass --token")
        call = call_for(args)
        data = request(call, url=url, token=token)
    except AdminError as error:
        sys.stderr.write(f"parley admin: {error}\n")
        raise SystemExit(1) from None
    sys.stdout.write((json.dumps(data, indent=2) if args.json else render(call, data)) + "\n")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `parley admin …` to the `parley` command's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the admin API's address (default: PARLEY_ADMIN_URL, or 127.0.0.1:PARLEY_ADMIN_PORT)"
    )
    common.add_argument("--token", help="the operator token (default: PARLEY_ADMIN_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer instead of a table")
    page = argparse.ArgumentParser(add_help=False)
    page.add_argument("--limit", type=int, default=50, help="rows per page (1 to 100)")
    page.add_argument("--after", type=int, default=0, help="show rows after this id (the last one of a page)")

    admin = commands.add_parser("admin", help="operator actions through the admin API (PARLEY_ADMIN_URL, _TOKEN)")
    actions = admin.add_subparsers(dest="admin_action", required=True)
    users = actions.add_parser("users", help="find and show accounts").add_subparsers(
        dest="users_action", required=True
    )
    find = users.add_parser("find", parents=[common, page], help="accounts whose username starts with a prefix")
    find.add_argument("prefix", nargs="?", default="")
    show = users.add_parser("show", parents=[common], help="one account: state, devices, conversations")
    show.add_argument("user", help="a username, or id:<number>")
    for name, text in (
        ("suspend", "suspend an account: its sockets close everywhere, it cannot log in"),
        ("unsuspend", "lift a suspension"),
        ("delete-account", "delete an account for good, as deleteAccount does"),
    ):
        parser = actions.add_parser(name, parents=[common], help=text)
        parser.add_argument("user", help="a username, or id:<number>")
        if name == "delete-account":
            parser.add_argument("--yes", action="store_true", help="confirm: the deletion cannot be undone")
    reports = actions.add_parser("reports", help="users' reports").add_subparsers(dest="reports_action", required=True)
    listing = reports.add_parser("list", parents=[common, page], help="reports, open ones by default")
    listing.add_argument("--status", choices=("open", "resolved", "all"), default="open")
    resolve = reports.add_parser("resolve", parents=[common], help="mark a report resolved")
    resolve.add_argument("report", type=int)
    resolve.add_argument("resolution", help="what was done (kept with the report)")
    hooks = actions.add_parser("webhooks", help="webhook endpoints and failed deliveries")
    hook_actions = hooks.add_subparsers(dest="webhooks_action", required=True)
    hook_actions.add_parser("list", parents=[common], help="the endpoints added through the admin API")
    add = hook_actions.add_parser("add", parents=[common], help="add an endpoint (prints its secret, once)")
    add.add_argument("url_to", metavar="URL")
    add.add_argument("--events", default="*", help="comma-separated event types, or * for all (the default)")
    add.add_argument("--description")
    hook_actions.add_parser("disable", parents=[common], help="disable an endpoint").add_argument("endpoint", type=int)
    dead = hook_actions.add_parser("dead-letters", parents=[common], help="deliveries that failed for good")
    dead.add_argument("--limit", type=int, default=50, help="at most this many, newest first (1 to 100)")
    replay = hook_actions.add_parser("replay", parents=[common], help="queue a dead letter again")
    replay.add_argument("dead_letter", help="its id, as dead-letters lists it")
    for name, text in (("freeze", "freeze a conversation"), ("unfreeze", "unfreeze a conversation")):
        actions.add_parser(name, parents=[common], help=text).add_argument("conversation", type=int)
