"""Client-side request spacing, shared by every thread and every process of a connection.

SPEC §6.4: ServiceTitan allows 60 calls per second and Referral Factory 600 per minute,
both counted per key, and cron may run ``push-lead --new``, ``qualify`` and
``sync-customers`` at the same time. So the budget lives in a small state file under the
connection's state dir, read and written under an OS file lock.

Design: request spacing (GCRA), with an optional burst of at most half the headroom.
Requests are ``interval = window / limit / (1 - headroom)`` apart: each gets the slot
``max(now, last_slot + interval - burst × interval)`` and the caller sleeps until its slot;
``last_slot`` — the state's theoretical last slot — becomes ``max(last_slot + interval,
slot)``. With ``burst = 0`` slots are ``interval`` apart, so ``limit`` consecutive slots span
more than ``window``: no window of ``window`` seconds — rolling or fixed, however the server
counts — can hold more than ``limit`` requests. A token bucket would allow a burst of
``limit`` at once and then, combined with steady traffic, more than ``limit`` in a rolling
window; spacing never does. The headroom (2 %) absorbs network jitter between our send time
and the server's arrival time while N requests still take about N × window / limit × 1.02.

``burst`` (``max_burst``: at most ``floor(limit × headroom / 2)``) lets an idle limiter send
``1 + burst`` requests at once, then spaces them; no window then holds more than ``burst +
floor(limit × (1 - headroom)) + 1`` ≤ ``limit`` requests, and the other half of the headroom
is left for jitter. Referral Factory's limiter uses a burst of 1 (api/referral-factory.md §2:
"every rolling 60 s window at or just under the configured limit"; at 600 a minute up to 6
would be allowed): a run's first search page follows the campaign read at once instead of
a tenth of a second later, while 11 requests — over a second — of jitter margin stay free.
Not more: when Referral Factory blocks the IP, a burst is that many requests sent before
the first refusal is known. ServiceTitan's limiter has none: its one-second window leaves a
few milliseconds of margin per request, all of it needed for jitter. A limiter slowed down
(below) does not burst.

After a 429, ``slow_down(factor)`` multiplies the rate by ``factor`` (0.5 halves it). The
factor is persisted, so the next run — or an overlapping one — starts slower too. It decays
back: every ``quiet_period`` seconds without another ``slow_down`` the rate doubles, until
it is back to normal. The default quiet period is ``max(10 × window, 60 s)``: ten minutes
for Referral Factory, whose IP block is what we are avoiding, one minute for ServiceTitan.

Times in the state file come from ``clock`` (``time.monotonic`` by default), which is
system-wide on Linux, macOS and Windows, so processes of one machine agree on it. A slot
implausibly far in the future means the file was written before a reboot: it is ignored.

**Shared fate: 429 episodes and the cool-down.** Referral Factory blocks the caller's IP
after "more than three" abusive minutes, counted per IP whichever process caused them
(api/referral-factory.md §2, §11 "IP block"). So its 429s are counted here, in the same
file, by every process of the connection (``record_rate_limited``):

- An *episode* is a 429 to a request sent after the last episode began. A 429 to a
  request already in flight then (another thread's, another process's) is the same
  episode: nobody could have slowed down for it yet.
- The first episode of the hour halves the rate and holds it there for an hour (the
  ordinary decay starts after that).
- The second episode within the hour starts a **cool-down** of an hour: ``acquire`` of
  every limiter on the file raises ``CoolingDown`` (exit 6, saying until when, in local
  time and UTC) without sending anything, until it ends.
- An IP block seen (``record_ip_blocked``) starts a cool-down of an hour, doubled for
  each block seen again within a day of the previous cool-down's end, up to 7 days (one
  version of Referral Factory's page says a block lasts 7 days; another, "temporarily").

Cool-down and episode times are wall-clock times (``wall_clock``, ``time.time``): they
must survive a reboot and be shown to a person. ``read_state`` reads them without a limiter
(for ``diagnose``).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stsync.errors import CoolingDown
from stsync.logs import get_logger
from stsync.storage.flock import FileMutex
from stsync.storage.paths import PRIVATE_FILE, make_private_dir

log = get_logger(__name__)

DEFAULT_HEADROOM = 0.02
# Below this the limiter would crawl; a 16× slower rate is already a clear signal.
MIN_RATE_FACTOR = 1 / 16

# Why a service is cooling down (``CoolDown.reason``, ``CoolingDown.reason``).
RATE_LIMITED = "rate_limited"
IP_BLOCKED = "ip_blocked"
HOUR = 3600.0
DAY = 24 * HOUR
EPISODE_MEMORY = HOUR  # episodes older than this no longer count
SLOW_DOWN_HOLD = HOUR  # the first episode's halved rate holds this long
EPISODES_BEFORE_COOL_DOWN = 2
RATE_LIMIT_COOL_DOWN = HOUR
BLOCK_COOL_DOWN = HOUR  # the first block seen; doubled for a block seen again soon after
BLOCK_COOL_DOWN_MAX = 7 * DAY
BLOCK_STREAK_MEMORY = DAY  # a block within this long after the last cool-down ended is "again"
# read_state without the lock: a read that meets a half-done write tries again, this many times in all.
READ_ATTEMPTS = 3


@dataclass(frozen=True)
class CoolDown:
    """Every process of the connection stops calling the service from ``since`` to ``until``
    (wall-clock epoch seconds) because of ``reason``."""

    reason: str
    since: float
    until: float

    def in_force(self, now: float) -> bool:
        return self.since - 60 <= now < self.until  # tolerate a minute of clock skew backwards


@dataclass(frozen=True)
class RateLimitEpisode:
    """What one 429 meant: ``new`` — it began an episode (else it belongs to the one in
    progress); ``episodes`` — how many in the last hour, this one included; ``cool_down``
    — the cool-down it started, if any."""

    new: bool
    episodes: int
    cool_down: CoolDown | None


@dataclass(frozen=True)
class ThrottleState:
    """The shared state as a person is shown it (``diagnose``): the rate in force, the 429
    episodes of the last hour (wall-clock times), until when the rate stays reduced, and the
    cool-down in force or last ended."""

    rate_factor: float
    episodes: tuple[float, ...]
    reduced_until: float | None
    cool_down: CoolDown | None
    blocks: int


def local_and_utc(epoch: float) -> str:
    """``2026-03-14 15:43 CET (14:43 UTC)``: a moment for a person, rounded up to the minute
    (a "safe after" must never read earlier than it is)."""
    rounded = math.ceil(epoch / 60) * 60
    local = datetime.fromtimestamp(rounded).astimezone()
    utc = datetime.fromtimestamp(rounded, UTC)
    if local.utcoffset() == timedelta(0):
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    zone = local.tzname() or local.strftime("%z")
    utc_text = f"{utc:%H:%M}" if utc.date() == local.date() else f"{utc:%Y-%m-%d %H:%M}"
    return f"{local:%Y-%m-%d %H:%M} {zone} ({utc_text} UTC)"


def cooling_down_error(service: str, cool_down: CoolDown) -> CoolingDown:
    """The error every process of the connection raises while ``cool_down`` is in force."""
    when = local_and_utc(cool_down.until)
    if cool_down.reason == IP_BLOCKED:
        why = (
            f"{service} blocked this machine's IP address at {local_and_utc(cool_down.since)} "
            f"(HTTP 403 saying \"blocked\")"
        )
        hint = (
            f"run stsync again after {when}; the block is counted per IP address, so make sure no other tool on "
            f"this machine or account abuses {service}'s rate limit (`stsync diagnose` shows this state)"
        )
    else:
        why = (
            f"{service} answered HTTP 429 (too many requests) in two episodes within an hour, counted across "
            "every stsync process of this connection"
        )
        hint = (
            f"run stsync again after {when}; if another tool uses the same {service} account, lower this "
            "connection's rate in [limits]"
        )
    return CoolingDown(
        f"{why}: so that it does not block this machine's IP address, no stsync process of this connection "
        f"calls {service} until {when}",
        hint=hint,
        service=service,
        reason=cool_down.reason,
        safe_after=datetime.fromtimestamp(cool_down.until, UTC).isoformat(timespec="seconds"),
    )


@dataclass
class _Budget:
    """What the state file holds."""

    last_slot: float | None = None
    rate_factor: float = 1.0
    slowed_at: float | None = None
    # The slowed rate does not start decaying before this (``clock`` time, like slowed_at).
    held_until: float | None = None
    # Wall-clock times: the 429 episodes of the last hour, and the cool-down.
    episodes: list[float] = field(default_factory=list)
    cool_down_reason: str | None = None
    cool_down_since: float | None = None
    cool_down_until: float | None = None
    blocks: int = 0  # IP blocks seen in a row (each within a day of the previous cool-down's end)

    def factor_at(self, now: float, quiet_period: float) -> float:
        if self.rate_factor >= 1.0 or self.slowed_at is None:
            return 1.0
        if now < self.slowed_at:
            # The clock went backwards: the file predates a reboot, a long quiet period.
            return 1.0
        decay_from = self.slowed_at
        if self.held_until is not None and self.held_until - self.slowed_at <= 10 * DAY:
            if now < self.held_until:
                return self.rate_factor
            decay_from = self.held_until
        doublings = math.floor((now - decay_from) / quiet_period)
        if doublings >= 64:
            return 1.0
        return min(1.0, self.rate_factor * 2**doublings)

    @property
    def cool_down(self) -> CoolDown | None:
        if self.cool_down_reason is None or self.cool_down_since is None or self.cool_down_until is None:
            return None
        return CoolDown(self.cool_down_reason, self.cool_down_since, self.cool_down_until)

    def to_json(self) -> dict:
        return {
            "last_slot": self.last_slot,
            "rate_factor": self.rate_factor,
            "slowed_at": self.slowed_at,
            "held_until": self.held_until,
            "episodes": list(self.episodes),
            "cool_down_reason": self.cool_down_reason,
            "cool_down_since": self.cool_down_since,
            "cool_down_until": self.cool_down_until,
            "blocks": self.blocks,
        }

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
        raw_episodes = data.get("episodes")
        episodes = [
            float(t)
            for t in (raw_episodes if isinstance(raw_episodes, list) else [])
            if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
        ]
        reason = data.get("cool_down_reason")
        blocks = data.get("blocks")
        return cls(
            last_slot=number("last_slot"),
            rate_factor=min(1.0, max(MIN_RATE_FACTOR, factor)) if factor is not None else 1.0,
            slowed_at=number("slowed_at"),
            held_until=number("held_until"),
            episodes=sorted(episodes),
            cool_down_reason=reason if reason in (RATE_LIMITED, IP_BLOCKED) else None,
            cool_down_since=number("cool_down_since"),
            cool_down_until=number("cool_down_until"),
            blocks=blocks if isinstance(blocks, int) and not isinstance(blocks, bool) and blocks > 0 else 0,
        )


def max_burst(limit: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """The largest ``burst`` a limiter of ``limit`` may have: half its headroom, in requests."""
    return math.floor(limit * headroom / 2)


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
        wall_clock: Callable[[], float] = time.time,
        service: str = "the remote service",
        burst: int = 0,
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
        if not 0 <= burst <= max_burst(limit, headroom):
            raise ValueError(f"burst must be in [0, {max_burst(limit, headroom)}] (half the headroom), got {burst}")
        self.burst = int(burst)
        self.quiet_period = float(quiet_period) if quiet_period is not None else max(10 * self.window, 60.0)
        self._clock = clock
        self._sleep = sleep
        self.wall_clock = wall_clock
        self.service = service
        self._thread_lock = threading.Lock()
        self._memory = _Budget()
        self._state_file = Path(state_file) if state_file is not None else None
        self._shared = _SharedFile(self._state_file) if self._state_file is not None else None

    # -- public ------------------------------------------------------------------------
    def acquire(self) -> float:
        """Block until this request's slot; returns the seconds waited.

        Raises ``CoolingDown`` (and takes no slot) while a cool-down is in force."""
        with self._locked() as budget:
            cool_down = budget.cool_down
            if cool_down is not None and cool_down.in_force(self.wall_clock()):
                raise cooling_down_error(self.service, cool_down)
            now = self._clock()
            factor = budget.factor_at(now, self.quiet_period)
            interval = self.interval / factor
            slot = last = now
            if budget.last_slot is not None:
                if budget.last_slot - now > self._stale_after(interval):
                    log.info("ignoring a rate-limit slot from before a clock reset (%s)", self._state_file)
                else:
                    burst = self.burst if factor >= 1.0 else 0  # slowed down after a 429: no burst
                    slot = max(now, budget.last_slot + interval - burst * interval)
                    # The theoretical slot moves on by one interval even when this request
                    # goes early (a burst): later ones are spaced from it.
                    last = max(budget.last_slot + interval, slot)
            budget.last_slot = last
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(0.0, wait)

    def slow_down(self, factor: float = 0.5, *, hold: float = 0.0) -> float:
        """Multiply the rate by ``factor`` (persisted; decays back once ``hold`` seconds have
        passed). Returns the new factor."""
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        with self._locked() as budget:
            new = self._slow_down(budget, factor, hold)
        log.warning(
            "rate limited: slowing down to %.0f%% of %d requests per %g s", new * 100, self.limit, self.window
        )
        return new

    def _slow_down(self, budget: _Budget, factor: float, hold: float) -> float:
        now = self._clock()
        new = max(MIN_RATE_FACTOR, budget.factor_at(now, self.quiet_period) * factor)
        budget.rate_factor = new
        budget.slowed_at = now
        budget.held_until = now + hold if hold > 0 else None
        return new

    def record_rate_limited(self, *, sent_at: float | None = None) -> RateLimitEpisode:
        """Count a 429 to a request sent at ``sent_at`` (wall clock; default now) — see the
        module docstring. A new episode halves the rate for an hour; the second of the hour
        starts the cool-down (returned; ``acquire`` refuses from now on)."""
        with self._locked() as budget:
            now = self.wall_clock()
            sent = now if sent_at is None else min(sent_at, now)
            budget.episodes = [t for t in budget.episodes if now - EPISODE_MEMORY < t <= now + 60]
            new = not budget.episodes or sent >= budget.episodes[-1]
            started: CoolDown | None = None
            if new:
                budget.episodes.append(now)
                if len(budget.episodes) >= EPISODES_BEFORE_COOL_DOWN:
                    started = CoolDown(RATE_LIMITED, now, now + RATE_LIMIT_COOL_DOWN)
                    self._start_cool_down(budget, started)
                else:
                    self._slow_down(budget, 0.5, SLOW_DOWN_HOLD)
            count = len(budget.episodes)
        if new:
            log.warning(
                "%s rate-limited this connection (HTTP 429): episode %d of the last hour%s",
                self.service,
                count,
                f"; every process stops calling it until {local_and_utc(started.until)}"
                if started
                else f"; half speed for the next hour ({self.limit} per {self.window:g} s halved)",
            )
        return RateLimitEpisode(new=new, episodes=count, cool_down=started)

    def record_ip_blocked(self) -> CoolDown:
        """The service blocked this machine's IP: every process stops calling it for an hour,
        longer if it happened again soon after the last cool-down (see the module docstring).
        Returns the cool-down in force (an earlier, longer one is kept)."""
        with self._locked() as budget:
            now = self.wall_clock()
            current = budget.cool_down
            if current is not None and current.reason == IP_BLOCKED and current.in_force(now):
                return current  # another process recorded this block already
            again = (
                budget.cool_down_reason == IP_BLOCKED
                and budget.cool_down_until is not None
                and now - budget.cool_down_until < BLOCK_STREAK_MEMORY
            )
            blocks = budget.blocks + 1 if again else 1
            budget.blocks = blocks
            length = min(BLOCK_COOL_DOWN_MAX, BLOCK_COOL_DOWN * 2 ** min(blocks - 1, 16))
            cool_down = CoolDown(IP_BLOCKED, now, now + length)
            if current is not None and current.in_force(now) and current.until > cool_down.until:
                cool_down = CoolDown(IP_BLOCKED, now, current.until)
            self._start_cool_down(budget, cool_down)
        log.warning(
            "%s blocked this machine's IP address: every process of this connection stops calling it until %s",
            self.service,
            local_and_utc(cool_down.until),
        )
        return cool_down

    @staticmethod
    def _start_cool_down(budget: _Budget, cool_down: CoolDown) -> None:
        budget.cool_down_reason = cool_down.reason
        budget.cool_down_since = cool_down.since
        budget.cool_down_until = cool_down.until

    def cool_down(self) -> CoolDown | None:
        """The cool-down in force now, if any."""
        with self._locked(write=False) as budget:
            cool_down = budget.cool_down
        return cool_down if cool_down is not None and cool_down.in_force(self.wall_clock()) else None

    def state(self) -> ThrottleState:
        """The shared state now (see ``read_state`` for reading it without a limiter)."""
        with self._locked(write=False) as budget:
            return _state_of(budget, self._clock(), self.wall_clock(), self.quiet_period)

    @property
    def rate_factor(self) -> float:
        """The fraction of the configured rate in force now (1.0 = full speed)."""
        with self._locked(write=False) as budget:
            return budget.factor_at(self._clock(), self.quiet_period)

    def close(self) -> None:
        """Close the state file's and its lock's descriptors (kept open between requests).
        Used again, the limiter opens them again."""
        with self._thread_lock:
            if self._shared is not None:
                self._shared.close()

    # -- state -------------------------------------------------------------------------
    def _stale_after(self, interval: float) -> float:
        # Legitimately the last slot is ahead of now by one interval per waiting caller —
        # a few dozen threads across processes. Far beyond that, it is another boot's clock.
        return max(2 * self.window, 1000 * interval)

    @contextmanager
    def _locked(self, *, write: bool = True) -> Iterator[_Budget]:
        """The budget, read (and written back) under the thread lock and the file lock."""
        with self._thread_lock:
            if self._shared is None:
                budget = _Budget(**self._memory.__dict__)
                yield budget
                if write:
                    self._memory = _Budget(**budget.__dict__)
                return
            with self._shared.lock:
                budget = _parse(self._shared.read())
                yield budget
                if write:
                    self._shared.write(json.dumps(budget.to_json()).encode("utf-8"))


class _SharedFile:
    """The state file and its lock file, each through a descriptor kept for the limiter's life.

    Every request reads and rewrites the state, so this is the hot path of a run (hundreds of
    times a second): it costs a few system calls. The state is written in place — one
    ``write`` of a few hundred bytes from offset 0, padded with spaces to the length it had —
    never as a new file renamed over the old one: that rename made ext4 flush the file (about
    2 ms each, with the lock held) and cost ten times the CPU. A process killed mid-way
    cannot tear one ``write``; a reader without the lock (``read_state``) may meet one half
    done, and reads again. The file is opened again when it was replaced (by hand, or by an
    older stsync, which renamed) or when this is a forked child.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        make_private_dir(path.parent)
        self.lock = FileMutex(path.with_name(path.name + ".lock"), keep_open=True)
        self._fd: int | None = None
        self._opened_by = 0
        self._identity: tuple[int, int] | None = None
        self._length = 0

    def read(self) -> bytes:
        fd = self._descriptor()
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = b"".join(chunks)
        self._length = len(data)
        return data

    def write(self, data: bytes) -> None:
        fd = self._descriptor()
        if len(data) < self._length:
            data += b" " * (self._length - len(data))  # JSON ignores it; no shorter file left with a tail
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._length = len(data)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._opened_by == os.getpid():
            os.close(fd)
        self.lock.close()

    def _descriptor(self) -> int:
        fd = self._fd
        if fd is not None and self._opened_by == os.getpid():
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == self._identity:
                return fd
            os.close(fd)  # replaced or removed: the path is what every process shares
        self._fd = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), PRIVATE_FILE)
        if hasattr(os, "fchmod"):  # a leftover with a laxer mode is made 0600, as write_private_text does
            os.fchmod(fd, PRIVATE_FILE)
        opened = os.fstat(fd)
        self._fd, self._opened_by, self._identity = fd, os.getpid(), (opened.st_dev, opened.st_ino)
        return fd


def _parse(data: bytes) -> _Budget:
    if not data.strip():
        return _Budget()
    try:
        return _Budget.from_json(json.loads(data))
    except ValueError:
        # A hand-edited or foreign file: starting afresh costs at most one early slot; never
        # fail a run for it.
        return _Budget()


def _state_of(budget: _Budget, now: float, wall_now: float, quiet_period: float) -> ThrottleState:
    factor = budget.factor_at(now, quiet_period)
    reduced_until = None
    if factor < 1.0 and budget.slowed_at is not None:
        # When the rate is whole again, in wall-clock time: the hold, then a doubling per quiet period.
        start = max(budget.slowed_at, budget.held_until or budget.slowed_at)
        doublings = math.ceil(math.log2(1.0 / budget.rate_factor))
        reduced_until = wall_now + (start + doublings * quiet_period - now)
    return ThrottleState(
        rate_factor=factor,
        episodes=tuple(t for t in budget.episodes if wall_now - EPISODE_MEMORY < t <= wall_now + 60),
        reduced_until=reduced_until,
        cool_down=budget.cool_down,
        blocks=budget.blocks,
    )


def read_state(
    state_file: Path,
    *,
    window: float,
    quiet_period: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> ThrottleState | None:
    """The shared state in ``state_file`` without creating anything (``diagnose``); None when
    there is no such file. Read without the lock: a read that meets a write half done (the
    state is rewritten in place) reads again."""
    for attempt in range(READ_ATTEMPTS):
        try:
            data = Path(state_file).read_bytes()
        except OSError:
            return None
        if not data.strip():
            return None  # created by a limiter that has not written yet
        try:
            budget = _Budget.from_json(json.loads(data))
            break
        except ValueError:
            if attempt == READ_ATTEMPTS - 1:
                return None
            time.sleep(0.005)
    quiet = float(quiet_period) if quiet_period is not None else max(10 * window, 60.0)
    return _state_of(budget, clock(), wall_clock(), quiet)
