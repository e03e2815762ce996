"""Time as both simulated services keep it: UTC milliseconds, strictly increasing per change.

Every change gets a ``modifiedOn`` later than every earlier one (at least 1 ms apart), so
export feeds, which follow ``modifiedOn`` order, place a change after everything before it
even when two happen within the same millisecond.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


def iso_ms(ms: int) -> str:
    """``2025-05-30T18:22:11.123Z`` (ServiceTitan's date-time style). On the hot path of
    seeding and rendering: ``time.gmtime`` is twice as fast as ``datetime``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(round(moment.timestamp() * 1000))


def now_ms() -> int:
    return int(time.time() * 1000)


class Clock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def tick(self) -> int:
        """A change's timestamp: now, or 1 ms after the previous change if that is later."""
        with self._lock:
            self._last = max(now_ms(), self._last + 1)
            return self._last

    def observe(self, ms: int) -> None:
        """Seeded data may lie in the future of a skewed clock: stay after it."""
        with self._lock:
            self._last = max(self._last, ms)
