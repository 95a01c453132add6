"""The before-send hook's verdict on a message: allow, reject (with a reason the sender sees) or replace its body.

The hook is the operator's (`PARLEY_HOOK_BEFORE_SEND_URL`, asked through the `BeforeSendHook`
port). When it gives no answer to go by (a timeout, a refused address, a non-2xx, a malformed
answer) the send goes on with its own body if the hook fails open, and is refused with
`Unavailable` if it fails closed: nothing was judged, so the client retries with the same
clientId rather than dropping the message as it would on `Forbidden`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from resolvers.accounts import Viewer, get_users
from resolvers.errors import Forbidden, Unavailable
from resolvers.ids import MessageRef
from resolvers.ports import HookFailed, OutgoingMessage
from resolvers.services import BeforeSend, Services
from resolvers.text import unstorable

log = logging.getLogger("parley.before_send")

# A reason is shown to the sender as an error message: short, one line.
MAX_REASON = 200
DEFAULT_REASON = "This message was not accepted."
UNCHECKED = "The message could not be checked; try again shortly."


class _Malformed(Exception):
    """An answer that is none of allow, reject or replace with a valid body."""


def _reason(answer: Mapping[str, Any]) -> str:
    """The hook's reason, cut to `MAX_REASON` printable characters, or the default."""
    reason = answer.get("reason")
    if not isinstance(reason, str):
        return DEFAULT_REASON
    cleaned = "".join(c if c.isprintable() else " " for c in reason).strip()[:MAX_REASON].strip()
    return cleaned or DEFAULT_REASON


def _replacement(services: Services, answer: Mapping[str, Any], *, has_attachments: bool) -> str | None:
    """The new body, by the rules of any body: at most the maximum length, blank only beside attachments."""
    body = answer.get("body")
    if not isinstance(body, str) or len(body) > services.limits.max_body_length:
        raise _Malformed("replace needs a body of at most the maximum length")
    if unstorable(body):
        raise _Malformed("replace with a body holding NUL or unpaired surrogates")
    if not body.strip():
        if not has_attachments:
            raise _Malformed("replace with a blank body on a message without attachments")
        return None
    return body


def _judge(services: Services, answer: Mapping[str, Any], body: str | None, *, has_attachments: bool) -> str | None:
    """The body to store; `Forbidden` for a rejection, `_Malformed` for anything unexpected."""
    action = answer.get("action") if isinstance(answer, Mapping) else None
    if action == "allow":
        return body
    if action == "reject":
        raise Forbidden(_reason(answer))
    if action == "replace":
        return _replacement(services, answer, has_attachments=has_attachments)
    raise _Malformed(f"unknown action {str(action)[:40]!r}")


async def screen(
    services: Services,
    before_send: BeforeSend,
    viewer: Viewer,
    *,
    conversation_id: int,
    client_id: str,
    body: str | None,
    mentions: Sequence[int],
    attachment_count: int,
    reply_to: MessageRef | None,
    edit_of: MessageRef | None = None,
) -> str | None:
    """The body to store after asking the hook; `Forbidden` with its reason, or `Unavailable` (fail-closed).

    An edit (`edit_of`) is asked about like a send: otherwise a clean message could be edited into anything.
    """
    user = (await get_users(services, [viewer.user_id])).get(viewer.user_id)
    message = OutgoingMessage(
        conversation_id=conversation_id,
        sender_id=viewer.user_id,
        sender_username=user.username if user is not None else "",
        client_id=client_id,
        body=body,
        mentions=tuple(mentions),
        attachment_count=attachment_count,
        reply_to=reply_to,
        edit_of=edit_of,
    )
    try:
        answer = await before_send.hook.ask(message)
        return _judge(services, answer, body, has_attachments=attachment_count > 0)
    except Forbidden:
        log.info("before-send hook rejected a message of user %s in conversation %s", viewer.user_id, conversation_id)
        raise
    except (HookFailed, _Malformed) as failure:
        if before_send.fail_open:
            log.warning(
                "before-send hook failed (%s); message of user %s in conversation %s stored unchecked (fail-open)",
                failure,
                viewer.user_id,
                conversation_id,
            )
            return body
        log.warning(
            "before-send hook failed (%s); message of user %s in conversation %s refused (fail-closed)",
            failure,
            viewer.user_id,
            conversation_id,
        )
        raise Unavailable(UNCHECKED) from None
