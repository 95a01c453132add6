"""Subscriptions over HTTP streams (multipart, SSE): Apollo's multipart transport and the helpers ending a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from starlette.requests import Request
from starlette.websockets import WebSocket
from strawberry.http.streaming import MultipartSubscriptionTransport
from strawberry.types import SubscriptionExecutionResult

# What Apollo Router sends, and what each Apollo client parses: iOS splits on ";" and
# matches the spec parameter literally ("subscriptionSpec=1.0": quoted, or followed by
# strawberry's ",application/json", it fails with cannotParseResponse); Apollo Client and
# Kotlin strip the boundary's quotes.
MULTIPART_SUBSCRIPTION_CONTENT_TYPE = 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0'


class MultipartSubscriptions(MultipartSubscriptionTransport):
    """strawberry's Apollo multipart subscription transport, with the Content-Type Apollo's clients all parse."""

    @property
    def headers(self) -> Mapping[str, str]:
        return {"Content-Type": MULTIPART_SUBSCRIPTION_CONTENT_TYPE}


async def iterate_closing(source: SubscriptionExecutionResult) -> AsyncIterator[object]:
    """The source's results, closing it however the iteration ends."""
    try:
        async for item in source:
            yield item
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


async def client_left(request: Request | WebSocket) -> None:
    """Returns once the HTTP client has disconnected (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
