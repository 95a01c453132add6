"""A clock a test moves forward, for the code that takes one: expiry is then tested without waiting for it."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from models.columns import utcnow


class MovableClock:
    """The real time plus an offset that only grows; read from the server's thread as well as the test's."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Epoch seconds, as `time.time()`."""
        return time.time() + self._offset

    def now(self) -> datetime:
        """The timezone-aware datetime, as `models.columns.utcnow()`."""
        return utcnow() + timedelta(seconds=self._offset)

    def advance(self, seconds: float) -> None:
        """Moves the clock forward by `seconds`."""
        with self._lock:
            self._offset += seconds
