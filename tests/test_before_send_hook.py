"""The before-send hook: it rejects, replaces or allows each new message, and fails open or closed as configured."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.helpers import Api, Person
from tests.support.hook_server import ALLOW, HOOK_SECRET, HookServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import before_marker

MODES = pytest.mark.parametrize("mode", ["embedded", "production"])
# Generous, so a loaded machine's ordinary answers arrive in time; the timeout tests wait it out once.
TIMEOUT_MS = 2000
SEND = (
    "mutation S($input: SendMessageInput!) { sendMessage(input: $input) "
    "{ id clientId body conversationId sender { id username } mentions { id } } }"
)

Servers = Callable[..., Api]


def hook_settings(hook: HookServer, **changes: object) -> dict[str, object]:
    """Settings pointing a server at the local hook."""
    return {
        "hook_before_send_url": hook.url,
        "hook_secret": HOOK_SECRET,
        "hook_before_send_timeout_ms": TIMEOUT_MS,
        **changes,
    }


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    with HookServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_hook(hook: HookServer) -> Iterator[None]:
    """Each test starts with a hook that allows everything and has seen nothing."""
    hook.reset()
    yield
    hook.reset()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, hook: HookServer) -> Iterator[Servers]:
    """Parley servers using the hook, by mode and failure behaviour, started on first use and kept for the module."""
    started: dict[tuple[str, bool], Api] = {}
    with ExitStack() as stack:

        def get(backends: tuple[str, RedisTarget] | None, *, fail_open: bool) -> Api:
            mode = "embedded" if backends is None else "production"
            if (mode, fail_open) not in started:
                changes = hook_settings(hook, hook_before_send_fail_open=fail_open)
                settings = (
                    embedded_settings(tmp_path_factory.mktemp("hooked"), **changes)
                    if backends is None
                    else production_settings(backends[0], backends[1], **changes)
                )
                server = stack.enter_context(ThreadServer(settings))
                started[mode, fail_open] = Api(server.url, server.ws_url, mode)
            return started[mode, fail_open]

        yield get


def _backends(request: pytest.FixtureRequest) -> tuple[str, RedisTarget] | None:
    """PostgreSQL and Redis for the production mode; nothing for the embedded one."""
    if request.node.callspec.params["mode"] == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@pytest.fixture
def closed(request: pytest.FixtureRequest, servers: Servers) -> Api:
    """The test's mode's server whose hook fails closed (the default)."""
    return servers(_backends(request), fail_open=False)


@pytest.fixture
def open_(request: pytest.FixtureRequest, servers: Servers) -> Api:
    """The test's mode's server whose hook fails open."""
    return servers(_backends(request), fail_open=True)


EDIT = "mutation E($m: ID!, $b: String) { editMessage(messageId: $m, body: $b) }"
EDITS = "query P { pendingEvents(first: 100) { __typename ... on MessageEditedEvent { body } } }"


def attempt(group: str, body: str, **more: Any) -> dict[str, Any]:
    return {"conversationId": group, "clientId": uuid.uuid4().hex, "body": body, **more}


async def pair(api: Api) -> tuple[Person, Person, str]:
    """Alice and Bob in a group, Bob with nothing pending."""
    alice, bob = await api.people("alice", "bob")
    group = await alice.create_group("moderated", members=[bob])
    await bob.drain()
    return alice, bob, group


@MODES
async def test_a_rejected_message_is_refused_with_the_hooks_reason_and_reaches_nobody(
    mode: str, closed: Api, hook: HookServer
) -> None:
    """The sender gets FORBIDDEN with the hook's reason (one line, bounded); nothing is stored or streamed, and
    the clientId stays free for a corrected message."""
    alice, bob, group = await pair(closed)
    hook.decide = lambda data: (
        {"action": "reject", "reason": "No links to that site."} if "spam" in data["body"] else ALLOW
    )
    async with bob.events() as stream:
        refused = await alice.http.error(SEND, input=(first := attempt(group, "buy spam now")))
        assert refused.code == "FORBIDDEN"
        assert refused.errors[0]["message"] == "No links to that site."
        assert await before_marker(stream, alice, group) == []
    assert [e["message"]["body"] for e in await bob.drain()] == ["marker"]

    hook.decide = lambda _data: {"action": "reject", "reason": "line one\nline two " + "x" * 500}
    long_reason = (await alice.http.error(SEND, input=attempt(group, "anything"))).errors[0]["message"]
    assert long_reason.startswith("line one line two x")
    assert len(long_reason) == 200

    hook.decide = lambda _data: ALLOW
    fixed = (await alice.data(SEND, input={**first, "body": "a fine message"}))["sendMessage"]
    assert fixed["body"] == "a fine message"
    assert [e["message"]["body"] for e in await bob.pending() if e["__typename"] == "MessageEvent"] == [
        "a fine message"
    ]


@MODES
async def test_a_replaced_body_is_what_the_sender_and_the_recipients_get(
    mode: str, closed: Api, hook: HookServer
) -> None:
    """The hook's replacement is stored: the returned message, the live stream and pending events show it."""
    alice, bob, group = await pair(closed)
    hook.decide = lambda data: {"action": "replace", "body": data["body"].replace("darn", "****")}
    async with bob.events() as stream:
        sent = (await alice.data(SEND, input=attempt(group, "darn it")))["sendMessage"]
        assert sent["body"] == "**** it"
        [event] = await before_marker(stream, alice, group)
    assert event["message"]["id"] == sent["id"]
    assert event["message"]["body"] == "**** it"


@MODES
async def test_an_edit_is_judged_like_a_send(mode: str, closed: Api, hook: HookServer) -> None:
    """A clean message cannot be edited into what the hook would refuse: the edit is asked about, named as one,
    and a rejection leaves the text as it was while a replacement is what members get."""
    alice, bob, group = await pair(closed)
    sent = await alice.send(group, "clean words")
    hook.decide = lambda data: (
        {"action": "reject", "reason": "Not here."} if "rude" in data["body"] else {"action": "allow"}
    )
    assert await alice.error(EDIT, m=sent["id"], b="rude words") == "FORBIDDEN"
    assert hook.calls[-1].data["editOf"] == sent["id"]
    assert hook.calls[-1].data["body"] == "rude words"
    hook.decide = lambda data: {"action": "replace", "body": data["body"].replace("darn", "****")}
    await alice.data(EDIT, m=sent["id"], b="darn words")
    pending = (await bob.data(EDITS))["pendingEvents"]
    assert [e["body"] for e in pending if e["__typename"] == "MessageEditedEvent"] == ["**** words"]


@MODES
async def test_an_allowed_message_is_sent_as_is_and_the_hook_gets_it_signed(
    mode: str, closed: Api, hook: HookServer
) -> None:
    """An allowed message is stored unchanged; the hook got it signed (verifiable with standardwebhooks, and a
    changed body is not), with the ids, mentions, reply and clientId as the API shows them."""
    alice, bob, group = await pair(closed)
    first = await alice.send(group, "first")
    reply = attempt(group, "@bob see above", mentions=[bob.user_id], replyToId=first["id"])
    sent = (await alice.data(SEND, input=reply))["sendMessage"]
    assert sent["body"] == "@bob see above"
    call = hook.calls[-1]
    assert call.data == {
        "conversationId": group,
        "sender": {"id": alice.user_id, "username": alice.username},
        "clientId": reply["clientId"],
        "body": "@bob see above",
        "mentions": [bob.user_id],
        "attachmentCount": 0,
        "replyToId": first["id"],
        "editOf": None,
    }
    assert call.payload is not None
    assert call.payload["type"] == "message.before_send"
    with pytest.raises(WebhookVerificationError):
        Webhook(HOOK_SECRET).verify(call.body.replace(b"see above", b"see below"), call.headers)
    assert call.headers["webhook-id"].startswith("msg_")


@MODES
async def test_a_retry_of_the_same_client_id_does_not_ask_the_hook_again(
    mode: str, closed: Api, hook: HookServer
) -> None:
    """Retrying a stored send returns the stored (replaced) message without a second call to the hook."""
    alice, bob, group = await pair(closed)
    hook.decide = lambda _data: {"action": "replace", "body": "[checked]"}
    message = attempt(group, "hello")
    first = (await alice.data(SEND, input=message))["sendMessage"]
    again = (await alice.data(SEND, input=message))["sendMessage"]
    assert again == first
    assert again["body"] == "[checked]"
    assert len(hook.calls) == 1
    assert len(await bob.pending()) == 1


def _hang(hook: HookServer) -> None:
    hook.hang = True


FAILURES: dict[str, Callable[[HookServer], None]] = {
    "timeout": _hang,
    "http 500": lambda hook: setattr(hook, "decide", lambda _data: (500, b"oops")),
    "not json": lambda hook: setattr(hook, "decide", lambda _data: (200, b"<html>ok</html>")),
    "unknown action": lambda hook: setattr(hook, "decide", lambda _data: {"action": "maybe"}),
    "replacement too long": lambda hook: setattr(
        hook, "decide", lambda _data: {"action": "replace", "body": "x" * 4001}
    ),
    # PostgreSQL stores no NUL in text: refused here, not an internal error in the statement.
    "replacement with NUL": lambda hook: setattr(
        hook, "decide", lambda _data: {"action": "replace", "body": "clean\u0000"}
    ),
}


@MODES
@pytest.mark.parametrize("failure", FAILURES)
async def test_a_hook_without_a_usable_answer_fails_closed(
    mode: str, failure: str, closed: Api, hook: HookServer
) -> None:
    """Fail-closed (the default): the send is UNAVAILABLE and stores nothing; the retry with the same clientId,
    once the hook answers, stores the message once."""
    alice, bob, group = await pair(closed)
    FAILURES[failure](hook)
    message = attempt(group, "are you there?")
    assert (await alice.http.error(SEND, input=message)).code == "UNAVAILABLE"
    assert await bob.pending() == []
    hook.reset()
    stored = (await alice.data(SEND, input=message))["sendMessage"]
    assert [e["message"]["id"] for e in await bob.pending()] == [stored["id"]]


@MODES
@pytest.mark.parametrize("failure", ["timeout", "http 500"])
async def test_a_hook_without_a_usable_answer_fails_open_when_configured(
    mode: str, failure: str, open_: Api, hook: HookServer
) -> None:
    """With PARLEY_HOOK_BEFORE_SEND_FAIL_OPEN, a hook that times out or errs lets the message through unchanged."""
    alice, bob, group = await pair(open_)
    FAILURES[failure](hook)
    sent = (await alice.data(SEND, input=attempt(group, "unchecked")))["sendMessage"]
    assert sent["body"] == "unchecked"
    assert len(hook.calls) == 1
    assert [e["message"]["body"] for e in await bob.pending()] == ["unchecked"]


async def test_a_hook_on_a_private_address_is_refused_outside_development(tmp_path: Path, hook: HookServer) -> None:
    """Without PARLEY_ENV=development a loopback hook URL is never called: sends fail closed (UNAVAILABLE)."""
    settings = embedded_settings(tmp_path, env=None, **hook_settings(hook))
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "embedded")
        alice, _bob, group = await pair(api)
        assert (await alice.http.error(SEND, input=attempt(group, "hi"))).code == "UNAVAILABLE"
    assert hook.calls == []
