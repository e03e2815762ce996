"""`stsync status`: healthy or not (exit 0 / 1) from the local state alone, the --json object,
and the Prometheus figures (the node-exporter textfile, parsed back with prometheus_client)."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stsync.cli.app import run
from stsync.ratelimit import RateLimiter
from stsync.services.metrics import prometheus_text
from stsync.services.status import connection_status
from stsync.storage.config import default_config, load_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

REFUSED = {"type": "ServiceTitanApiError", "message": "bad", "title": "Name is required", "status": 400, "service": "servicetitan", "exit_code": 1}


@pytest.fixture
def config_path(isolated) -> Path:
    config = default_config(tenant_id=1234567, client_id="cid.x", booking_provider=42, campaign_id=7)
    config.leads.qualification.rule = "job_created"
    path = isolated / "config.toml"
    save_config(config, path)
    return path


@pytest.fixture
def paths(config_path) -> ConnectionPaths:
    return ConnectionPaths.for_config(config_path)


def ran(ledger: Ledger, job: str, command: str, outcome: str = "ok", exit_code: int = 0, error: str | None = None) -> int:
    run_id = ledger.start_run(job, command)
    ledger.finish_run(run_id, outcome, {}, error=error)
    ledger.set_exit_code([run_id], exit_code)
    return run_id


def all_jobs_ran(paths: ConnectionPaths) -> None:
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "push", "push-lead --new")
        ran(ledger, "qualify", "qualify")
        ran(ledger, "sync", "sync-customers --ongoing")


def status_json(capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = run(["--json", "status"])
    return code, json.loads(capsys.readouterr().out)


def test_every_job_recently_ok_is_healthy_exit_0(paths, capsys):
    all_jobs_ran(paths)
    code, out = status_json(capsys)
    assert code == 0 and out["ok"] is True and out["healthy"] is True and out["attention"] == []
    assert {name: job["state"] for name, job in out["jobs"].items()} == {
        "push": "ok", "qualify": "ok", "sync": "ok", "serve": "never", "run": "never"}
    push = out["jobs"]["push"]
    assert push["last_run"]["command"] == "push-lead --new" and push["last_run"]["exit_code"] == 0
    assert push["interval_seconds"] == 300 and push["last_run"]["age_seconds"] < 60 and push["overdue"] is False
    assert out["schedule"] == {"push": 300.0, "qualify": 600.0, "sync": 900.0}
    assert out["open_failures"]["pushes"] == {"count": 0, "newest": []}
    assert out["counts"]["open_failures_pushes"] == 0 and out["failures"] == []
    assert out["webhooks"] == {"waiting": 0, "oldest": None, "oldest_age_seconds": None, "receiver_running": False}
    assert out["token"]["cached"] is False
    assert out["referral_factory"] == {"cooldown": None, "blocked": False, "episodes_last_hour": 0, "rate_factor": 1.0}


def test_a_job_that_never_ran_needs_attention_exit_1(paths, capsys):
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "push", "push-lead --new")
        ran(ledger, "qualify", "qualify")
    code, out = status_json(capsys)
    assert code == 1 and out["ok"] is False and out["jobs"]["sync"]["state"] == "never"
    assert any("`sync-customers --ongoing` has never run" in reason for reason in out["attention"])


def test_an_overdue_job_and_a_failing_one_need_attention(paths, capsys):
    all_jobs_ran(paths)
    now = datetime.now(UTC)
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "qualify", "qualify", "failed", 4, "ServiceTitan rejected the Client ID / Client Secret")
    report = connection_status(paths, load_config(paths.config), now=now + timedelta(minutes=16))
    assert report.job("push").state == "overdue" and report.job("push").overdue  # 16 min > 3 × 5 min
    assert report.job("sync").state == "ok"  # 16 min < 3 × 15 min
    assert report.job("qualify").state == "failing"
    assert report.exit_code == 1
    assert any("`push-lead --new` has not succeeded for 16 min" in reason for reason in report.attention)
    assert any("the last `qualify` exited 4" in reason for reason in report.attention)


def test_a_skipped_tick_is_not_the_last_run_and_off_or_idle_jobs_never_need_attention(paths, config_path, capsys):
    config = load_config(config_path)
    config.schedule.sync = None
    config.leads.qualification.rule = "none"
    save_config(config, config_path)
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "push", "push-lead --new")
        ledger.record_finished_run("push", "push-lead --new", outcome="skipped", exit_code=7, error="held")
    code, out = status_json(capsys)
    assert code == 0, out["attention"]
    assert out["jobs"]["push"]["last_run"]["outcome"] == "ok"
    assert (out["jobs"]["sync"]["state"], out["jobs"]["qualify"]["state"]) == ("off", "idle")


def test_open_failures_cool_down_block_and_waiting_deliveries_need_attention(paths, capsys):
    all_jobs_ran(paths)
    with Ledger.open(paths.ledger) as ledger:
        attempt = ledger.record_push_intent("ANN1", kind="lead", email="ann@example.com", name="Ann")
        ledger.record_push_result(attempt, outcome="failed", error=REFUSED)
        ledger.admit_delivery("lead_created:9", event="lead_created", external_id="ZED9", lead={"referral_code": "ZED9"}, payload={"code": "ZED9"})
    RateLimiter(600, 60.0, state_file=paths.rate_file("referral_factory")).record_ip_blocked()
    code, out = status_json(capsys)
    assert code == 1
    assert out["open_failures"]["pushes"]["count"] == 1 and out["counts"]["open_failures_pushes"] == 1
    assert out["open_failures"]["pushes"]["newest"][0] == {
        "external_id": "ANN1", "email": "ann@example.com", "at": out["open_failures"]["pushes"]["newest"][0]["at"], "error": "HTTP 400: Name is required"}
    # The newest failure of each kind is one of the envelope's failures too.
    assert {"key": "ANN1", "email": "ann@example.com", "message": "HTTP 400: Name is required"}.items() <= out["failures"][0].items()
    rf = out["referral_factory"]
    assert rf["cooldown"]["active"] is True and rf["cooldown"]["reason"] == "ip_blocked" and rf["blocked"] is True
    assert out["webhooks"]["waiting"] == 1 and out["webhooks"]["receiver_running"] is False
    reasons = " | ".join(out["attention"])
    assert "records failed and are not fixed: 1 push(es)" in reasons and "Referral Factory blocked this machine's IP" in reasons
    assert "1 webhook delivery(ies) wait with no `stsync serve`" in reasons


def test_a_broken_config_is_reported_and_the_ledger_still_read(paths, config_path, capsys):
    all_jobs_ran(paths)
    config_path.write_text(config_path.read_text() + "\n[schedule]\npush = \"5 minutes\"\n")
    code, out = status_json(capsys)
    assert code == 1 and "the config cannot be read" in out["attention"][0]
    assert out["jobs"]["push"]["last_run"]["command"] == "push-lead --new"


def test_the_cached_token_expiry_is_read_without_a_request(paths, capsys):
    all_jobs_ran(paths)
    expires = time.time() + 600
    paths.token_cache.write_text(json.dumps({"version": 1, "tokens": {
        "https://auth.servicetitan.io|1234567|cid.x": {"access_token": "tok-secret-value", "expires_at": expires}}}))
    code, out = status_json(capsys)
    assert out["token"]["cached"] and out["token"]["valid"] and 590 <= out["token"]["seconds_left"] <= 600
    assert "tok-secret-value" not in json.dumps(out)


def test_the_screen_for_a_person_says_what_needs_attention(paths, capsys):
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "push", "push-lead --new")
    capsys.readouterr()
    assert run(["status"]) == 1
    out = " ".join(capsys.readouterr().out.split())  # the status is the data: stdout
    assert "stsync status — connection 'default'" in out and "Needs attention" in out and "has never run" in out


def test_prometheus_textfile_parses_and_carries_the_same_figures(paths, isolated, capsys):
    all_jobs_ran(paths)
    with Ledger.open(paths.ledger) as ledger:
        attempt = ledger.record_push_intent("ANN1", kind="lead", email="ann@example.com", name="Ann")
        ledger.record_push_result(attempt, outcome="failed", error=REFUSED)
    target = isolated / "textfile" / "stsync.prom"
    target.parent.mkdir()
    capsys.readouterr()
    assert run(["--json", "status", "--prometheus", str(target)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["prometheus"] == str(target)
    families = {family.name: family for family in text_string_to_metric_families(target.read_text())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    connection = (("connection", "default"),)
    assert samples[("stsync_healthy", connection)] == 0
    assert samples[("stsync_open_failures", (("connection", "default"), ("kind", "pushes")))] == 1
    assert samples[("stsync_job_last_exit_code", (("connection", "default"), ("job", "push")))] == 0
    assert samples[("stsync_job_overdue", (("connection", "default"), ("job", "sync")))] == 0
    assert samples[("stsync_job_interval_seconds", (("connection", "default"), ("job", "qualify")))] == 600
    last_run = samples[("stsync_job_last_run_timestamp_seconds", (("connection", "default"), ("job", "push")))]
    assert abs(last_run - time.time()) < 120
    assert families["stsync_job_running"].type == "gauge"
    # Replaced by rename: no temporary file is left beside it.
    assert [p.name for p in target.parent.iterdir()] == ["stsync.prom"]
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # the collector (another user) reads it


def test_prometheus_text_is_what_the_metrics_route_answers(paths):
    all_jobs_ran(paths)
    report = connection_status(paths, load_config(paths.config))
    text = prometheus_text(report)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"stsync_healthy", "stsync_job_last_success_timestamp_seconds", "stsync_webhook_deliveries_waiting",
            "stsync_referral_factory_cooldown_active", "stsync_token_valid"} <= names


def test_prometheus_into_a_missing_directory_is_exit_3(paths, isolated, capsys):
    all_jobs_ran(paths)
    assert run(["status", "--prometheus", str(isolated / "nowhere" / "stsync.prom")]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(isolated / "nowhere")


def test_quiet_status_says_nothing_when_healthy_and_only_what_needs_attention_otherwise(paths, capsys):
    with Ledger.open(paths.ledger) as ledger:
        ran(ledger, "push", "push-lead --new")
    capsys.readouterr()
    assert run(["-q", "status"]) == 1
    said = capsys.readouterr()
    assert said.out.splitlines()[0] == "Needs attention:" and "has never run" in said.out
    assert "stsync status — connection" not in said.out and said.err == ""
    all_jobs_ran(paths)
    assert run(["-q", "status"]) == 0
    assert capsys.readouterr() == ("", "")
