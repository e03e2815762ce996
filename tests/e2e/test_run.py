"""`stsync run` end to end over a compressed schedule (seconds, not minutes): the real CLI in a
child process against the sandbox — leads pushed, customers synced, a referral qualified; a
job whose lock a cron run holds is skipped and recorded so; SIGTERM finishes the running steps
and exits 0; a kill -9 of the whole process tree mid-sync is resumed by the next start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest
from customer_sync_expectations import ENROLLED, custom_values, expected_outcomes
from kills import CAN_SIGNAL_A_THREAD, signal_another_thread

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.locks import RunLock, holder
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e


def wait_for(condition, *, timeout: float = 60.0, what: str = "condition", process: RunProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(f"stsync run exited {process.proc.returncode} while waiting for {what}:\n{process.output()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{process.output()}" if process else ""))


class RunProcess:
    """`python -m stsync run` with the test's (isolated, sandbox-pointed) environment."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stsync", "run", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )
        self.lines: list[str] = []  # stderr: the talk (or the JSON log lines)
        self.data: list[str] = []  # stdout: each step's summary, the run's own at the end
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.data), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def stdout(self) -> str:
        return "".join(self.data)

    def terminate(self, timeout: float = 90) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code


@pytest.fixture
def paths(isolated) -> ConnectionPaths:
    return ConnectionPaths.for_config(isolated / "config.toml")


@pytest.fixture
def started():
    processes: list[RunProcess] = []

    def start(*args: str) -> RunProcess:
        process = RunProcess(*args)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def compress(isolated, *, push="1s", qualify="2s", sync="2s", rule="job_created", **limits) -> None:
    """The [schedule] in seconds, written as a person would ("1s", "off")."""
    path = isolated / "config.toml"
    config = load_config(path)
    config.leads.qualification.rule = rule
    for key, value in limits.items():
        setattr(config.limits, key, value)
    save_config(config, path)
    text = path.read_text()
    for key, value in (("push", push), ("qualify", qualify), ("sync", sync), ("jitter", "0s")):
        text = re.sub(rf'^# {key} = "[^"]*"', f'{key} = "{value}"', text, count=1, flags=re.M)
    path.write_text(text)
    schedule = load_config(path).schedule
    assert (schedule.jitter, schedule.push) == (0.0, None if push == "off" else float(push.rstrip("s")))


def runs(paths: ConnectionPaths, job: str) -> list:
    with Ledger.open(paths.ledger) as ledger:
        return ledger.recent_runs(limit=500, job=job)


def test_run_pushes_syncs_and_qualifies_on_its_schedule_and_sigterm_exits_0(connected, isolated, paths, started):
    sb = connected
    compress(isolated)
    campaign = sb.credentials.campaign_id
    leads = {u["code"] for u in sb.rf_users(campaign_id=campaign, type="person_invited")}
    expected = expected_outcomes(sb)
    enrolled = {cid for cid, (outcome, _) in expected.items() if outcome in ENROLLED}
    run = started()

    wait_for(lambda: {b["externalId"] for b in sb.bookings()} >= leads, what="every lead booked", process=run)
    wait_for(lambda: all(custom_values(sb.customer(cid)).get("Referral Code") for cid in enrolled), what="customers synced", process=run)
    # A lead that joins while it runs is pushed by a later tick; its booking becomes a job,
    # and a later qualify qualifies the referral.
    [late] = sb.add_leads(1)
    booking = wait_for(lambda: next(iter(sb.bookings(external_id=late["code"])), None), what="the late lead's booking", process=run)
    sb.convert_booking_to_job(booking["id"])
    wait_for(lambda: sb.qualified(late["id"]), what="the referral qualified", process=run)

    assert run.terminate() == 0, run.output()
    out = run.output()
    assert "run stopped:" in run.stdout() and "Traceback" not in out
    assert max(Counter(b["externalId"] for b in sb.bookings()).values()) == 1
    for job in ("push", "qualify", "sync"):
        recorded = [r for r in runs(paths, job) if r.outcome != "skipped"]
        assert len(recorded) >= 2, (job, recorded)
        assert all(r.outcome in ("ok", "partial") and r.exit_code in (0, 5) for r in recorded), recorded
    [scheduler_run] = runs(paths, "run")
    assert (scheduler_run.outcome, scheduler_run.exit_code) == ("ok", 0)
    assert scheduler_run.counts["steps"] >= 6 and scheduler_run.counts["failed"] == 0
    assert holder(paths, "run") is None and holder(paths, "sync") is None


def test_a_job_whose_lock_cron_holds_is_skipped_and_recorded_then_runs_again(connected, isolated, paths, started):
    compress(isolated, push="off", qualify="off", sync="1s")
    cron = RunLock(paths, "sync", command="sync-customers --ongoing").acquire()  # a cron run holds it
    try:
        run = started()
        wait_for(lambda: len([r for r in runs(paths, "sync") if r.outcome == "skipped"]) >= 2, what="skipped ticks", process=run)
    finally:
        cron.release()
    wait_for(lambda: any(r.outcome == "ok" for r in runs(paths, "sync")), what="a sync after the lock was released", process=run)
    assert run.terminate() == 0, run.output()
    skipped = [r for r in runs(paths, "sync") if r.outcome == "skipped"]
    assert all(r.exit_code == 7 and f"pid {os.getpid()}" in (r.error or "") for r in skipped)
    assert "exited 7 (skipped: another run holds its lock)" in " ".join(run.output().split())


def test_a_second_run_of_the_same_connection_exits_7(connected, isolated, paths, started, cli_subprocess):
    compress(isolated, push="60s", qualify="off", sync="off")
    run = started()
    wait_for(lambda: holder(paths, "run"), what="the run lock", process=run)
    second = cli_subprocess("run", timeout=60)
    assert second.exit_code == 7 and "another `run` run" in second.stderr, str(second)
    assert run.terminate() == 0


def test_kill_9_of_the_whole_tree_mid_sync_is_resumed_by_the_next_start(make_sandbox, cli, isolated, paths, started, monkeypatch):
    sb = make_sandbox(customers=300, latency=0.01, rf_per_minute=60_000, st_per_second=1_000)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    compress(isolated, push="off", qualify="off", sync="1s", referral_factory_per_minute=60_000, servicetitan_per_second=1_000)
    expected = expected_outcomes(sb)
    enrolled = {cid: email for cid, (outcome, email) in expected.items() if outcome in ENROLLED}
    created = sum(1 for outcome, _ in expected.values() if outcome == "created")
    users_before = len(sb.rf_users(campaign_id=sb.credentials.campaign_id))

    run = started()
    # Mid-sync: some referrers made, the sync child holding its lock.
    child = wait_for(lambda: holder(paths, "sync"), what="the sync step", process=run)
    wait_for(lambda: len(sb.rf_users(campaign_id=sb.credentials.campaign_id)) > users_before + 5, what="referrers being made", process=run)
    for pid in (run.proc.pid, int(child["pid"])):
        os.kill(pid, signal.SIGKILL)
    run.proc.wait(timeout=10)
    wait_for(lambda: holder(paths, "sync") is None, what="the killed child's lock to go", timeout=15)
    assert len(sb.rf_users(campaign_id=sb.credentials.campaign_id)) < users_before + created, "killed after the end: nothing to resume"
    assert any(r.outcome == "interrupted" for r in runs(paths, "sync"))

    again = started()
    wait_for(lambda: any(r.outcome == "ok" for r in runs(paths, "sync")), what="the sync resumed to its end", process=again, timeout=120)
    assert again.terminate() == 0, again.output()
    users = sb.rf_users(campaign_id=sb.credentials.campaign_id)
    assert len(users) == users_before + created  # no duplicate, nothing missing
    by_email = Counter(u["email"].casefold() for u in users)
    for customer_id, email in enrolled.items():
        assert by_email[email.casefold()] == 1, (customer_id, email)
        assert custom_values(sb.customer(customer_id)).get("Referral Code")
    killed_run = [r for r in runs(paths, "run") if r.pid == run.proc.pid]
    assert [r.outcome for r in killed_run] == ["interrupted"]  # the dead scheduler's run reads so


def test_run_with_webhooks_receives_deliveries_and_answers_metrics_to_the_token_only(connected, isolated, paths, started, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    sb = connected
    token = "run-webhooks-token-0123456789abcdef"
    monkeypatch.setenv("STSYNC_WEBHOOK_TOKEN", token)
    compress(isolated, push="off", qualify="off", sync="60s")
    run = started("--webhooks", "--port", "0")
    found = wait_for(lambda: re.search(r"receiving webhooks on (http://[\d.]+:\d+)/hooks/", run.output()), what="the webhook URL", process=run)
    base = found.group(1)
    [user] = sb.add_leads(1)
    answer = httpx.post(f"{base}/hooks/{token}/lead-created", json={"email": user["email"], "code": user["code"],
                                                                     "first_name": user["first_name"]}, timeout=10)
    assert answer.status_code == 202, answer.text
    wait_for(lambda: sb.bookings(external_id=user["code"]), what="the delivery's booking", process=run)
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    samples = {(s.name, s.labels.get("job")): s.value for f in text_string_to_metric_families(metrics.text) for s in f.samples}
    assert samples[("stsync_job_running", "run")] == 1 and samples[("stsync_job_running", "serve")] == 1
    assert samples[("stsync_webhook_deliveries_waiting", None)] == 0
    assert run.terminate() == 0, run.output()
    [serve_run] = runs(paths, "serve")
    assert (serve_run.outcome, serve_run.exit_code, serve_run.counts["processed"]) == ("ok", 0, 1)


def test_run_with_json_logs_writes_only_json_lines_to_stderr(connected, isolated, paths, started, monkeypatch):
    import json

    sb = connected
    monkeypatch.setenv("STSYNC_LOG_FORMAT", "json")
    compress(isolated, push="1s", qualify="off", sync="off")
    run = started()
    wait_for(lambda: any(r.outcome == "ok" for r in runs(paths, "push")), what="a push step", process=run)
    assert run.terminate() == 0, run.output()
    entries = [json.loads(line) for line in run.lines if line.strip()]  # every line parses
    assert all({"ts", "level", "message", "connection"} <= set(e) for e in entries)
    # The step's own lines, and what run says about it, carry the step's job.
    assert any(e.get("job") == "push" and e["message"].startswith("[push] ") for e in entries), entries
    assert any(e.get("job") == "push" and "`push-lead --new` exited 0" in e["message"] for e in entries), entries
    assert any("run stopped" in e["message"] and e.get("command") == "run" for e in entries)
    text = json.dumps(entries)
    for secret in (sb.credentials.client_secret, sb.credentials.app_key, sb.credentials.rf_api_key):
        assert secret not in text



@pytest.mark.skipif(not CAN_SIGNAL_A_THREAD, reason="needs Linux's tgkill and /proc")
def test_a_sigterm_the_kernel_hands_to_another_thread_still_stops_run(connected, isolated, paths, started):
    compress(isolated, push="1s", qualify="off", sync="off")
    run = started()
    wait_for(lambda: any(r.outcome == "ok" for r in runs(paths, "push")), what="a push step", process=run)
    signal_another_thread(run.proc.pid, signal.SIGTERM)
    # Stopped within seconds (a push step may be finishing), not scheduling on.
    assert run.proc.wait(timeout=30) == 0, run.output()
    assert "run stopped:" in run.stdout()
