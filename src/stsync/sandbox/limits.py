"""Rate limits as the two services enforce them.

- ServiceTitan: ``limit`` calls per rolling second per (app key, tenant) → 429 with
  ``Retry-After`` (the gateway's "Rate limit is exceeded. Try again in N seconds.").
- Referral Factory: ``limit`` calls per rolling minute per API key → 429; an IP that is
  refused more than ``block_after`` times is blocked (api/referral-factory.md §2: abusing the
  limit "more than three times" blocks the IP).

Refused calls are not counted against the window (the gateway refuses before counting),
so a client that waits as told gets through.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable


class SlidingWindow:
    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window > 0")
        self.limit = int(limit)
        self.window = float(window)
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[Hashable, deque[float]] = {}

    def admit(self, key: Hashable) -> float | None:
        """None if the call may go ahead (and it is counted); else the seconds to wait."""
        now = self._clock()
        with self._lock:
            calls = self._calls.setdefault(key, deque())
            horizon = now - self.window
            while calls and calls[0] <= horizon:
                calls.popleft()
            if len(calls) >= self.limit:
                return max(0.0, calls[0] + self.window - now)
            calls.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()


def retry_after_header(wait: float) -> str:
    """Whole seconds, at least 1 (``Retry-After`` takes an integer)."""
    return str(max(1, math.ceil(wait)))


class AbuseTracker:
    """Counts 429s per client IP; past ``block_after`` the IP is blocked until ``unblock``."""

    def __init__(self, block_after: int) -> None:
        self.block_after = int(block_after)
        self._lock = threading.Lock()
        self._refusals: dict[str, int] = {}
        self._blocked: set[str] = set()
        self._everyone = False

    def refused(self, ip: str) -> None:
        with self._lock:
            count = self._refusals.get(ip, 0) + 1
            self._refusals[ip] = count
            if count > self.block_after:
                self._blocked.add(ip)

    def blocked(self, ip: str) -> bool:
        with self._lock:
            return self._everyone or ip in self._blocked

    def block_everyone(self) -> None:
        """Block every caller at once (another app on the same key abused the limit)."""
        with self._lock:
            self._everyone = True

    def refusals(self, ip: str) -> int:
        with self._lock:
            return self._refusals.get(ip, 0)

    def unblock(self) -> None:
        with self._lock:
            self._refusals.clear()
            self._blocked.clear()
            self._everyone = False
