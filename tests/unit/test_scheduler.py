"""services/scheduler: a job never overlaps itself, is due one interval after its last start
(read from the ledger), runs its --full variant when that is due, and stopping lets a running
step finish — or interrupts it on a second signal. Steps here are tiny Python children."""

from __future__ import annotations

import json
import random
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stsync.services.scheduler import ChildLauncher, Job, Scheduler, effective_jitter
from stsync.storage.ledger import Ledger

STEP = textwrap.dedent(
    """
    import json, sys, time
    log, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    started = time.time()
    print("step says hello", file=sys.stderr, flush=True)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        code = 130
    with open(log, "a") as f:
        f.write(json.dumps({"argv": sys.argv[4:], "start": started, "end": time.time(), "code": code}) + "\\n")
    sys.exit(code)
    """
)


class ScriptLauncher(ChildLauncher):
    """Runs the step script instead of stsync: ``<job argv>`` decide nothing but the log line."""

    def __init__(self, tmp: Path, *, seconds: float, code: int = 0) -> None:
        super().__init__(tmp / "config.toml")
        self.script = tmp / "step.py"
        self.script.write_text(STEP)
        self.log = tmp / "steps.jsonl"
        self.seconds = seconds
        self.code = code

    def argv(self, command):
        return [sys.executable, str(self.script), str(self.log), str(self.seconds), str(self.code), *command]

    def steps(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_job_never_overlaps_itself_and_its_output_and_results_come_back(tmp_path, ledger):
    launcher = ScriptLauncher(tmp_path, seconds=0.5)
    lines: list[tuple[str, str]] = []
    results = []
    scheduler = Scheduler(
        [Job("push", ("push-lead", "--new"), 0.1)], ledger=ledger, launcher=launcher, jitter=0,
        on_output=lambda job, line: lines.append((job, line)), on_step=results.append,
    )
    scheduler.start()
    wait_until(lambda: len(launcher.steps()) >= 3)
    scheduler.request_stop()
    scheduler.join()
    steps = launcher.steps()
    for before, after in zip(steps, steps[1:], strict=False):
        assert after["start"] >= before["end"], "a step started while the one before it still ran"
    assert all(step["argv"] == ["push-lead", "--new"] for step in steps)
    assert ("push", "step says hello") in lines
    assert [r.exit_code for r in results] == [0] * len(steps) and results[0].command == "push-lead --new"
    assert scheduler.report.counts()["steps"] == len(steps) == scheduler.report.counts()["push_runs"]


def test_different_jobs_run_side_by_side(tmp_path, ledger):
    launcher = ScriptLauncher(tmp_path, seconds=1.0)
    jobs = [Job("push", ("push-lead", "--new"), 30), Job("sync", ("sync-customers", "--ongoing"), 30)]
    scheduler = Scheduler(jobs, ledger=ledger, launcher=launcher, jitter=0)
    scheduler.start()
    wait_until(lambda: len(launcher.steps()) == 2)
    scheduler.request_stop()
    scheduler.join()
    first, second = sorted(launcher.steps(), key=lambda s: s["start"])
    assert second["start"] < first["end"], "the two jobs waited for each other"


def test_a_job_is_due_one_interval_after_its_last_start(tmp_path, ledger):
    now = datetime.now(UTC)
    ledger.finish_run(ledger.start_run("sync", "sync-customers --ongoing"), "ok", {})
    scheduler = Scheduler([], ledger=ledger, launcher=ScriptLauncher(tmp_path, seconds=0), jitter=0, now=lambda: now + timedelta(seconds=100))
    assert 795 <= scheduler.first_due(Job("sync", ("sync-customers", "--ongoing"), 900)) <= 800
    assert scheduler.first_due(Job("push", ("push-lead", "--new"), 300)) == 0  # never ran: now
    late = Scheduler([], ledger=ledger, launcher=ScriptLauncher(tmp_path, seconds=0), jitter=0, now=lambda: now + timedelta(hours=5))
    assert late.first_due(Job("sync", ("sync-customers", "--ongoing"), 900)) == 0  # overdue: at once, not a whole interval later


def test_jitter_delays_a_start_by_at_most_half_the_interval(tmp_path, ledger):
    assert effective_jitter(30, 900) == 30 and effective_jitter(30, 10) == 5 and effective_jitter(0, 10) == 0
    scheduler = Scheduler([], ledger=ledger, launcher=ScriptLauncher(tmp_path, seconds=0), jitter=30, rng=random.Random(7))
    delays = [scheduler.first_due(Job("push", ("push-lead", "--new"), 10)) for _ in range(50)]
    assert all(0 <= d <= 5 for d in delays) and len(set(delays)) > 1


def test_the_full_run_is_due_a_full_interval_after_the_last_full_or_the_first_run(tmp_path, ledger):
    now = datetime.now(UTC)
    job = Job("sync", ("sync-customers", "--ongoing"), 900, ("sync-customers", "--ongoing", "--full"), 7 * 86400)

    def scheduler_at(moment):
        return Scheduler([], ledger=ledger, launcher=ScriptLauncher(tmp_path, seconds=0), jitter=0, now=lambda: moment)

    assert scheduler_at(now).wants_full(job) is False  # no run yet: the first ongoing run reads everything
    ledger.finish_run(ledger.start_run("sync", "sync-customers --ongoing"), "ok", {})
    assert scheduler_at(now + timedelta(days=6)).wants_full(job) is False
    assert scheduler_at(now + timedelta(days=7, minutes=1)).wants_full(job) is True
    full = ledger.start_run("sync", "sync-customers --ongoing --full")
    ledger.finish_run(full, "ok", {})
    with ledger.transaction() as conn:  # that full run happened on day 7
        stamp = (now + timedelta(days=7, minutes=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (stamp, full))
    assert scheduler_at(now + timedelta(days=7, minutes=2)).wants_full(job) is False
    assert scheduler_at(now + timedelta(days=14, minutes=2)).wants_full(job) is True
    assert scheduler_at(now + timedelta(days=30)).wants_full(Job("push", ("push-lead", "--new"), 300)) is False


def test_the_due_full_run_is_the_one_started(tmp_path, ledger):
    ledger.finish_run(ledger.start_run("sync", "sync-customers --ongoing"), "ok", {})
    launcher = ScriptLauncher(tmp_path, seconds=0)
    later = datetime.now(UTC) + timedelta(days=8)
    job = Job("sync", ("sync-customers", "--ongoing"), 0.2, ("sync-customers", "--ongoing", "--full"), 7 * 86400)
    scheduler = Scheduler([job], ledger=ledger, launcher=launcher, jitter=0, now=lambda: later)
    scheduler.start()
    wait_until(lambda: launcher.steps())
    scheduler.request_stop()
    scheduler.join()
    assert launcher.steps()[0]["argv"] == ["sync-customers", "--ongoing", "--full"]


def test_stop_lets_the_running_step_finish_and_a_forced_stop_interrupts_it(tmp_path, ledger):
    launcher = ScriptLauncher(tmp_path, seconds=1.5)
    scheduler = Scheduler([Job("sync", ("sync-customers", "--ongoing"), 60)], ledger=ledger, launcher=launcher, jitter=0)
    scheduler.start()
    wait_until(lambda: scheduler.running == ["sync"])
    scheduler.request_stop()
    scheduler.join()
    [step] = launcher.steps()
    assert step["code"] == 0 and step["end"] - step["start"] >= 1.4  # finished, not cut short

    (tmp_path / "forced").mkdir()
    launcher = ScriptLauncher(tmp_path / "forced", seconds=60)
    scheduler = Scheduler([Job("sync", ("sync-customers", "--ongoing"), 60)], ledger=ledger, launcher=launcher, jitter=0)
    scheduler.start()
    wait_until(lambda: scheduler.running == ["sync"])
    time.sleep(0.5)  # the child is inside its work
    started = time.monotonic()
    scheduler.request_stop()
    scheduler.request_stop(force=True)
    scheduler.join()
    assert time.monotonic() - started < 30
    [step] = launcher.steps()
    assert step["code"] == 130 and scheduler.report.counts()["interrupted"] == 1


def test_the_jobs_of_a_schedule_and_their_full_variants():
    from stsync.cli.run import scheduled_jobs
    from stsync.storage.config import default_config

    config = default_config()
    config.schedule.qualify = None  # "off"
    jobs = {job.name: job for job in scheduled_jobs(config, qualify_has_full=False)}
    assert set(jobs) == {"push", "sync"}
    assert (jobs["push"].argv, jobs["push"].interval, jobs["push"].full_argv) == (("push-lead", "--new"), 300.0, None)
    assert jobs["sync"].full_argv == ("sync-customers", "--ongoing", "--full") and jobs["sync"].full_interval == 7 * 86400
    config.schedule.qualify = 600.0
    qualify = {job.name: job for job in scheduled_jobs(config, qualify_has_full=True)}["qualify"]
    assert qualify.full_argv == ("qualify", "--full") and qualify.full_interval == 7 * 86400
    without = {job.name: job for job in scheduled_jobs(config, qualify_has_full=False)}["qualify"]
    assert without.full_argv is None  # this stsync's qualify has no --full: never asked for
