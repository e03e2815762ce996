"""RateLimiter: no window ever holds more than `limit` requests — across threads and processes."""

from __future__ import annotations

import json
import math
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

from stsync.errors import CoolingDown
from stsync.ratelimit import (
    IP_BLOCKED,
    MIN_RATE_FACTOR,
    RATE_LIMITED,
    RateLimiter,
    local_and_utc,
    max_burst,
    read_state,
)


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


def test_an_idle_limiter_lets_half_its_headroom_go_at_once_then_spaces():
    """Referral Factory's 600 a minute: a run's campaign and first search page go together."""
    fake = FakeTime(1000.0)
    limiter = RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep, burst=max_burst(600))
    assert limiter.burst == 6  # floor(600 × 2 % / 2)
    waits = [limiter.acquire() for _ in range(7)]
    assert waits == [0.0] * 7
    assert limiter.acquire() == pytest.approx(limiter.interval)  # the eighth is spaced
    assert limiter.acquire() == pytest.approx(limiter.interval)
    # Idle long enough, the burst is back.
    fake.now += 60
    assert [limiter.acquire() for _ in range(7)] == [0.0] * 7
    # Without one (ServiceTitan's limiter), requests are spaced from the first.
    plain = RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep)
    fake.now += 60
    assert plain.acquire() == 0.0
    assert plain.acquire() == pytest.approx(plain.interval)
    with pytest.raises(ValueError):
        RateLimiter(600, 60.0, burst=7)  # more than half the headroom


def test_the_connections_referral_factory_limiter_bursts_by_one(tmp_path: Path):
    from stsync.connection import referral_factory_limiter
    from stsync.storage.config import default_config
    from stsync.storage.paths import ConnectionPaths

    config = default_config()
    limiter = referral_factory_limiter(ConnectionPaths.for_config(tmp_path / "c.toml"), config)
    assert config.limits.referral_factory_per_minute == 600
    assert limiter.burst == 1  # up to 6 allowed; one lets the first search page follow the campaign read
    slow = default_config()
    slow.limits.referral_factory_per_minute = 30  # 2 % of 30 is not a request: no burst at all
    assert referral_factory_limiter(ConnectionPaths.for_config(tmp_path / "c.toml"), slow).burst == 0


def test_a_slowed_limiter_does_not_burst(tmp_path: Path):
    fake = FakeTime(1000.0)
    limiter = RateLimiter(
        600, 60.0, state_file=tmp_path / "rate.json", clock=fake.clock, sleep=fake.sleep, burst=max_burst(600)
    )
    limiter.slow_down(0.5)
    fake.now += 30  # idle, but still slowed (the quiet period is ten minutes)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(2 * limiter.interval)


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(min_value=50, max_value=1000),
    window=st.sampled_from([1.0, 60.0]),
    bursts=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2, allow_nan=False), st.integers(min_value=1, max_value=300)),
        min_size=1,
        max_size=12,
    ),
)
def test_with_its_burst_no_window_holds_more_than_limit_less_half_the_headroom(limit, window, bursts):
    """Idle spells (fractions of the window) and runs of back-to-back requests: the burst
    never makes any rolling window hold more than burst + floor(limit × 0.98) + 1 ≤ limit."""
    fake = FakeTime(1000.0)
    limiter = RateLimiter(limit, window, clock=fake.clock, sleep=fake.sleep, burst=max_burst(limit))
    sends = []
    for idle, count in bursts:
        fake.now += idle * window
        for _ in range(count):
            limiter.acquire()
            sends.append(fake.now)
    bound = limiter.burst + math.floor(limit * 0.98 + 1e-9) + 1
    assert bound <= limit
    assert max_in_any_window(sends, window) <= bound


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

    limiter = RateLimiter(1000, 1.0, state_file=Path(state), clock=clock, sleep=sleep, burst=10)
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
    burst = 10
    # One budget: any n consecutive slots of the two span at least (n - 1 - burst) intervals
    # (two budgets would let 120 requests through in the time of 60).
    for i in range(len(merged)):
        for j in range(i + burst + 1, len(merged)):
            assert merged[j] - merged[i] >= (j - i - burst) * interval * (1 - 1e-9)
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


# -- the state file: rewritten in place, read again when replaced ------------------------------


def test_the_state_is_rewritten_in_place_not_replaced(tmp_path: Path):
    # A rename per request made ext4 flush the file (about 2 ms, lock held) and cost ten
    # times the CPU: the file keeps its inode, request after request.
    fake = FakeTime(100.0)
    state = tmp_path / "rate.json"
    limiter = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    inode = state.stat().st_ino
    for _ in range(5):
        limiter.acquire()
    assert state.stat().st_ino == inode
    assert json.loads(state.read_text())["last_slot"] == pytest.approx(100.0 + 5 / 10 / 0.98)


def test_a_state_file_replaced_by_another_writer_is_read_again(tmp_path: Path):
    # An older stsync (or a person) replaces the file by renaming a new one over it: the
    # limiter must follow the path, not keep reading the old file through its descriptor.
    fake = FakeTime(100.0)
    state = tmp_path / "rate.json"
    limiter = RateLimiter(10, 1.0, state_file=state, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    replacement = tmp_path / "new.json"
    replacement.write_text(json.dumps({"last_slot": 105.0, "rate_factor": 1.0}))
    replacement.replace(state)
    assert limiter.acquire() == pytest.approx(5.0 + 1 / 10 / 0.98)  # queued behind the other writer's slot
    assert json.loads(state.read_text())["last_slot"] == pytest.approx(105.0 + 1 / 10 / 0.98)


def test_a_state_that_shrinks_leaves_no_tail_behind(tmp_path: Path):
    fake = FakeTime(WALL)
    state = tmp_path / "rate.json"
    limiter = rf_limiter(state, fake)
    limiter.record_rate_limited()
    fake.now += 1200
    limiter.record_rate_limited(sent_at=fake.now)  # two episodes and a cool-down: a longer file
    longest = state.stat().st_size
    fake.now += 2 * 86400  # the episodes age out and the next one is alone: shorter JSON
    limiter.record_rate_limited()
    assert state.stat().st_size >= longest  # padded in place, never truncated
    assert json.loads(state.read_text())["episodes"] == [fake.now]
    shown = read_state(state, window=60.0, clock=fake.clock, wall_clock=fake.clock)
    assert shown is not None and shown.episodes == (fake.now,)


def test_read_state_reads_again_when_it_meets_a_write_half_done(tmp_path: Path, monkeypatch):
    fake = FakeTime(WALL)
    state = tmp_path / "rate.json"
    rf_limiter(state, fake).record_rate_limited()
    whole = state.read_bytes()
    reads = iter([whole[: len(whole) // 2], whole])  # the first read meets a write in progress
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    shown = read_state(state, window=60.0, clock=fake.clock, wall_clock=fake.clock)
    assert shown is not None and shown.episodes == (WALL,)


# -- 429 episodes and the cool-down (Referral Factory's shared fate) -------------------------

WALL = 1_800_000_000.0


def rf_limiter(state: Path, fake: FakeTime) -> RateLimiter:
    return RateLimiter(600, 60.0, state_file=state, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.clock,
                       service="Referral Factory")


def test_the_first_episode_halves_the_rate_for_a_whole_hour_then_it_decays(tmp_path: Path):
    fake = FakeTime(WALL)
    limiter = rf_limiter(tmp_path / "rate.json", fake)
    episode = limiter.record_rate_limited()
    assert episode.new and episode.episodes == 1 and episode.cool_down is None
    fake.now += 3599
    assert limiter.rate_factor == 0.5  # the ordinary 10-minute decay waits for the hour
    fake.now += 1
    assert limiter.rate_factor == 0.5
    fake.now += 600
    assert limiter.rate_factor == 1.0


def test_a_429_to_a_request_already_in_flight_is_the_same_episode(tmp_path: Path):
    fake = FakeTime(WALL)
    limiter = rf_limiter(tmp_path / "rate.json", fake)
    limiter.record_rate_limited(sent_at=fake.now - 0.5)
    fake.now += 0.2
    # Another thread's request, sent before the episode was recorded: nobody could react yet.
    same = limiter.record_rate_limited(sent_at=fake.now - 0.4)
    assert not same.new and same.episodes == 1 and same.cool_down is None
    assert limiter.rate_factor == 0.5  # halved once, not twice
    assert limiter.cool_down() is None


def test_the_second_episode_starts_a_cool_down_every_limiter_on_the_file_obeys(tmp_path: Path):
    fake = FakeTime(WALL)
    state = tmp_path / "rate.json"
    first, other = rf_limiter(state, fake), rf_limiter(state, fake)
    first.record_rate_limited()
    fake.now += 1200
    episode = other.record_rate_limited(sent_at=fake.now - 1)
    assert episode.new and episode.episodes == 2
    assert episode.cool_down is not None and episode.cool_down.reason == RATE_LIMITED
    assert episode.cool_down.until == fake.now + 3600
    slot_before = json.loads(state.read_text())["last_slot"]
    for limiter in (first, other, rf_limiter(state, fake)):
        with pytest.raises(CoolingDown) as caught:
            limiter.acquire()
        assert caught.value.exit_code == 6
        assert local_and_utc(episode.cool_down.until) in caught.value.message
    assert json.loads(state.read_text())["last_slot"] == slot_before  # no slot was taken
    fake.now += 3600
    assert first.acquire() >= 0  # over


def test_an_episode_older_than_an_hour_no_longer_counts(tmp_path: Path):
    fake = FakeTime(WALL)
    limiter = rf_limiter(tmp_path / "rate.json", fake)
    limiter.record_rate_limited()
    fake.now += 3601
    episode = limiter.record_rate_limited()
    assert episode.new and episode.episodes == 1 and episode.cool_down is None


def test_an_ip_block_cools_down_an_hour_then_longer_when_it_comes_back(tmp_path: Path):
    fake = FakeTime(WALL)
    state = tmp_path / "rate.json"
    limiter = rf_limiter(state, fake)
    first = limiter.record_ip_blocked()
    assert (first.reason, first.until - first.since) == (IP_BLOCKED, 3600)
    assert rf_limiter(state, fake).record_ip_blocked() == first  # another process saw the same block
    fake.now += 3600 + 60
    second = limiter.record_ip_blocked()
    assert second.until - second.since == 7200
    fake.now += 7200 + 2 * 86400  # long after: a new block starts from an hour again
    assert limiter.record_ip_blocked().until - fake.now == 3600


def test_read_state_shows_episodes_and_cool_down_without_creating_anything(tmp_path: Path):
    fake = FakeTime(WALL)
    state = tmp_path / "locks" / "rate.json"
    assert read_state(state, window=60.0, clock=fake.clock, wall_clock=fake.clock) is None
    assert not state.parent.exists()
    limiter = rf_limiter(state, fake)
    limiter.record_rate_limited()
    shown = read_state(state, window=60.0, clock=fake.clock, wall_clock=fake.clock)
    assert shown is not None and shown.rate_factor == 0.5 and shown.episodes == (WALL,)
    assert shown.reduced_until == WALL + 3600 + 600
    assert shown.cool_down is None


def test_a_state_file_of_an_older_stsync_reads_as_no_episodes(tmp_path: Path):
    fake = FakeTime(WALL)
    state = tmp_path / "rate.json"
    state.write_text(json.dumps({"last_slot": None, "rate_factor": 0.5, "slowed_at": WALL - 10}))
    limiter = rf_limiter(state, fake)
    assert limiter.cool_down() is None
    assert limiter.record_rate_limited().episodes == 1


def test_local_and_utc_names_both(monkeypatch):
    import time as time_module

    monkeypatch.setenv("TZ", "America/New_York")
    time_module.tzset()
    try:
        assert local_and_utc(WALL) == "2027-01-15 03:00 EST (08:00 UTC)"
    finally:
        monkeypatch.delenv("TZ")
        time_module.tzset()
