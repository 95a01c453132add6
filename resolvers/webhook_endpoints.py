"""Where webhooks go: the operator's endpoints (settings and the `webhook_endpoints` table), kept in memory.

A send asks `EndpointDirectory.any` before it spends anything on webhooks, so the
directory is a copy refreshed every `PARLEY_WEBHOOK_REFRESH_SECONDS` and at once after
an admin change in the same process; a delivery looks its endpoint up here too, so a
disabled endpoint gets nothing more once the worker has refreshed.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import col

from models import WebhookEndpoint
from resolvers.ids import MessageIds
from resolvers.ports import Database, WebhookQueue

ALL_EVENTS = "*"
EVENT_TYPES = frozenset(
    {
        "message.sent",
        "message.edited",
        "message.deleted",
        "reaction.added",
        "reaction.removed",
        "conversation.created",
        "conversation.changed",
        "member.added",
        "member.removed",
        "member.banned",
        "member.muted",
        "user.registered",
        "user.suspended",
        "user.deleted",
        "report.created",
    }
)
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix Standard Webhooks gives secrets, not one


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_events(events: Iterable[str]) -> frozenset[str]:
    """The event types an endpoint wants; `ValueError` naming an unknown one. Empty means all."""
    wanted = frozenset(events) or frozenset({ALL_EVENTS})
    unknown = sorted(wanted - EVENT_TYPES - {ALL_EVENTS})
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or '*'")
    return wanted


def check_secret(secret: str) -> str:
    """A `whsec_<base64>` secret of 24 to 64 bytes; `ValueError` otherwise."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not secret.startswith(SECRET_PREFIX) or not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret is whsec_ followed by 24 to 64 bytes in base64")
    return secret


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: `key` names its queue (`db-<id>` for a table row, `cfg-<n>` for the n-th configured one)."""

    key: str
    url: str
    secret: str
    events: frozenset[str]

    def wants(self, event_type: str) -> bool:
        """Whether this endpoint subscribed to `event_type`."""
        return ALL_EVENTS in self.events or event_type in self.events


def configured_endpoints(text: str | None) -> list[Endpoint]:
    """The endpoints of `PARLEY_WEBHOOKS` (JSON); `ValueError` saying what is wrong with it."""
    if not text or not text.strip():
        return []
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("PARLEY_WEBHOOKS is a JSON list of {url, secret, events}")
    endpoints = []
    for index, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("url"), str)
            or not isinstance(item.get("secret"), str)
        ):
            raise ValueError(f"PARLEY_WEBHOOKS[{index}] needs a url and a secret")
        events = item.get("events") or []
        if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
            raise ValueError(f"PARLEY_WEBHOOKS[{index}].events is a list of event types")
        endpoints.append(Endpoint(f"cfg-{index}", item["url"], check_secret(item["secret"]), check_events(events)))
    return endpoints


def stored_endpoint(row: WebhookEndpoint) -> Endpoint:
    """The endpoint of a table row (an unreadable events list means all events)."""
    try:
        events = check_events(json.loads(row.events))
    except (ValueError, TypeError):
        events = frozenset({ALL_EVENTS})
    return Endpoint(f"db-{row.id}", row.url, row.secret, events)


class EndpointDirectory:
    """The enabled endpoints, in memory: `any` is what a send checks, and costs nothing to read."""

    def __init__(self, configured: Sequence[Endpoint] = ()) -> None:
        self._configured = tuple(configured)
        self._all: tuple[Endpoint, ...] = self._configured
        self._by_key = {endpoint.key: endpoint for endpoint in self._all}
        self.any = bool(self._all)

    def matching(self, event_type: str) -> list[Endpoint]:
        """The endpoints that want `event_type`."""
        return [endpoint for endpoint in self._all if endpoint.wants(event_type)]

    def get(self, key: str) -> Endpoint | None:
        """The enabled endpoint of that key, if any."""
        return self._by_key.get(key)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every enabled endpoint."""
        return self._all

    def replace(self, stored: Iterable[Endpoint]) -> None:
        """Takes the table's enabled endpoints (beside the configured ones)."""
        self._all = (*self._configured, *stored)
        self._by_key = {endpoint.key: endpoint for endpoint in self._all}
        self.any = bool(self._all)

    async def refresh(self, db: Database) -> None:
        """Reads the enabled endpoints of the table again."""
        async with db.session() as session:
            rows = (
                await session.execute(
                    select(WebhookEndpoint)
                    .where(col(WebhookEndpoint.disabled_at).is_(None))
                    .order_by(col(WebhookEndpoint.id))
                )
            ).scalars()
            self.replace([stored_endpoint(row) for row in rows])


@dataclass(frozen=True)
class Webhooks:
    """What emitting webhooks needs: the queue, the endpoints, message ids and what payloads may carry."""

    queue: WebhookQueue
    directory: EndpointDirectory
    ids: MessageIds
    include_body: bool = False
    # Plain http and private addresses (development only, unless the operator says otherwise).
    allow_private: bool = False
