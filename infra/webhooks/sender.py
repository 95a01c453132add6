"""Delivers one webhook: checks the endpoint's addresses, signs (Standard Webhooks) and POSTs.

The signature is the maintained `standardwebhooks` library's: `webhook-id` (the same on
every attempt, so receivers drop repeats), `webhook-timestamp` (this attempt's) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`). The endpoint
passes the checks of `resolvers/outbound.py` before every attempt and the request goes
to the address that was checked; redirects are not followed, at most 16 KiB of an
answer is read, and the whole exchange has a deadline (`infra/push/senders.post`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from infra.push.senders import SENT, Outcome, Result, failure, post, retry_after
from resolvers.errors import BadUserInput, Unavailable
from resolvers.outbound import check_url, pinned_url
from resolvers.ports import WebhookJob
from resolvers.webhook_endpoints import Endpoint

log = logging.getLogger("parley.webhooks")

USER_AGENT = "Parley-Webhooks/1"


def signed_headers(endpoint: Endpoint, job: WebhookJob, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": job.event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(endpoint.secret).sign(job.event_id, now, job.body),
    }


class WebhookSender:
    """POSTs signed webhooks over one connection pool."""

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self._timeout = timeout
        self._allow_private = allow_private
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def send(self, endpoint: Endpoint, job: WebhookJob) -> Result:
        """One attempt: SENT on a 2xx, RETRY on anything else (with the receiver's Retry-After), FAILED if refused."""
        try:
            addresses = await check_url(endpoint.url, allow_private=self._allow_private, what="webhook endpoint")
        except BadUserInput as refused:
            return Result(Outcome.FAILED, f"endpoint refused: {refused.message}")
        except Unavailable as busy:
            return Result(Outcome.RETRY, busy.message)
        url, host, extensions = pinned_url(endpoint.url, addresses[0])
        headers = {**host, **signed_headers(endpoint, job, datetime.now(UTC))}
        try:
            answer = await post(
                self._http, url, deadline=self._timeout, content=job.body, headers=headers, extensions=extensions
            )
        except httpx.HTTPError as error:
            return failure(error)
        if 200 <= answer.status_code < 300:
            return SENT
        # Every other answer may be the receiver's passing trouble (a deploy, a full disk): retried.
        return Result(Outcome.RETRY, f"HTTP {answer.status_code}", retry_after(answer))

    async def close(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()
