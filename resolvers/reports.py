"""Reports: a user tells the operator (and a group's owners and admins) about a message or a user.

The server keeps no delivered bodies, so a message report carries the text as the reporter's
client shows it (`excerpt`, bounded by `max_report_excerpt_length`). The message id is the
signed one (resolvers/ids.py): it names the conversation and the sender, so the reporter must
be a member of that conversation now, and the reported user is the sender it names.

Who hears of a report: in a group, its OWNERs and ADMINs get a durable `REPORT` event, except
the reporter (who filed it) and the reported user (reporting is never revealed to them, even
when they administer the group: then only the other managers, or none, hear of it). A report
of a direct conversation's message, and every user report, reaches no one in the app. Every
report reaches the operator: `list_reports`/`resolve_report` (the admin API) and the
`report.created` webhook event (`_tell_operator`, after the commit).

Repeats store nothing: the same reporter reporting the same message again, or the same user
again while their earlier report is unresolved, answers true and counts against no limit. A
unique index says what a repeat is and the insert skips one (ON CONFLICT DO NOTHING), so that
holds under concurrent calls in both modes; the limit is spent only once a row went in.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Conversation, ConversationKind, EventKind, Member, User
from models.moderation import Report, ReportKind
from resolvers import webhooks
from resolvers.accounts import Viewer
from resolvers.conversations import MANAGERS
from resolvers.errors import BadUserInput, Conflict, NotFound
from resolvers.ids import MessageIds, MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.publish import commit_then_publish
from resolvers.rate_limits import spend
from resolvers.services import Services
from resolvers.text import check_visible_text

log = logging.getLogger("parley.reports")

HOUR = 3600
MAX_LIST = 500
MAX_RESOLUTION = 500


class ReportReason(enum.StrEnum):
    SPAM = "SPAM"
    HARASSMENT = "HARASSMENT"
    HATE = "HATE"
    VIOLENCE = "VIOLENCE"
    SEXUAL = "SEXUAL"
    ILLEGAL = "ILLEGAL"
    OTHER = "OTHER"


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """A stored report as the operator's tools see it (ids are row ids, times in UTC)."""

    id: int
    kind: str
    reason: str
    reporter_id: int
    reported_user_id: int
    conversation_id: int | None
    message_id: int | None
    excerpt: str | None
    created_at: datetime
    resolved_at: datetime | None
    resolution: str | None

    @classmethod
    def of(cls, row: Report) -> ReportRecord:
        """The record of a `reports` row."""
        assert row.id is not None
        return cls(
            id=row.id,
            kind=row.kind,
            reason=row.reason,
            reporter_id=row.reporter_id,
            reported_user_id=row.reported_user_id,
            conversation_id=row.conversation_id,
            message_id=row.message_id,
            excerpt=row.excerpt,
            created_at=row.created_at,
            resolved_at=row.resolved_at,
            resolution=row.resolution,
        )


@dataclass(frozen=True, slots=True)
class ReportEventView:
    """A report in a group, as its owners and admins get it (the payload of a REPORT entry)."""

    cursor: str
    report_id: int
    kind: str
    reason: str
    excerpt: str | None
    created_at: datetime
    reporter_id: int
    reported_user_id: int
    conversation_id: int | None
    message: MessageRef | None


def _payload(row: Report, ref: MessageRef | None) -> dict[str, Any]:
    """The stored JSON of a REPORT entry: ids only, so an account deletion leaves nothing to rewrite."""
    return {
        "report_id": row.id,
        "kind": row.kind,
        "reason": row.reason,
        "excerpt": row.excerpt,
        "at": row.created_at.isoformat(),
        "reporter_id": row.reporter_id,
        "reported_user_id": row.reported_user_id,
        "conversation_id": row.conversation_id,
        "message": [ref.message_id, ref.conversation_id, ref.sender_id] if ref is not None else None,
    }


def report_event_of(cursor: str, data: dict[str, Any]) -> ReportEventView:
    """A stored REPORT entry read back."""
    message = data.get("message")
    return ReportEventView(
        cursor=cursor,
        report_id=int(data["report_id"]),
        kind=str(data["kind"]),
        reason=str(data["reason"]),
        excerpt=data.get("excerpt"),
        created_at=datetime.fromisoformat(data["at"]),
        reporter_id=int(data["reporter_id"]),
        reported_user_id=int(data["reported_user_id"]),
        conversation_id=data.get("conversation_id"),
        message=MessageRef(int(message[0]), int(message[1]), int(message[2])) if message else None,
    )


def _reason(value: str) -> str:
    try:
        return ReportReason(value).value
    except ValueError:
        raise BadUserInput(f"Not a report reason: {value[:40]!r}.") from None


def _text(services: Services, value: str | None, *, what: str) -> str | None:
    """The reporter's text, trimmed; None when empty. Lines and tabs stay; other invisible characters are refused."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    limit = services.limits.max_report_excerpt_length
    if len(text) > limit:
        raise BadUserInput(f"{what} is at most {limit} characters.")
    # Whoever reads the report must see what it says: no bidi overrides or zero-width characters.
    for line in text.split("\n"):
        check_visible_text(line.replace("\t", " ").replace("\r", ""), what=what)
    return text


async def _insert(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Stores a report; None when it repeats one (uq_reports_message, uq_reports_open_user), storing nothing."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return await session.scalar(insert(Report).values(**values).on_conflict_do_nothing().returning(col(Report.id)))


async def _spend(services: Services, viewer: Viewer) -> None:
    limit = services.limits.reports_per_hour
    await spend(
        services,
        f"reports:{viewer.user_id}",
        limit=limit,
        window_seconds=HOUR,
        refusal=f"At most {limit} reports an hour; try again later.",
    )


async def _managers(session: AsyncSession, conversation_id: int) -> list[int]:
    return list(
        (
            await session.execute(
                select(col(Member.user_id)).where(
                    col(Member.conversation_id) == conversation_id, col(Member.role).in_(MANAGERS)
                )
            )
        ).scalars()
    )


async def report_message(
    services: Services, viewer: Viewer, ids: MessageIds, *, message_id: str, reason: str, excerpt: str | None
) -> None:
    """Files a report of a message of a conversation the viewer is in; `NotFound` for anyone else.

    A group's owners and admins, but the reporter and the sender, get a ReportEvent.
    """
    ref = ids.decode(message_id)
    why = _reason(reason)
    text = _text(services, excerpt, what="An excerpt")
    if ref.sender_id == viewer.user_id:
        raise BadUserInput("You cannot report your own message.")

    async def work(session: AsyncSession) -> tuple[ReportRecord | None, list[Appended]]:
        if await session.get(Member, (ref.conversation_id, viewer.user_id)) is None:
            raise NotFound("No such message.")
        conversation = await session.get(Conversation, ref.conversation_id)
        assert conversation is not None  # a member's conversation exists
        row = Report(
            reporter_id=viewer.user_id,
            kind=ReportKind.MESSAGE,
            reported_user_id=ref.sender_id,
            conversation_id=ref.conversation_id,
            message_id=ref.message_id,
            reason=why,
            excerpt=text,
            created_at=services.clock(),
        )
        row.id = await _insert(session, row.model_dump(exclude={"id"}))
        if row.id is None:
            return None, []
        await _spend(services, viewer)
        recipients: list[int] = []
        if conversation.kind is ConversationKind.GROUP:
            recipients = [
                uid
                for uid in await _managers(session, ref.conversation_id)
                if uid not in (viewer.user_id, ref.sender_id)
            ]
        appended = await append_events(
            session, recipients, EventKind.REPORT, payload=_payload(row, ref), at=row.created_at
        )
        return ReportRecord.of(row), appended

    record = await commit_then_publish(services, work)
    if record is None:
        log.info("user %s repeated a report of a message in conversation %s", viewer.user_id, ref.conversation_id)
        return
    log.info(
        "user %s reported a message of user %s in conversation %s (report %s, %s)",
        viewer.user_id,
        ref.sender_id,
        ref.conversation_id,
        record.id,
        record.reason,
    )
    await _tell_operator(services, record)


async def report_user(services: Services, viewer: Viewer, *, user_id: int, reason: str, details: str | None) -> None:
    """Files a report of a user (any account that exists and is not deleted); it reaches only the operator."""
    why = _reason(reason)
    text = _text(services, details, what="Details")
    if user_id == viewer.user_id:
        raise BadUserInput("You cannot report yourself.")

    async def work(session: AsyncSession) -> ReportRecord | None:
        reported = await session.get(User, user_id)
        if reported is None or reported.deleted_at is not None:
            raise NotFound(f"No such user: {user_id}.")
        row = Report(
            reporter_id=viewer.user_id,
            kind=ReportKind.USER,
            reported_user_id=user_id,
            reason=why,
            excerpt=text,
            created_at=services.clock(),
        )
        row.id = await _insert(session, row.model_dump(exclude={"id"}))
        if row.id is None:
            return None
        await _spend(services, viewer)
        return ReportRecord.of(row)

    record = await services.db.transaction(work)
    if record is None:
        log.info("user %s repeated a report of user %s", viewer.user_id, user_id)
        return
    log.info("user %s reported user %s (report %s, %s)", viewer.user_id, user_id, record.id, record.reason)
    await _tell_operator(services, record)


async def _tell_operator(services: Services, record: ReportRecord) -> None:
    """Emits the `report.created` webhook of a committed report (the admin API reads the table instead).

    The excerpt goes with it whatever `PARLEY_WEBHOOK_INCLUDE_BODY` says: judging it is what the
    operator's moderation tools receive a report for, and it is the reporter's text, not a stored body.
    """
    message = (
        MessageRef(record.message_id, record.conversation_id, record.reported_user_id)
        if record.message_id is not None and record.conversation_id is not None
        else None
    )
    await webhooks.emit(
        services,
        "report.created",
        {
            "report_id": record.id,
            "kind": record.kind,
            "reason": record.reason,
            "reporter_id": record.reporter_id,
            "reported_user_id": record.reported_user_id,
            "conversation_id": record.conversation_id,
            "message_id": message,
            "excerpt": record.excerpt,
            "created_at": record.created_at.isoformat(),
        },
    )


async def list_reports(
    services: Services, *, resolved: bool | None, limit: int, after: int | None = None
) -> list[ReportRecord]:
    """Reports oldest first, after the report id `after`; `resolved` None lists both kinds."""
    if not 1 <= limit <= MAX_LIST:
        raise BadUserInput(f"limit is between 1 and {MAX_LIST}.")
    query = select(Report).order_by(col(Report.id)).limit(limit)
    if after is not None:
        query = query.where(col(Report.id) > after)
    if resolved is True:
        query = query.where(col(Report.resolved_at).is_not(None))
    elif resolved is False:
        query = query.where(col(Report.resolved_at).is_(None))
    async with services.db.session() as session:
        return [ReportRecord.of(row) for row in (await session.execute(query)).scalars()]


async def resolve_report(services: Services, report_id: int, resolution: str) -> ReportRecord:
    """Marks a report resolved with the operator's note; `NotFound`, or `Conflict` when it was resolved already."""
    note = " ".join(resolution.split())
    if not 1 <= len(note) <= MAX_RESOLUTION:
        raise BadUserInput(f"A resolution is 1 to {MAX_RESOLUTION} characters.")
    check_visible_text(note, what="A resolution")

    async def work(session: AsyncSession) -> ReportRecord:
        row = await session.get(Report, report_id, with_for_update=True)
        if row is None:
            raise NotFound(f"No such report: {report_id}.")
        if row.resolved_at is not None:
            raise Conflict(f"Report {report_id} was resolved already.")
        row.resolved_at = services.clock()
        row.resolution = note
        session.add(row)
        await session.flush()
        return ReportRecord.of(row)

    record = await services.db.transaction(work)
    log.info("report %s resolved", report_id)
    return record
