"""Alerts end to end: the real CLI (cron-style runs, in child processes) against the sandbox,
the alerts and pings received by a local receiver the test starts.

- the healthchecks ping sequence: /start then the bare URL on success, /start then /4 on a
  failure; exit 6 and 7 send no end ping and no message;
- exit 4 is said once, not by the runs after it; moved a day back in the ledger's kv, the
  state is reminded once; success forgets it silently;
- a partial run (exit 5) says which records failed, once;
- Referral Factory's IP block (its shared cool-down) is said once, though the runs exit 6;
- `stsync notify --test`;
- no message or ping carries a secret (the leak scan of tests/reliability/test_secret_leaks.py:
  any 12 characters of a credential or an issued token).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from receiver import Receiver

from stsync.notify.watch import STATE_KEY
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.locks import RunLock
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e
WINDOW = 12


@pytest.fixture
def receiver():
    with Receiver() as hooks:
        yield hooks


@pytest.fixture
def alerting(connected, isolated, receiver, monkeypatch):
    """The connected sandbox; alerts to the receiver: the webhook from the config, the ping URL
    from the environment (as a container would set it)."""
    path = isolated / "config.toml"
    config = load_config(path)
    config.notify.webhook_url = receiver.url("/slack")
    config.notify.timeout_seconds = 3.0
    save_config(config, path)
    monkeypatch.setenv("STSYNC_NOTIFY_PING_URL", receiver.url("/hc/stsync-{job}"))
    return connected


@pytest.fixture
def paths(isolated) -> ConnectionPaths:
    return ConnectionPaths.for_config(isolated / "config.toml")


def messages(receiver: Receiver) -> list[dict]:
    return receiver.json_bodies("/slack")


def events(receiver: Receiver) -> list[list[tuple[str, bool]]]:
    return [[(a["event"], a["reminder"]) for a in body["stsync"]["alerts"]] for body in messages(receiver)]


def assert_no_secret(sb, receiver: Receiver) -> None:
    creds = sb.credentials
    values = [creds.client_secret, creds.app_key, creds.rf_api_key, sb.rf.api_key]
    with sb.st.lock:
        values += [token.rsplit(".", 1)[-1] for token in sb.st.tokens]
    received = "\n".join(r.path + " " + r.text for r in receiver.requests)
    leaks = [value[:4] + "…" for value in values for i in range(len(value) - WINDOW + 1) if value[i : i + WINDOW] in received]
    assert not leaks, f"secrets in alerts: {leaks}"


def test_the_ping_sequence_for_success_and_for_failure(alerting, cli_subprocess, receiver):
    sb = alerting
    assert cli_subprocess("sync-customers", "--ongoing").exit_code == 0
    assert receiver.paths() == ["/hc/stsync-sync/start", "/hc/stsync-sync"]
    receiver.clear()
    sb.rotate_rf_api_key()  # the stored key is now refused: exit 4
    failed = cli_subprocess("push-lead", "--new")
    assert failed.exit_code == 4, str(failed)
    pings = [p for p in receiver.paths() if p.startswith("/hc/")]
    assert pings == ["/hc/stsync-push/start", "/hc/stsync-push/4"]
    assert "exit 4" in receiver.received("/hc/stsync-push/4")[0].text
    assert_no_secret(sb, receiver)


@pytest.mark.slow
def test_exit_4_is_said_once_reminded_a_day_later_and_forgotten_on_success(alerting, cli_subprocess, receiver, paths, monkeypatch):
    sb = alerting
    new_key = sb.rotate_rf_api_key()
    for _ in range(3):
        assert cli_subprocess("push-lead", "--new").exit_code == 4
    assert events(receiver) == [[("job_failed", False)]]
    [body] = messages(receiver)
    [alert] = body["stsync"]["alerts"]
    assert body["stsync"]["connection"] == "default" and alert["job"] == "push" and alert["exit_code"] == 4
    assert alert["command"] == "push-lead --new" and "Referral Factory rejected the API key" in alert["what"]
    assert alert["more"] == f"stsync --config {paths.config} diagnose"
    assert "push-lead --new" in body["text"] and "exited 4" in body["text"]

    # A day passes (the state's timestamps moved back): the next failing run reminds, once.
    with Ledger.open(paths.ledger) as ledger:
        state = json.loads(ledger.get(STATE_KEY))
        day_ago = (datetime.now(UTC) - timedelta(hours=25)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for entry in state["conditions"].values():
            entry["notified_at"] = day_ago
        ledger.put(STATE_KEY, json.dumps(state))
    assert cli_subprocess("push-lead", "--new").exit_code == 4
    assert cli_subprocess("push-lead", "--new").exit_code == 4
    assert events(receiver) == [[("job_failed", False)], [("job_failed", True)]]
    assert messages(receiver)[1]["text"].startswith("stsync default (") and "reminder" in messages(receiver)[1]["text"]

    # Fixed (the new key in the environment): the success is silent, the state forgotten.
    monkeypatch.setenv("STSYNC_RF_API_KEY", new_key)
    assert cli_subprocess("push-lead", "--new").exit_code == 0
    assert len(messages(receiver)) == 2
    with Ledger.open(paths.ledger) as ledger:
        assert "job.push.exit" not in json.loads(ledger.get(STATE_KEY))["conditions"]
        [last] = [r for r in ledger.recent_runs(job="push", limit=1)]
        assert (last.outcome, last.exit_code) == ("ok", 0)
        assert [r.exit_code for r in ledger.recent_runs(job="push", limit=10)][1:6] == [4] * 5
    assert_no_secret(sb, receiver)


def test_a_partial_run_says_which_records_failed_once(alerting, cli, cli_subprocess, receiver):
    sb = alerting
    # Every lead now lacks the value of a required field: each fails on its own (exit 5).
    assert cli("map", "set", "summary", "--from", "meta.Project Notes").exit_code == 0
    assert cli_subprocess("push-lead", "--new").exit_code == 5
    [body] = messages(receiver)
    alerts = {a["event"]: a for a in body["stsync"]["alerts"]}
    assert set(alerts) == {"job_failed", "record_failed"}
    assert alerts["job_failed"]["exit_code"] == 5 and alerts["job_failed"]["more"].endswith("history --failed")
    leads = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")
    assert f"{len(leads)} record(s) newly failed" in alerts["record_failed"]["what"]
    assert "meta.Project Notes" in alerts["record_failed"]["what"]
    assert cli_subprocess("push-lead", "--new").exit_code == 5  # the same records: not news
    assert len(messages(receiver)) == 1
    assert_no_secret(sb, receiver)


def test_exit_6_and_7_are_silent_and_send_no_end_ping(alerting, cli_subprocess, receiver, paths, isolated):
    sb = alerting
    holding = RunLock(paths, "sync", command="sync-customers --ongoing").acquire()
    try:
        assert cli_subprocess("sync-customers", "--ongoing").exit_code == 7
    finally:
        holding.release()
    config = load_config(isolated / "config.toml")
    config.limits.retry_budget_seconds = 1
    save_config(config, isolated / "config.toml")
    from stsync.sandbox import Faults

    sb.set_faults(Faults(error_rate=1.0))
    assert cli_subprocess("sync-customers", "--ongoing").exit_code == 6
    sb.set_faults(None)
    assert messages(receiver) == []
    assert [p for p in receiver.paths() if p.startswith("/hc/")] == ["/hc/stsync-sync/start", "/hc/stsync-sync/start"]


def test_the_ip_block_is_said_once_though_the_runs_themselves_exit_6(alerting, cli_subprocess, receiver, paths):
    sb = alerting
    sb.block_ips()
    assert cli_subprocess("push-lead", "--new").exit_code == 6
    # The shared cool-down holds every run back now: each exits 6 at once, and says nothing more.
    assert cli_subprocess("sync-customers", "--ongoing").exit_code == 6
    assert cli_subprocess("push-lead", "--new").exit_code == 6
    assert events(receiver) == [[("rf_blocked", False)]]
    [alert] = messages(receiver)[0]["stsync"]["alerts"]
    assert "blocked this machine's IP address" in alert["what"] and alert["details"]["reason"] == "ip_blocked"
    assert alert["more"].endswith("status")
    assert_no_secret(sb, receiver)


def test_notify_test_sends_one_message_and_a_log_line(alerting, cli_subprocess, receiver):
    result = cli_subprocess("--json", "notify", "--test")
    assert result.exit_code == 0, str(result)
    assert result.json["webhook"] is True and result.json["ping"] is True
    [body] = messages(receiver)
    assert body["stsync"]["alerts"][0]["event"] == "test" and body["text"].startswith("stsync default (")
    assert receiver.paths() == ["/slack", "/hc/stsync-push/log"]
    receiver.status = 500
    failed = cli_subprocess("notify", "--test")
    assert failed.exit_code == 6 and "did not get through" in failed.stderr


def test_notify_test_without_a_destination_names_the_setting(connected, cli_subprocess):
    result = cli_subprocess("notify", "--test")
    assert result.exit_code == 3 and "no alert destination is configured" in result.stderr, str(result)
    assert "STSYNC_NOTIFY_WEBHOOK_URL" in " ".join(result.stderr.split())
    assert cli_subprocess("notify").exit_code == 2


def test_a_receiver_that_never_answers_neither_fails_nor_holds_up_the_run(alerting, cli_subprocess, receiver, isolated):
    config = load_config(isolated / "config.toml")
    config.notify.timeout_seconds = 1.0
    save_config(config, isolated / "config.toml")
    alerting.rotate_rf_api_key()  # exit 4: a message to send, besides the two pings
    receiver.delay = 120
    started = time.monotonic()
    result = cli_subprocess("push-lead", "--new", timeout=90)
    assert result.exit_code == 4, str(result)  # the run's own exit code, not the alert's trouble
    # Three sends (start ping, message, end ping), each given up after its deadline (2 s).
    assert time.monotonic() - started < 45
    assert [r.path for r in receiver.requests] == ["/hc/stsync-push/start", "/slack", "/hc/stsync-push/4"]
