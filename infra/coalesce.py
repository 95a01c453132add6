"""Group commit: calls that arrive while a batch is being written go together into the next one.

Nothing waits for a timer: an idle process writes each call at once, and a busy
one writes everything that queued up during the previous write in one statement
(one round trip and one WAL flush instead of N). Written here rather than taken
from a library because what it batches is one SQL statement whose results must
be split back per caller, with a one-by-one retry when a batch fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("parley.coalesce")

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs `flush(items) -> results` (same order) for batches of submitted items."""

    def __init__(
        self,
        flush: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int = 256,
        key: Callable[[Item], Hashable] | None = None,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        # Items with the same key never share a batch (e.g. two acknowledgements of one device).
        self._key = key
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0  # how many flushes ran (for tests and metrics)

    async def submit(self, item: Item) -> Result:
        """Queues `item` and waits for its result (or its own error)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain(), name="parley.coalesce")
        return await asyncio.shield(future)

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        seen: set[Hashable] = set()
        later: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if self._key is not None:
                key = self._key(entry[0])
                if key in seen:
                    later.append(entry)
                    continue
                seen.add(key)
            batch.append(entry)
        self._queue.extendleft(reversed(later))
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                self.batches += 1
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as error:
                    if len(batch) == 1:
                        _settle(batch[0][1], error=error)
                    else:
                        log.warning("a batch of %d failed; running its items one by one", len(batch), exc_info=True)
                        await self._one_by_one(batch)
                    continue
                except BaseException:
                    for _, future in batch:
                        _settle(future, error=RuntimeError("shutting down"))
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result=result)
        except BaseException:
            # Cancelled (shutdown): nobody will write what is still queued; its callers must not wait forever.
            while self._queue:
                _settle(self._queue.popleft()[1], error=RuntimeError("shutting down"))
            raise
        finally:
            self._worker = None

    async def _one_by_one(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        for item, future in batch:
            try:
                (result,) = await self._flush([item])
            except Exception as error:
                _settle(future, error=error)
            else:
                _settle(future, result=result)


def _settle(
    future: asyncio.Future[Result], *, result: Result | None = None, error: BaseException | None = None
) -> None:
    """Resolves a caller's future unless it already was."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
