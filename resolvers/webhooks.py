"""Outgoing webhooks: emitting events to the operator's endpoints, and managing those endpoints.

`emit` runs after the commit of what it reports and is all a use case pays: with no
endpoint configured it reads one flag (`EndpointDirectory.any`) and returns; otherwise
it queues one job per (event, endpoint) in one round trip (Redis pipeline), bounded by
a timeout, and a queue that fails loses the webhook, never the operation. Use cases
that commit through `resolvers/publish.commit_then_publish` `stage` their events in the
transaction instead: they are emitted only if it commits, once, even when it is rerun.

Payloads carry the ids the API shows (a message's signed id, other ids as strings);
a message's body only with `PARLEY_WEBHOOK_INCLUDE_BODY`. Delivery, signing and
retries are the worker's (infra/webhooks/).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import WebhookEndpoint
from models.columns import utcnow
from resolvers.errors import BadUserInput, NotFound, Unavailable
from resolvers.ids import MessageRef
from resolvers.outbound import check_url
from resolvers.ports import DeadWebhook, WebhookJob
from resolvers.services import Services
from resolvers.webhook_endpoints import EVENT_TYPES, Webhooks, check_events, new_secret

log = logging.getLogger("parley.webhooks")

# A queue that does not answer this fast loses the webhook, not the operation's latency.
ENQUEUE_TIMEOUT_SECONDS = 1.0
MAX_DESCRIPTION = 200
MAX_DEAD_LETTERS = 1000
_STAGED = "parley_webhooks"

Payload = Mapping[str, object]


def enabled(services: Services) -> bool:
    """Whether any endpoint is configured: callers check it before building a payload."""
    hooks = services.webhooks
    return hooks is not None and hooks.directory.any


async def emit(services: Services, event_type: str, payload: Payload) -> None:
    """Queues `event_type` for every endpoint that wants it; never raises, costs nothing without endpoints.

    In `payload`, a `MessageRef` becomes the message's public id, an int under a key ending
    in `_id` (a list under `_ids`) strings, and `body` is dropped unless bodies are allowed.
    """
    hooks = services.webhooks
    if hooks is None or not hooks.directory.any:
        return
    await emit_many(services, [(event_type, payload)])


async def emit_many(services: Services, events: Sequence[tuple[str, Payload]]) -> None:
    """`emit` for several events, queued together."""
    hooks = services.webhooks
    if hooks is None or not hooks.directory.any or not events:
        return
    jobs: list[WebhookJob] = []
    for event_type, payload in events:
        endpoints = hooks.directory.matching(event_type)
        if not endpoints:
            continue
        event_id = f"msg_{uuid.uuid4().hex}"
        body = orjson.dumps({"type": event_type, "timestamp": utcnow().isoformat(), "data": _public(hooks, payload)})
        jobs += [WebhookJob(endpoint.key, event_id, event_type, body) for endpoint in endpoints]
    if not jobs:
        return
    try:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            await hooks.queue.enqueue(jobs)
    except Exception:  # what it reports is committed; only its webhooks are lost
        log.warning("%d webhook jobs (%s) not queued", len(jobs), events[0][0], exc_info=True)


def _public(hooks: Webhooks, payload: Payload) -> dict[str, object]:
    data: dict[str, object] = {}
    for key, value in payload.items():
        if key == "body" and not hooks.include_body:
            continue
        if isinstance(value, MessageRef):
            data[key] = hooks.ids.encode(value)
        elif key.endswith("_id") and isinstance(value, int):
            data[key] = str(value)
        elif key.endswith("_ids") and isinstance(value, list | tuple):
            data[key] = [str(item) for item in value]
        else:
            data[key] = value
    return data


def stage(session: AsyncSession, event_type: str, payload: Payload) -> None:
    """Emits the event once the transaction of `session` commits (through `commit_then_publish`)."""
    session.info.setdefault(_STAGED, []).append((event_type, payload))


def take_staged(session: AsyncSession) -> list[tuple[str, Payload]]:
    """The events staged in this session's transaction (and forgets them)."""
    staged: list[tuple[str, Payload]] = session.info.pop(_STAGED, [])
    return staged


def message_payload(
    ref: MessageRef,
    *,
    mentions: Sequence[int] | None = None,
    attachment_count: int | None = None,
    body: str | None = None,
    **more: object,
) -> dict[str, object]:
    """The data of a message event: its ids, and mentions, attachment count and body when given (body if allowed)."""
    data: dict[str, object] = {"message_id": ref, "conversation_id": ref.conversation_id, "sender_id": ref.sender_id}
    if mentions is not None:
        data["mention_ids"] = list(mentions)
    if attachment_count is not None:
        data["attachment_count"] = attachment_count
    if body is not None:
        data["body"] = body
    return data | more


# The admin API's operations (another module serves them over HTTP).


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as the admin API shows it (never its secret, which is shown once, when it is added)."""

    id: int
    url: str
    events: list[str]
    description: str | None
    created_at: str
    disabled_at: str | None

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointView:
        """The view of a table row."""
        assert row.id is not None
        return cls(
            id=row.id,
            url=row.url,
            events=sorted(json.loads(row.events)),
            description=row.description,
            created_at=row.created_at.isoformat(),
            disabled_at=row.disabled_at.isoformat() if row.disabled_at else None,
        )


def _require(services: Services) -> Webhooks:
    if services.webhooks is None:
        raise Unavailable("Webhooks are not set up in this process.")
    return services.webhooks


async def list_endpoints(services: Services, *, include_disabled: bool = False) -> list[EndpointView]:
    """The table's endpoints, oldest first (the configured ones are in the settings, not here)."""
    async with services.db.session() as session:
        query = select(WebhookEndpoint).order_by(col(WebhookEndpoint.id))
        if not include_disabled:
            query = query.where(col(WebhookEndpoint.disabled_at).is_(None))
        return [EndpointView.of(row) for row in (await session.execute(query)).scalars()]


async def add_endpoint(
    services: Services, url: str, events: Sequence[str], description: str | None = None
) -> tuple[EndpointView, str]:
    """Adds an endpoint and returns it with its new secret (`whsec_…`, shown only now).

    The URL passes the SSRF checks (https and public addresses outside development);
    `BadUserInput` for it, for an unknown event type or a long description.
    """
    hooks = _require(services)
    if len(events) > len(EVENT_TYPES) + 1:
        raise BadUserInput("Too many event types.")
    try:
        wanted = check_events(events)
    except ValueError as error:
        raise BadUserInput(str(error)) from None
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadUserInput(f"A description is at most {MAX_DESCRIPTION} characters.")
    await check_url(url, allow_private=hooks.allow_private, what="url")
    secret = new_secret()
    row = WebhookEndpoint(url=url, secret=secret, events=json.dumps(sorted(wanted)), description=description)

    async def store(session: AsyncSession) -> EndpointView:
        session.add(row)
        await session.flush()
        return EndpointView.of(row)

    view = await services.db.transaction(store)
    await hooks.directory.refresh(services.db)
    log.info("webhook endpoint %s added for %s", view.id, ",".join(view.events))
    return view, secret


async def disable_endpoint(services: Services, endpoint_id: int) -> EndpointView:
    """Disables an endpoint: nothing more is queued for it, and what was queued is not delivered.

    `NotFound` if there is no such endpoint; disabling a disabled one changes nothing.
    """
    hooks = _require(services)

    async def store(session: AsyncSession) -> EndpointView:
        row = await session.get(WebhookEndpoint, endpoint_id)
        if row is None:
            raise NotFound("No such webhook endpoint.")
        if row.disabled_at is None:
            row.disabled_at = utcnow()
            session.add(row)
            await session.flush()
        return EndpointView.of(row)

    view = await services.db.transaction(store)
    await hooks.directory.refresh(services.db)
    log.info("webhook endpoint %s disabled", endpoint_id)
    return view


async def list_dead_letters(services: Services, limit: int = 100) -> list[DeadWebhook]:
    """The newest deliveries that failed for good (at most `limit`, up to 1000), newest first."""
    hooks = _require(services)
    return await hooks.queue.dead_letters(max(1, min(limit, MAX_DEAD_LETTERS)))


async def replay_dead_letter(services: Services, dead_id: str) -> bool:
    """Queues a dead letter again (its attempts start over); False if there is no such dead letter."""
    hooks = _require(services)
    if not dead_id or len(dead_id) > 64:
        raise BadUserInput("Not a dead letter id.")
    replayed = await hooks.queue.replay(dead_id)
    if replayed:
        log.info("webhook dead letter %s queued again", dead_id)
    return replayed
