"""After a create whose answer was lost: when a lookup can be trusted, and looking again.

Neither API contract says that a new record is found by a lookup — a booking by
``?externalId=``, a Referral Factory user by ``POST /users/search`` — the instant its create
committed (api/servicetitan.md §11 "externalId lookup right after a create",
api/referral-factory.md §11 "read-after-write"). So when a create's answer is lost (a
timeout, a reset, a 5xx: ``AnswerLost``) and the lookup right after it finds nothing, the
record is **in doubt**: it may exist and not be listed yet. Creating it again then would
make the duplicate every guarantee forbids. The rule, for bookings (``services.push``) and
referrers (``customersync.customer``) alike:

1. **Never in the same breath.** The run that lost the answer never sends that create
   again.
2. **Look again, with backoff, for a bounded grace period** (``[limits]
   lookup_grace_seconds``, ``GracePeriod``): at 1, 2, 4, 8, 16 … s after the doubt began,
   and a last time when the grace period ends. These looks happen off the workers' path
   (``Rechecks``, at the end of the run's own work), so a lost answer costs the run at most
   the grace period once, not once per record. Found → the create's record.
3. **Still absent → the next run.** The ledger keeps the record ``unknown``; ``history``
   and ``diagnose --email`` say "unknown — will be checked again" (``UNKNOWN_LABEL``).
4. **"Old enough to be trusted".** The next run looks the record up first, and creates it
   only after a lookup made **at least the grace period after the doubt began**: after the
   answer was lost (its time is recorded), or — for a run killed between its POST and its
   record — after the intent was written. A run that leaves a record unknown has already
   waited out its grace period, so the next run, whenever cron starts it, decides.

The assumption is stated once: a create that committed is found by its lookup within the
grace period. docs/lookup-lag.md has the measured cost and why the default is 30 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")

# The first look again comes this long after the doubt began, each next one twice as long
# after it, the last one at the end of the grace period.
FIRST_LOOK_SECONDS = 1.0


@dataclass(frozen=True)
class GracePeriod:
    """How long a committed create may stay unlisted by its lookup (``[limits]
    lookup_grace_seconds``). ``clock`` is the wall clock (doubts are stamped in the ledger)
    and ``sleep`` waits on it; tests pass a fake pair."""

    seconds: float
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    def trusted_from(self, since: datetime) -> datetime:
        """When a lookup of a record in doubt since ``since`` may be believed when it finds nothing."""
        return since + timedelta(seconds=self.seconds)

    def trusts(self, since: datetime) -> bool:
        """Whether a lookup made now may be believed when it finds nothing."""
        return self.now() >= self.trusted_from(since)

    def look_offsets(self) -> list[float]:
        """Seconds after the doubt began at which to look again: 1, 2, 4, … then the end of
        the grace period (none when it is 0)."""
        if self.seconds <= 0:
            return []
        offsets, offset = [], FIRST_LOOK_SECONDS
        while offset < self.seconds:
            offsets.append(offset)
            offset *= 2
        offsets.append(float(self.seconds))
        return offsets


def parse_stamp(text: str | None) -> datetime | None:
    """A ledger timestamp (``2025-05-01T12:00:00.123Z``) as an aware datetime; None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def stamp(moment: datetime) -> str:
    """An aware datetime as the ledger writes timestamps."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Entry(Generic[T]):
    item: T
    since: datetime
    looks: int = 0  # looks already made


class Rechecks(Generic[T]):
    """Records in doubt, each looked at again on its own schedule (``GracePeriod.look_offsets``
    from its own ``since``) until it is settled or its last look has been made.

    ``run(check)`` calls ``check(due)`` with the records whose next look has come (several at
    once, so the caller can spread them over its workers) and expects one bool per record
    back, in order: still in doubt; it sleeps in between. It returns the records still in doubt after their last
    look (or all that remain when ``stop`` is set)."""

    def __init__(self, grace: GracePeriod, *, stop: threading.Event | None = None) -> None:
        self.grace = grace
        self._offsets = grace.look_offsets()
        self._stop = stop
        self._entries: list[_Entry[T]] = []

    def add(self, item: T, since: datetime) -> None:
        self._entries.append(_Entry(item, since))

    def __len__(self) -> int:
        return len(self._entries)

    def _due_at(self, entry: _Entry[T]) -> datetime:
        return entry.since + timedelta(seconds=self._offsets[entry.looks])

    def run(self, check: Callable[[Sequence[T]], Sequence[bool]]) -> list[T]:
        remaining = [entry for entry in self._entries if self._offsets]
        left: list[T] = [entry.item for entry in self._entries if not self._offsets]
        self._entries = []
        while remaining:
            if self._stop is not None and self._stop.is_set():
                return left + [entry.item for entry in remaining]
            now = self.grace.now()
            due = [entry for entry in remaining if self._due_at(entry) <= now]
            if not due:
                wait = min(self._due_at(entry) for entry in remaining) - now
                # Short naps, so a stop is seen soon.
                self.grace.sleep(min(max(wait.total_seconds(), 0.01), 1.0))
                continue
            # A look made after the grace period ended is the last one, whatever the schedule.
            for entry in due:
                entry.looks += 1
                while entry.looks < len(self._offsets) and self._due_at(entry) <= now:
                    entry.looks += 1
            still_in_doubt = list(check([entry.item for entry in due]))
            if len(still_in_doubt) != len(due):
                raise ValueError("check() must answer once per record given")
            for entry, in_doubt in zip(due, still_in_doubt, strict=True):
                if not in_doubt:
                    remaining.remove(entry)
                elif entry.looks >= len(self._offsets):
                    remaining.remove(entry)
                    left.append(entry.item)
        return left

