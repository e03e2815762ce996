"""`stsync run`'s schedule: each job on its interval, as a child process, like a cron line.

**One job, one thread, one child at a time.** ``push-lead --new``, ``qualify`` and
``sync-customers --ongoing`` each have a thread that starts the job's command as a child
process (``python -m stsync --config … -q <command>``), waits for it, and sleeps until the
job is due again: a job never overlaps itself, different jobs may run side by side (as
overlapping cron lines do: the ledger, the key locks and the shared rate limits are made for
it). A child is exactly a cron run — its own run lock (a job whose lock a cron run holds exits
7 and is recorded ``skipped`` for that tick), its exit code recorded on its run
(``services.job_outcome``), its alerts and pings — and a crash or a leak in one step cannot
take the schedule down.

**When.** A job is due one interval after its last run started (read from the ledger, so a
restart neither repeats a run that just happened nor waits a whole interval after a long
outage), plus a random delay of up to ``jitter`` (at most half the interval) so that jobs and
connections do not start in step. A run that took longer than the interval is followed by the
next one at once; missed ticks are not caught up one by one. Every ``full_interval`` (a week),
the sync runs with ``--full`` instead (and qualify too, when its command has ``--full``):
due one full interval after the last successful ``--full`` run, or after the job's first run.

**Stopping.** ``stop`` set: no new step starts; a running step finishes (its child is in a
session of its own, so a terminal's Ctrl-C or a service manager's SIGTERM to the parent does
not reach it). ``force`` set as well: running steps get SIGINT — they stop at the next
record, recording what they did (``interrupted``) — and are waited for.

The scheduler knows nothing of signals or rendering: the CLI sets the events and receives
each step's output lines and result through callbacks.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from stsync.logs import get_logger, log_context
from stsync.notify.conditions import parse_time
from stsync.storage.states import RunOutcome

if TYPE_CHECKING:
    from stsync.storage.ledger import Ledger

log = get_logger(__name__)

# A child that ignores SIGINT this long after a forced stop is killed (it is kill -9 safe).
FORCED_STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Job:
    """One scheduled job: its command, its interval, and the full variant's."""

    name: str  # push | qualify | sync (the runs table's job)
    argv: tuple[str, ...]  # ("push-lead", "--new")
    interval: float
    full_argv: tuple[str, ...] | None = None  # ("sync-customers", "--ongoing", "--full")
    full_interval: float | None = None

    @property
    def command(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class StepResult:
    job: str
    command: str
    exit_code: int
    started_at: str
    seconds: float
    full: bool


@dataclass
class ScheduleReport:
    steps: list[StepResult] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: StepResult) -> None:
        with self._lock:
            self.steps.append(result)

    def counts(self) -> dict[str, int]:
        with self._lock:
            steps = list(self.steps)
        counts = {"steps": len(steps), "ok": 0, "skipped": 0, "failed": 0, "interrupted": 0}
        for step in steps:
            if step.exit_code == 0:
                counts["ok"] += 1
            elif step.exit_code == 7:
                counts["skipped"] += 1
            elif step.exit_code == 130:
                counts["interrupted"] += 1
            else:
                counts["failed"] += 1
        for job in sorted({s.job for s in steps}):
            counts[f"{job}_runs"] = sum(1 for s in steps if s.job == job)
        return counts


def effective_jitter(jitter: float, interval: float) -> float:
    return max(0.0, min(jitter, interval / 2))


class ChildLauncher:
    """Starts ``python -m stsync --config <config> <global options> <command>`` in a session of
    its own, stdin closed, its output — stdout (the step's summary and failed records) and
    stderr (its warnings and errors) as one stream, in the order written — read line by line."""

    def __init__(self, config_path: Path, *, global_options: Sequence[str] = (), python: str | None = None) -> None:
        self.config_path = config_path
        self.global_options = tuple(global_options)
        self.python = python or sys.executable

    def argv(self, command: Sequence[str]) -> list[str]:
        return [self.python, "-m", "stsync", "--config", str(self.config_path), *self.global_options, *command]

    def start(self, command: Sequence[str]) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # the parent's terminal or service manager signals reach only the parent
            env=os.environ.copy(),
        )


class Scheduler:
    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        ledger: Ledger,
        launcher: ChildLauncher,
        jitter: float,
        on_output: Callable[[str, str], None] | None = None,
        on_step: Callable[[StepResult], None] | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.jobs = list(jobs)
        self.ledger = ledger
        self.launcher = launcher
        self.jitter = jitter
        self.on_output = on_output
        self.on_step = on_step
        self.rng = rng or random.Random()
        self.now = now
        self.report = ScheduleReport()
        self.stop = threading.Event()
        self.force = threading.Event()
        self._children: dict[str, subprocess.Popen] = {}
        self._children_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        for job in self.jobs:
            thread = threading.Thread(target=self._loop, args=(job,), name=f"stsync-run-{job.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def request_stop(self, *, force: bool = False) -> None:
        self.stop.set()
        if force and not self.force.is_set():
            self.force.set()
            self._interrupt_children()

    def join(self) -> None:
        """Wait for every job's thread — in slices, so that a second signal (which forces the
        stop) is handled by a main thread waiting here."""
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.5)

    @property
    def running(self) -> list[str]:
        with self._children_lock:
            return sorted(self._children)

    # -- one job --------------------------------------------------------------------------------
    def first_due(self, job: Job) -> float:
        """Seconds from now until the job's first run: one interval after its last start."""
        last = self.ledger.last_run(job.name)
        started = parse_time(last.started_at) if last is not None else None
        wait = 0.0
        if started is not None:
            wait = max(0.0, job.interval - (self.now() - started).total_seconds())
        return wait + self._delay(job)

    def _delay(self, job: Job) -> float:
        spread = effective_jitter(self.jitter, job.interval)
        return self.rng.uniform(0, spread) if spread else 0.0

    def wants_full(self, job: Job) -> bool:
        if job.full_argv is None or job.full_interval is None:
            return False
        last_full = self.ledger.last_succeeded_run(job.name, command_contains="--full")
        reference = last_full or self.ledger.first_run(job.name)
        if reference is None:
            return False  # the first run of a job reads everything anyway
        started = parse_time(reference.started_at)
        return started is not None and (self.now() - started).total_seconds() >= job.full_interval

    def _loop(self, job: Job) -> None:
        with log_context(job=job.name, command=job.command):  # this thread's log lines are the job's
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        try:
            wait = self.first_due(job)
        except Exception:
            log.exception("run: could not read %s's last run; starting it now", job.name)
            wait = self._delay(job)
        while not self.stop.wait(wait):
            started = time.monotonic()
            self._step(job)
            elapsed = time.monotonic() - started
            wait = max(0.0, job.interval - elapsed) + self._delay(job)

    def _step(self, job: Job) -> None:
        try:
            full = self.wants_full(job)
        except Exception:
            log.exception("run: could not tell whether %s's full run is due", job.name)
            full = False
        argv = job.full_argv if full and job.full_argv else job.argv
        command = " ".join(argv)
        started_at = self.now()
        began = time.monotonic()
        with log_context(command=command):
            log.info("run: %s starts `%s`", job.name, command)
        try:
            child = self.launcher.start(argv)
        except OSError as exc:
            log.error("run: could not start `%s`: %s", command, exc.strerror or exc)
            self._finish(StepResult(job.name, command, 1, _iso(started_at), 0.0, full))
            return
        with self._children_lock:
            self._children[job.name] = child
        reader = threading.Thread(
            target=self._forward, args=(job.name, child.stdout), name=f"stsync-run-{job.name}-out", daemon=True
        )
        reader.start()
        if self.force.is_set():
            self._interrupt(child)
        code = self._wait(child)
        reader.join(timeout=5)
        with self._children_lock:
            self._children.pop(job.name, None)
        self._finish(StepResult(job.name, command, code, _iso(started_at), time.monotonic() - began, full))

    def _wait(self, child: subprocess.Popen) -> int:
        forced_at: float | None = None
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.force.is_set():
                forced_at = forced_at or time.monotonic()
                if time.monotonic() - forced_at > FORCED_STOP_GRACE_SECONDS:
                    log.warning(
                        "run: pid %s ignored the interrupt for %.0f s; killed (the next run resumes it)",
                        child.pid,
                        FORCED_STOP_GRACE_SECONDS,
                    )
                    child.kill()

    def _finish(self, result: StepResult) -> None:
        outcome = {0: RunOutcome.OK, 5: RunOutcome.PARTIAL, 7: RunOutcome.SKIPPED, 130: RunOutcome.INTERRUPTED}.get(
            result.exit_code, RunOutcome.FAILED
        )
        log.info(
            "run: %s `%s` exited %s (%s) after %.1f s", result.job, result.command, result.exit_code, outcome, result.seconds
        )
        self.report.add(result)
        if self.on_step is not None:
            try:
                self.on_step(result)
            except Exception:
                log.exception("run: the step callback failed")

    def _forward(self, job: str, stream: IO[str] | None) -> None:
        if stream is None:
            return
        for line in stream:
            line = line.rstrip("\n")
            if line and self.on_output is not None:
                try:
                    self.on_output(job, line)
                except Exception:
                    log.exception("run: could not show a line of %s's output", job)
        stream.close()

    # -- stopping -------------------------------------------------------------------------------
    def _interrupt_children(self) -> None:
        with self._children_lock:
            children = list(self._children.values())
        for child in children:
            self._interrupt(child)

    @staticmethod
    def _interrupt(child: subprocess.Popen) -> None:
        try:
            os.killpg(child.pid, signal.SIGINT)  # the child leads its own process group
        except (ProcessLookupError, PermissionError):
            pass


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
