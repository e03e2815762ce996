"""Client-side request spacing, shared by every thread and every process of a connection.

SPEC §6.4: ServiceTitan allows 60 calls per second and Referral Factory 600 per minute,
both counted per key, and cron may run ``push-lead --new``, ``qualify`` and
``sync-customers`` at the same time. So the budget lives in a small state file under the
connection's state dir, read and written under an OS file lock.

Design: request spacing (GCRA with no burst). Each request gets the slot
``max(now, last_slot + interval)`` with ``interval = window / limit / (1 - headroom)``, and
the caller sleeps until its slot. Slots are ``interval`` apart, so ``limit`` consecutive
slots span more than ``window``: no window of ``window`` seconds — rolling or fixed, however
the server counts — can hold more than ``limit`` requests. A token bucket would allow a
burst of ``limit`` at once and then, combined with steady traffic, more than ``limit`` in a
rolling window; spacing never does. The headroom (2 %) absorbs network jitter between our
send time and the server's arrival time while N requests still take about
N × window / limit × 1.02.

After a 429, ``slow_down(factor)`` multiplies the rate by ``factor`` (0.5 halves it). The
factor is persisted, so the next run — or an overlapping one — starts slower too. It decays
back: every ``quiet_period`` seconds without another ``slow_down`` the rate doubles, until
it is back to normal. The default quiet period is ``max(10 × window, 60 s)``: ten minutes
for Referral Factory, whose IP block is what we are avoiding, one minute for ServiceTitan.

Times in the state file come from ``clock`` (``time.monotonic`` by default), which is
system-wide on Linux, macOS and Windows, so processes of one machine agree on it. A slot
implausibly far in the future means the file was written before a reboot: it is ignored.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from stsync.logs import get_logger
from stsync.storage.paths import PRIVATE_FILE, make_private_dir, write_private_text

log = get_logger(__name__)

DEFAULT_HEADROOM = 0.02
# Below this the limiter would crawl; a 16× slower rate is already a clear signal.
MIN_RATE_FACTOR = 1 / 16


@dataclass
class _Budget:
    """What the state file holds."""

    last_slot: float | None = None
    rate_factor: float = 1.0
    slowed_at: float | None = None

    def factor_at(self, now: float, quiet_period: float) -> float:
        if self.rate_factor >= 1.0 or self.slowed_at is None:
            return 1.0
        if now < self.slowed_at:
            # The clock went backwards: the file predates a reboot, a long quiet period.
            return 1.0
        doublings = math.floor((now - self.slowed_at) / quiet_period)
        if doublings >= 64:
            return 1.0
        return min(1.0, self.rate_factor * 2**doublings)

    def to_json(self) -> dict:
        return {"last_slot": self.last_slot, "rate_factor": self.rate_factor, "slowed_at": self.slowed_at}

    @classmethod
    def from_json(cls, data: object) -> _Budget:
        if not isinstance(data, dict):
            return cls()

        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            return None

        factor = number("rate_factor")
        return cls(
            last_slot=number("last_slot"),
            rate_factor=min(1.0, max(MIN_RATE_FACTOR, factor)) if factor is not None else 1.0,
            slowed_at=number("slowed_at"),
        )


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, across threads and processes."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        headroom: float = DEFAULT_HEADROOM,
        quiet_period: float | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        if not 0 <= headroom < 0.5:
            raise ValueError(f"headroom must be in [0, 0.5), got {headroom}")
        self.limit = int(limit)
        self.window = float(window)
        self.interval = self.window / self.limit / (1.0 - headroom)
        self.quiet_period = float(quiet_period) if quiet_period is not None else max(10 * self.window, 60.0)
        self._clock = clock
        self._sleep = sleep
        self._thread_lock = threading.Lock()
        self._memory = _Budget()
        self._state_file = Path(state_file) if state_file is not None else None
        self._file_lock: FileLock | None = None
        if self._state_file is not None:
            make_private_dir(self._state_file.parent)
            # thread_local=False: our own threading lock already serialises threads.
            # A short poll interval: under cross-process contention filelock polls, and its
            # default 50 ms would be three ServiceTitan slots.
            self._file_lock = FileLock(
                str(self._state_file) + ".lock",
                thread_local=False,
                poll_interval=0.001,
                preserve_lock_file=True,
                mode=PRIVATE_FILE,
            )

    # -- public ------------------------------------------------------------------------
    def acquire(self) -> float:
        """Block until this request's slot; returns the seconds waited."""
        with self._locked() as budget:
            now = self._clock()
            interval = self.interval / budget.factor_at(now, self.quiet_period)
            slot = now
            if budget.last_slot is not None:
                if budget.last_slot - now > self._stale_after(interval):
                    log.info("ignoring a rate-limit slot from before a clock reset (%s)", self._state_file)
                else:
                    slot = max(now, budget.last_slot + interval)
            budget.last_slot = slot
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(0.0, wait)

    def slow_down(self, factor: float = 0.5) -> float:
        """Multiply the rate by ``factor`` (persisted; decays back). Returns the new factor."""
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        with self._locked() as budget:
            now = self._clock()
            new = max(MIN_RATE_FACTOR, budget.factor_at(now, self.quiet_period) * factor)
            budget.rate_factor = new
            budget.slowed_at = now
        log.warning(
            "rate limited: slowing down to %.0f%% of %d requests per %g s", new * 100, self.limit, self.window
        )
        return new

    @property
    def rate_factor(self) -> float:
        """The fraction of the configured rate in force now (1.0 = full speed)."""
        with self._locked(write=False) as budget:
            return budget.factor_at(self._clock(), self.quiet_period)

    # -- state -------------------------------------------------------------------------
    def _stale_after(self, interval: float) -> float:
        # Legitimately the last slot is ahead of now by one interval per waiting caller —
        # a few dozen threads across processes. Far beyond that, it is another boot's clock.
        return max(2 * self.window, 1000 * interval)

    @contextmanager
    def _locked(self, *, write: bool = True) -> Iterator[_Budget]:
        """The budget, read (and written back) under the thread lock and the file lock."""
        with self._thread_lock, self._file_lock if self._file_lock is not None else nullcontext():
            budget = self._load()
            yield budget
            if write:
                self._save(budget)

    def _load(self) -> _Budget:
        if self._state_file is None:
            return _Budget(**self._memory.__dict__)
        try:
            text = self._state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _Budget()
        try:
            return _Budget.from_json(json.loads(text))
        except ValueError:
            # Writes are atomic (os.replace), so this is a hand-edited or foreign file:
            # starting afresh costs at most one early slot; never fail a run for it.
            return _Budget()

    def _save(self, budget: _Budget) -> None:
        if self._state_file is None:
            self._memory = _Budget(**budget.__dict__)
            return
        temporary = self._state_file.with_name(self._state_file.name + ".tmp")
        write_private_text(temporary, json.dumps(budget.to_json()))
        os.replace(temporary, self._state_file)
