"""RateLimiter: no window ever holds more than `limit` requests — across threads and processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from itertools import pairwise
from pathlib import Path

import pytest
from fakes import FakeTime, ThreadClocks  # tests/support
from hypothesis import given, settings
from hypothesis import strategies as st

from stsync.ratelimit import MIN_RATE_FACTOR, RateLimiter


def max_in_any_window(times: list[float], window: float) -> int:
    """The most requests any window [t, t + window) holds; windows start at each send time,
    which is where the maximum of a sliding count is always reached."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_requests_are_spaced_and_n_requests_take_close_to_the_floor():
    fake = FakeTime(1000.0)
    limiter = RateLimiter(10, 1.0, clock=fake.clock, sleep=fake.sleep)
    sends = []
    for _ in range(100):
        limiter.acquire()
        sends.append(fake.now)
    gaps = [b - a for a, b in pairwise(sends)]
    assert min(gaps) >= 0.1  # never faster than limit/window
    floor = 99 * 1.0 / 10  # the least time 100 requests can take at 10/s
    assert floor <= sends[-1] - sends[0] <= 1.15 * floor
    assert max_in_any_window(sends, 1.0) <= 10


def test_an_idle_limiter_does_not_wait():
    fake = FakeTime(1000.0)
    limiter = RateLimiter(5, 1.0, clock=fake.clock, sleep=fake.sleep)
    assert limiter.acquire() == 0
    fake.now += 10
    assert limiter.acquire() == 0
    assert fake.sleeps == []


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=30),
    window=st.sampled_from([0.5, 1.0, 60.0]),
    gaps=st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), min_size=1, max_size=120),
)
def test_no_window_ever_holds_more_than_limit_whatever_the_arrivals(limit, window, gaps):
    fake = FakeTime(1000.0)
    limiter = RateLimiter(limit, window, clock=fake.clock, sleep=fake.sleep)
    sends = []
    for gap in gaps:
        fake.now += gap  # the caller's own work between requests
        limiter.acquire()
        sends.append(fake.now)
    assert max_in_any_window(sends, window) <= limit


def test_threads_share_one_budget(tmp_path: Path):
    clocks = ThreadClocks()
    limiter = RateLimiter(20, 60.0, state_file=tmp_path / "rate.json", clock=clocks.clock, sleep=clocks.sleep)
    sends: list[float] = []
    sends_lock = threading.Lock()

    def worker(work: float) -> None:
        for _ in range(30):
            limiter.acquire()
            with sends_lock:
                sends.append(clocks.clock())
            clocks.advance(work)

    threads = [threading.Thread(target=worker, args=(w,)) for w in (0.0, 0.3, 1.1, 2.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sends) == 120
    assert max_in_any_window(sends, 60.0) <= 20
    assert len(set(sends)) == 120  # no two requests ever got the same slot


def test_two_limiters_on_one_state_file_behave_like_one(tmp_path: Path):
    """Two processes of one connection = two instances sharing the file: one budget."""
    fake = FakeTime(1000.0)
    state = tmp_path / "locks" / "rate-servicetitan.json"
    first = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    second = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    sends = []
    for i in range(60):
        (first if i % 3 else second).acquire()
        sends.append(fake.now)
    assert max_in_any_window(sends, 1.0) <= 10
    assert min(b - a for a, b in pairwise(sends)) >= 0.1
    # Without the file each would allow 10/s on its own: prove the file is what is shared.
    alone_a = RateLimiter(10, 1.0, clock=fake.clock, sleep=fake.sleep)
    alone_b = RateLimiter(10, 1.0, clock=fake.clock, sleep=fake.sleep)
    before = fake.now
    alone_a.acquire()
    alone_b.acquire()
    assert fake.now == before


def test_two_limiters_on_one_file_from_many_threads(tmp_path: Path):
    clocks = ThreadClocks()
    state = tmp_path / "rate.json"
    limiters = [
        RateLimiter(15, 60.0, state_file=state, clock=clocks.clock, sleep=clocks.sleep) for _ in range(2)
    ]
    sends: list[float] = []
    sends_lock = threading.Lock()

    def worker(limiter: RateLimiter) -> None:
        for _ in range(20):
            limiter.acquire()
            with sends_lock:
                sends.append(clocks.clock())

    threads = [threading.Thread(target=worker, args=(limiters[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sends) == 80
    assert max_in_any_window(sends, 60.0) <= 15


_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from stsync.ratelimit import RateLimiter

    state, me, other, out = sys.argv[1:5]
    last_read = [0.0]
    slots = []

    def clock():
        last_read[0] = time.monotonic()
        return last_read[0]

    def sleep(seconds):
        time.sleep(seconds)

    limiter = RateLimiter(1000, 1.0, state_file=Path(state), clock=clock, sleep=sleep)
    Path(me).touch()
    deadline = time.monotonic() + 20
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    for _ in range(60):
        waited = limiter.acquire()
        # The limiter read the clock once, under the lock, and granted now + wait.
        slots.append(last_read[0] + waited)
    Path(out).write_text(json.dumps(slots))
    """
)


def test_real_processes_share_the_budget_through_the_state_file(tmp_path: Path):
    state = tmp_path / "rate.json"
    names = ["a", "b"]
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(state),
                str(tmp_path / f"ready-{me}"),
                str(tmp_path / f"ready-{other}"),
                str(tmp_path / f"slots-{me}.json"),
            ]
        )
        for me, other in (names, names[::-1])
    ]
    for child in children:
        assert child.wait(timeout=60) == 0
    slots_a = json.loads((tmp_path / "slots-a.json").read_text())
    slots_b = json.loads((tmp_path / "slots-b.json").read_text())
    merged = sorted(slots_a + slots_b)
    interval = 1.0 / 1000
    assert min(b - a for a, b in pairwise(merged)) >= interval * (1 - 1e-9)
    # The two processes really overlapped: their slots interleave.
    assert min(slots_b) < max(slots_a) and min(slots_a) < max(slots_b)


def test_slow_down_halves_the_rate_and_the_next_run_inherits_it(tmp_path: Path):
    fake = FakeTime(1000.0)
    state = tmp_path / "rate.json"
    limiter = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep, quiet_period=60.0)
    limiter.acquire()
    assert limiter.slow_down() == 0.5
    start = fake.now
    limiter.acquire()
    assert fake.now - start == pytest.approx(2 * limiter.interval)

    next_run = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep, quiet_period=60.0)
    assert next_run.rate_factor == 0.5
    before = fake.now
    next_run.acquire()
    assert fake.now - before == pytest.approx(2 * limiter.interval)


def test_slow_down_decays_back_after_quiet_periods(tmp_path: Path):
    fake = FakeTime(1000.0)
    limiter = RateLimiter(10, 1.0, state_file=tmp_path / "r.json", clock=fake.clock, sleep=fake.sleep, quiet_period=60.0)
    limiter.slow_down()
    limiter.slow_down()
    assert limiter.rate_factor == 0.25
    fake.now += 59
    assert limiter.rate_factor == 0.25
    fake.now += 1
    assert limiter.rate_factor == 0.5
    fake.now += 60
    assert limiter.rate_factor == 1.0
    fake.now += 10_000
    assert limiter.rate_factor == 1.0


def test_slow_down_has_a_floor():
    fake = FakeTime(1000.0)
    limiter = RateLimiter(10, 1.0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        limiter.slow_down()
    assert limiter.rate_factor == MIN_RATE_FACTOR


def test_default_quiet_period_is_ten_windows_at_least_a_minute():
    assert RateLimiter(600, 60.0).quiet_period == 600.0
    assert RateLimiter(60, 1.0).quiet_period == 60.0


def test_a_slot_from_before_a_reboot_is_ignored(tmp_path: Path):
    fake = FakeTime(start=50.0)  # monotonic clocks restart at boot
    state = tmp_path / "rate.json"
    state.write_text(json.dumps({"last_slot": 864_000.0, "rate_factor": 1.0, "slowed_at": None}))
    limiter = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    assert limiter.acquire() == 0
    assert json.loads(state.read_text())["last_slot"] == 50.0


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path):
    fake = FakeTime(1000.0)
    state = tmp_path / "rate.json"
    state.write_text("{not json")
    limiter = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    assert limiter.acquire() == 0
    assert json.loads(state.read_text())["last_slot"] == fake.now


@pytest.mark.parametrize("args", [(0, 1.0), (10, 0.0), (10, -1.0)])
def test_rejects_impossible_limits(args):
    with pytest.raises(ValueError):
        RateLimiter(*args)


def test_slow_down_rejects_a_factor_that_would_speed_up():
    with pytest.raises(ValueError):
        RateLimiter(10, 1.0).slow_down(2.0)
