"""Waiting for what a test needs to see, with a deadline, instead of sleeping a fixed time.

A fixed sleep is either too short on a loaded machine (a flaky test) or too long everywhere
else (a slow one); polling for the effect ends as soon as it is there.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

# How often a condition is looked at: often enough to add little to a test, rarely enough to cost nothing.
POLL_SECONDS = 0.02


@overload
async def until(
    condition: Callable[[], Awaitable[T | None]], what: str, *, timeout: float = ..., every: float = ...
) -> T: ...
@overload
async def until(condition: Callable[[], T | None], what: str, *, timeout: float = ..., every: float = ...) -> T: ...
async def until(
    condition: Callable[[], T | Awaitable[T | None] | None],
    what: str,
    *,
    timeout: float = 15,
    every: float = POLL_SECONDS,
) -> T:
    """Waits until `condition()` (maybe a coroutine function) is truthy and returns it; fails naming `what` after `timeout` s.

    `timeout` only guards against a hang: a passing test waits no longer than the effect takes.
    """
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return held
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await asyncio.sleep(every)
