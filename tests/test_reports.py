"""Reports over the real API, in both modes: who hears of them, what is stored, limits, repeats, the operator's view."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.app import Overrides, connected_services
from infra.settings import Settings
from resolvers import reports
from resolvers.errors import Conflict, NotFound
from resolvers.reports import ReportRecord
from resolvers.services import Services
from resolvers.webhook_endpoints import new_secret
from tests.support.client import Json, Subscription
from tests.support.helpers import PASSWORD, Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import before_marker, next_of
from tests.support.waiting import until
from tests.support.webhook_receiver import WebhookReceiver

REPORTS_PER_HOUR = 4
REPORT = "mutation R($m: ID!, $r: ReportReason!, $e: String) { reportMessage(messageId: $m, reason: $r, excerpt: $e) }"
REPORT_USER = "mutation U($u: ID!, $r: ReportReason!, $d: String) { reportUser(userId: $u, reason: $r, details: $d) }"
REPORT_FIELDS = (
    "cursor report { id kind reason excerpt createdAt messageId conversation { id title } "
    "reporter { id } reportedUser { id } }"
)
EVENT_FIELDS = (
    f"__typename ... on MessageEvent {{ cursor message {{ id body }} }} ... on ReportEvent {{ {REPORT_FIELDS} }}"
)
EVENTS = f"subscription E($after: String) {{ events(after: $after) {{ {EVENT_FIELDS} }} }}"
PENDING = f"query P {{ pendingEvents(first: 500) {{ {EVENT_FIELDS} }} }}"
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
DELETE = "mutation D($p: String!) { deleteAccount(password: $p) }"
EXPORT = "query { exportMyData }"


@dataclass
class Rig:
    """A server of this module's own (a small hourly report limit) and its settings, for the operator's view."""

    api: Api
    settings: Settings

    @asynccontextmanager
    async def operator(self) -> AsyncIterator[Services]:
        """The services the admin API would use, on the server's database (list_reports, resolve_report)."""
        async with connected_services(self.settings, Overrides(fast_password_hashing=True)) as services:
            yield services


@pytest.fixture(scope="module", params=["embedded", "production"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """In production mode it shares the run's database, with a Redis namespace of its own."""
    limits: dict[str, object] = {"reports_per_hour": REPORTS_PER_HOUR, "max_report_excerpt_length": 200}
    if request.param == "embedded":
        settings = embedded_settings(Path(tmp_path_factory.mktemp("reports")), **limits)
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}reports:"), **limits
        )
    with ThreadServer(settings) as server:
        yield Rig(Api(url=server.url, ws_url=server.ws_url, mode=request.param), settings)


@asynccontextmanager
async def stream(person: Person) -> AsyncIterator[Subscription]:
    """`person`'s live events, with report fields."""
    async with person.socket() as socket:
        yield await socket.subscribe(EVENTS)


async def report(person: Person, message_id: str, reason: str = "HARASSMENT", excerpt: str | None = None) -> bool:
    answer: bool = (await person.data(REPORT, m=message_id, r=reason, e=excerpt))["reportMessage"]
    return answer


def report_events(events: list[Json]) -> list[Json]:
    return [e["report"] for e in events if e["__typename"] == "ReportEvent"]


async def pending_reports(person: Person) -> list[Json]:
    return report_events((await person.data(PENDING))["pendingEvents"])


async def stored(rig: Rig, *, reporter: Person) -> list[ReportRecord]:
    """Every report `reporter` filed, as the operator lists them."""
    records: list[ReportRecord] = []
    async with rig.operator() as services:
        while True:
            page = await reports.list_reports(
                services, resolved=None, limit=500, after=records[-1].id if records else None
            )
            records += page
            if len(page) < 500:
                return [r for r in records if r.reporter_id == int(reporter.user_id)]


async def group_of(owner: Person, *, admins: list[Person], members: list[Person]) -> str:
    group = await owner.create_group("Book club", members=[*admins, *members])
    for admin in admins:
        await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    return group


async def test_a_group_report_reaches_its_owners_and_admins_live_and_on_replay_and_nobody_else(rig: Rig) -> None:
    """Owner and admin get a ReportEvent (live and replayed); the sender, the reporter and plain members get nothing."""
    owner, admin, reporter, sender, bystander = await rig.api.people("owner", "admin", "reporter", "sender", "other")
    group = await group_of(owner, admins=[admin], members=[reporter, sender, bystander])
    message = await sender.send(group, "you are all idiots")

    async with (
        stream(admin) as admin_live,
        stream(sender) as sender_live,
        stream(bystander) as bystander_live,
        stream(reporter) as reporter_live,
    ):
        before = datetime.now(UTC)
        assert await report(reporter, message["id"], "HARASSMENT", "you are all idiots") is True
        live = (await next_of(admin_live, "ReportEvent"))["report"]
        for quiet in (sender_live, bystander_live, reporter_live):
            assert report_events(await before_marker(quiet, owner, group)) == []

    assert live["kind"] == "MESSAGE"
    assert live["reason"] == "HARASSMENT"
    assert live["excerpt"] == "you are all idiots"
    assert live["messageId"] == message["id"]
    assert live["conversation"] == {"id": group, "title": "Book club"}
    assert live["reporter"] == {"id": reporter.user_id}
    assert live["reportedUser"] == {"id": sender.user_id}
    assert before - timedelta(seconds=5) <= datetime.fromisoformat(live["createdAt"]) <= datetime.now(UTC)
    assert await pending_reports(owner) == [live]
    assert await pending_reports(admin) == [live]
    async with stream(owner) as replay:
        assert (await next_of(replay, "ReportEvent"))["report"] == live
    for person in (sender, bystander, reporter):
        assert await pending_reports(person) == []


async def test_a_reported_admin_never_hears_of_the_report_about_them(rig: Rig) -> None:
    """An admin's own message reported: the owner is told, the admin (on any device) is not."""
    owner, admin, reporter = await rig.api.people("owner", "admin", "reporter")
    admin_laptop = await admin.other_device("laptop")
    group = await group_of(owner, admins=[admin], members=[reporter])
    message = await admin.send(group, "slur")

    async with stream(admin) as admin_live, stream(admin_laptop) as laptop_live:
        assert await report(reporter, message["id"], "HATE") is True
        assert report_events(await before_marker(admin_live, owner, group)) == []
        assert report_events(await before_marker(laptop_live, owner, group)) == []
    assert [r["reportedUser"] for r in await pending_reports(owner)] == [{"id": admin.user_id}]
    assert await pending_reports(admin) == []


async def test_a_report_stores_who_what_and_when_and_the_operator_resolves_it(rig: Rig) -> None:
    """The row has reporter, sender, conversation, message, reason, excerpt, time; list and resolve work."""
    owner, reporter, sender = await rig.api.people("owner", "reporter", "sender")
    group = await owner.create_group(members=[reporter, sender])
    message = await sender.send(group, "buy cheap watches")
    before = datetime.now(UTC)
    await report(reporter, message["id"], "SPAM", "  buy cheap watches\nhttp://spam.example  ")

    [record] = await stored(rig, reporter=reporter)
    message_row, conversation_id, sender_id = (int(part) for part in message["id"].split(".")[:3])
    assert (record.kind, record.reason) == ("MESSAGE", "SPAM")
    assert record.excerpt == "buy cheap watches\nhttp://spam.example"
    assert (record.reported_user_id, record.conversation_id, record.message_id) == (
        int(sender.user_id),
        int(group),
        message_row,
    )
    assert (conversation_id, sender_id) == (int(group), int(sender.user_id))
    assert before - timedelta(seconds=5) <= record.created_at <= datetime.now(UTC)
    assert record.resolved_at is None

    async with rig.operator() as services:
        open_ids = {r.id for r in await reports.list_reports(services, resolved=False, limit=500, after=record.id - 1)}
        assert record.id in open_ids
        resolved = await reports.resolve_report(services, record.id, "Warned the sender.")
        assert resolved.resolution == "Warned the sender."
        assert resolved.resolved_at is not None
        with pytest.raises(Conflict):
            await reports.resolve_report(services, record.id, "Again.")
        with pytest.raises(NotFound):
            await reports.resolve_report(services, 2**62, "Nothing.")
        still_open = await reports.list_reports(services, resolved=False, limit=500, after=record.id - 1)
        done = await reports.list_reports(services, resolved=True, limit=500, after=record.id - 1)
    assert record.id not in {r.id for r in still_open}
    assert record.id in {r.id for r in done}


async def test_a_direct_chat_report_reaches_nobody_in_the_app(rig: Rig) -> None:
    """Reporting the other person's message in a direct chat: stored for the operator, no event to either side."""
    alice, bob = await rig.api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    message = await bob.send(direct, "threat")
    async with stream(alice) as alice_live, stream(bob) as bob_live:
        assert await report(alice, message["id"], "VIOLENCE", "threat") is True
        assert report_events(await before_marker(alice_live, bob, direct)) == []
        assert report_events(await before_marker(bob_live, alice, direct)) == []
    assert [(r.kind, r.reported_user_id) for r in await stored(rig, reporter=alice)] == [("MESSAGE", int(bob.user_id))]


async def test_only_members_report_a_message_and_bad_input_is_refused(rig: Rig) -> None:
    """A non-member (or ex-member) is NOT_FOUND; one's own message, long or invisible-character excerpts are refused."""
    owner, sender, outsider, leaver = await rig.api.people("owner", "sender", "outsider", "leaver")
    group = await owner.create_group(members=[sender, leaver])
    message = await sender.send(group, "hello")
    await leaver.data("mutation L($c: ID!) { leaveGroup(conversationId: $c) }", c=group)

    assert await outsider.error(REPORT, m=message["id"], r="SPAM") == "NOT_FOUND"
    assert await leaver.error(REPORT, m=message["id"], r="SPAM") == "NOT_FOUND"
    forged = message["id"].rsplit(".", 1)[0] + ".0000000000000000"
    assert await owner.error(REPORT, m=forged, r="SPAM") == "BAD_USER_INPUT"
    assert await sender.error(REPORT, m=message["id"], r="SPAM") == "BAD_USER_INPUT"
    assert await owner.error(REPORT, m=message["id"], r="SPAM", e="x" * 201) == "BAD_USER_INPUT"
    assert await owner.error(REPORT, m=message["id"], r="SPAM", e="evil\u202egnp.exe") == "BAD_USER_INPUT"
    assert await stored(rig, reporter=outsider) == []
    assert await stored(rig, reporter=owner) == []


async def test_a_repeat_is_stored_once_and_the_hourly_limit_trips(rig: Rig) -> None:
    """The same message twice: true, one row, one event; past the limit RATE_LIMITED, and a repeat still answers true."""
    owner, reporter, sender = await rig.api.people("owner", "reporter", "sender")
    group = await owner.create_group(members=[reporter, sender])
    messages = [await sender.send(group, f"spam {i}") for i in range(REPORTS_PER_HOUR + 1)]

    assert await report(reporter, messages[0]["id"], "SPAM") is True
    assert await report(reporter, messages[0]["id"], "OTHER", "changed my mind") is True
    [record] = await stored(rig, reporter=reporter)
    assert record.reason == "SPAM"
    assert len(await pending_reports(owner)) == 1

    for message in messages[1:REPORTS_PER_HOUR]:
        assert await report(reporter, message["id"], "SPAM") is True
    assert await reporter.error(REPORT, m=messages[REPORTS_PER_HOUR]["id"], r="SPAM") == "RATE_LIMITED"
    assert await report(reporter, messages[0]["id"], "SPAM") is True
    assert len(await stored(rig, reporter=reporter)) == REPORTS_PER_HOUR
    assert len(await pending_reports(owner)) == REPORTS_PER_HOUR


async def test_a_user_report_reaches_only_the_operator(rig: Rig) -> None:
    """Any live account can be reported (once while open); deleted ones and oneself cannot; nobody in the app hears."""
    reporter, troll, admin_of_both, gone = await rig.api.people("reporter", "troll", "admin", "gone")
    group = await admin_of_both.create_group(members=[troll, reporter])
    await gone.data(DELETE, p=PASSWORD)

    async with stream(troll) as troll_live, stream(admin_of_both) as admin_live:
        answer = await reporter.data(REPORT_USER, u=troll.user_id, r="HARASSMENT", d="Sends me threats by mail")
        assert answer == {"reportUser": True}
        assert (await reporter.data(REPORT_USER, u=troll.user_id, r="SPAM"))["reportUser"] is True
        assert report_events(await before_marker(troll_live, reporter, group)) == []
        assert report_events(await before_marker(admin_live, reporter, group)) == []

    assert await reporter.error(REPORT_USER, u=gone.user_id, r="SPAM") == "NOT_FOUND"
    assert await reporter.error(REPORT_USER, u="999999999", r="SPAM") == "NOT_FOUND"
    assert await reporter.error(REPORT_USER, u=reporter.user_id, r="SPAM") == "BAD_USER_INPUT"
    [record] = await stored(rig, reporter=reporter)
    assert (record.kind, record.reason, record.reported_user_id) == ("USER", "HARASSMENT", int(troll.user_id))
    assert record.excerpt == "Sends me threats by mail"
    assert (record.conversation_id, record.message_id) == (None, None)


async def test_reports_are_in_the_reporters_export_and_outlive_their_account(rig: Rig) -> None:
    """The export lists the reports one filed (not those about one); deleting the account keeps them for the operator."""
    owner, reporter, sender = await rig.api.people("owner", "reporter", "sender")
    group = await owner.create_group(members=[reporter, sender])
    message = await sender.send(group, "scam link")
    await report(reporter, message["id"], "ILLEGAL", "scam link")

    exported = json.loads((await reporter.data(EXPORT))["exportMyData"])
    [filed] = exported["reportsFiled"]
    assert filed["kind"] == "MESSAGE"
    assert filed["reason"] == "ILLEGAL"
    assert filed["excerpt"] == "scam link"
    assert filed["reportedUserId"] == sender.user_id
    assert filed["conversationId"] == group
    assert filed["resolvedAt"] is None
    about_sender = json.loads((await sender.data(EXPORT))["exportMyData"])
    assert about_sender["reportsFiled"] == []
    assert "scam link" not in json.dumps(about_sender)

    await reporter.data(DELETE, p=PASSWORD)
    [kept] = await stored(rig, reporter=reporter)
    assert (kept.reported_user_id, kept.excerpt) == (int(sender.user_id), "scam link")
    [event] = await pending_reports(owner)
    assert event["reporter"] == {"id": reporter.user_id}


async def test_concurrent_repeats_store_one_report(rig: Rig) -> None:
    """Eight identical reports at once: all answer true, one row and one event (the reporter's row serializes them)."""
    owner, reporter, sender = await rig.api.people("owner", "reporter", "sender")
    group = await owner.create_group(members=[reporter, sender])
    message = await sender.send(group, "spam")
    answers = await asyncio.gather(*(report(reporter, message["id"], "SPAM") for _ in range(8)))
    assert answers == [True] * 8
    assert len(await stored(rig, reporter=reporter)) == 1
    assert len(await pending_reports(owner)) == 1


def kinds(receiver: WebhookReceiver) -> list[str]:
    return [str(delivery.event["data"]["kind"]) for delivery in receiver.delivered()]


async def test_the_operator_gets_a_signed_report_created_webhook(tmp_path: Path) -> None:
    """Each new report (not a repeat) reaches the operator's endpoint as `report.created`, verified by standardwebhooks."""
    secret = new_secret()
    async with WebhookReceiver(secret) as receiver:
        hooks = json.dumps([{"url": receiver.url, "secret": secret, "events": ["report.created"]}])
        settings = embedded_settings(tmp_path, webhooks=hooks, webhook_allow_private_endpoints=True)
        with ThreadServer(settings) as server:
            api = Api(url=server.url, ws_url=server.ws_url, mode="embedded")
            owner, reporter, sender = await api.people("owner", "reporter", "sender")
            group = await owner.create_group(members=[reporter, sender])
            message = await sender.send(group, "scam")
            await report(reporter, message["id"], "SPAM", "scam")
            await report(reporter, message["id"], "SPAM", "scam")
            await reporter.data(REPORT_USER, u=sender.user_id, r="OTHER")
            # The user report, filed after the repeat, stands as the marker: a repeat's webhook would be queued before it.
            await until(lambda: "USER" in kinds(receiver) or None, "the user report's webhook")

    events = [delivery.event for delivery in receiver.delivered()]
    assert [e["type"] for e in events] == ["report.created", "report.created"]
    on_message, on_user = (e["data"] for e in events)
    assert on_message["kind"] == "MESSAGE"
    assert on_message["message_id"] == message["id"]
    assert (on_message["reporter_id"], on_message["reported_user_id"]) == (reporter.user_id, sender.user_id)
    assert (on_message["conversation_id"], on_message["excerpt"], on_message["reason"]) == (group, "scam", "SPAM")
    assert on_user["kind"] == "USER"
    assert (on_user["reported_user_id"], on_user["message_id"], on_user["conversation_id"]) == (
        sender.user_id,
        None,
        None,
    )
