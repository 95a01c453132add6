"""Splitting id lists for `IN (…)`: a list past the driver's bind-parameter limit (32,767 on asyncpg) fails."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

T = TypeVar("T")

# Ids per IN list (and per DataLoader batch): far below the bind-parameter limit.
IN_LIST_SIZE: Final = 1000


def chunks(items: Sequence[T], size: int = IN_LIST_SIZE) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (itertools.batched is Python 3.12+)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
