"""tracking/index.py: when BookingIndex.ensure_fresh reads, and who waits for the read.

The reads themselves (what is asked of ServiceTitan, what lands in the ledger) are covered
against the sandbox (tests/reliability/test_push_index_race.py, bench/bench_qualify.py); here
the read is a stand-in that records when it ran, so the timing rules are exact.
"""

from __future__ import annotations

import threading

import pytest

from stsync.errors import TemporaryError
from stsync.tracking.index import EARLY_REFRESH, BookingIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingIndex(BookingIndex):
    """A BookingIndex whose read takes as long as the test says (``gate``) and may fail."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(conn=None, max_age=1.0, clock=clock)  # type: ignore[arg-type]
        self.reads_at: list[float] = []
        self.gate: threading.Event | None = None
        self.reading = threading.Event()
        self.fail_with: Exception | None = None

    def _refresh_locked(self) -> None:
        started = self._clock()
        self.reading.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.reads_at.append(started)
        self._read_started = started
        self.refreshes += 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_fresh_index_is_not_read_again(clock):
    index = RecordingIndex(clock)
    index.ensure_fresh()
    clock.now += 1.0 * EARLY_REFRESH - 0.01
    index.ensure_fresh()
    assert index.reads_at == [1000.0]


def test_a_stale_index_is_read_before_the_caller_goes_on(clock):
    index = RecordingIndex(clock)
    index.ensure_fresh()
    clock.now += 1.5
    index.ensure_fresh()
    assert index.reads_at == [1000.0, 1001.5]


def test_past_the_early_mark_one_worker_reads_ahead_and_the_others_do_not_wait(clock):
    index = RecordingIndex(clock)
    index.ensure_fresh()
    clock.now += 0.85  # still fresh (max_age 1 s), past EARLY_REFRESH
    index.gate = threading.Event()
    index.reading.clear()
    ahead = threading.Thread(target=index.ensure_fresh)
    ahead.start()
    assert index.reading.wait(10)
    # While that read is under way, other workers go on with the index as it is.
    others = [threading.Thread(target=index.ensure_fresh) for _ in range(3)]
    for other in others:
        other.start()
    for other in others:
        other.join(timeout=2)
        assert not other.is_alive(), "a worker waited for a read ahead"
    index.gate.set()
    ahead.join(timeout=10)
    assert index.reads_at == [1000.0, 1000.85]  # one read ahead, not four


def test_a_stale_index_makes_every_worker_wait_for_the_one_read(clock):
    index = RecordingIndex(clock)
    index.ensure_fresh()
    clock.now += 1.5
    index.gate = threading.Event()
    index.reading.clear()
    first = threading.Thread(target=index.ensure_fresh)
    first.start()
    assert index.reading.wait(10)
    second = threading.Thread(target=index.ensure_fresh)
    second.start()
    second.join(timeout=0.2)
    assert second.is_alive(), "a worker went on with a stale index"
    index.gate.set()
    first.join(timeout=10)
    second.join(timeout=10)
    assert index.reads_at == [1000.0, 1001.5]  # the second used the first's read


def test_a_read_ahead_that_fails_leaves_the_failure_to_the_read_that_must_happen(clock):
    index = RecordingIndex(clock)
    index.ensure_fresh()
    clock.now += 0.85
    index.fail_with = TemporaryError("ServiceTitan is unavailable")
    index.ensure_fresh()  # still fresh: this lead goes on
    clock.now += 0.5
    with pytest.raises(TemporaryError):
        index.ensure_fresh()  # stale now: the read must happen, and its failure is the caller's
