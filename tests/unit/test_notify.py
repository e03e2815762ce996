"""stsync.notify: the message, the sends (short timeouts, never raising), and the alert state
machine — once per change of state, new failed records once, a reminder a day later, never
every look — against a real ledger, a local receiver and an injected clock."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from receiver import Receiver

from stsync.logs import register_secret
from stsync.notify.message import Alert, Origin, payload
from stsync.notify.send import Notifier
from stsync.notify.watch import STATE_KEY, JobResult, Watch
from stsync.ratelimit import RateLimiter
from stsync.storage.config import default_config
from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
AUTH_ERROR = {"type": "AuthError", "message": "ServiceTitan rejected the Client ID / Client Secret", "hint": "run `stsync connect`", "exit_code": 4}
REFUSED = {"type": "ServiceTitanApiError", "message": "bad", "title": "Name is required", "status": 400, "service": "servicetitan", "exit_code": 1}


@pytest.fixture
def receiver():
    with Receiver() as hooks:
        yield hooks


@pytest.fixture
def paths(isolated) -> ConnectionPaths:
    paths = ConnectionPaths.for_config(isolated / "acme.toml")
    paths.ensure_state()
    return paths


@pytest.fixture
def ledger(paths):
    with Ledger.open(paths.ledger) as opened:
        yield opened


def config_with(receiver: Receiver, **schedule):
    config = default_config()
    config.notify.webhook_url = receiver.url("/hook")
    config.notify.ping_url = receiver.url("/hc/{job}")
    config.notify.timeout_seconds = 2.0
    for key, value in schedule.items():
        setattr(config.schedule, key, value)
    return config


def watch_for(paths, ledger, config) -> Watch:
    return Watch(paths, ledger, config, Notifier.from_settings(config.notify))


def alerts_in(body: dict) -> list[dict]:
    return body["stsync"]["alerts"]


# -- the message ---------------------------------------------------------------------------------
def test_the_message_is_slack_text_plus_the_details_and_holds_no_registered_secret():
    register_secret("sk-live-0123456789abcdef")
    alert = Alert(
        event="job_failed", what="`push-lead --new` exited 4: key sk-live-0123456789abcdef refused", job="push",
        command="push-lead --new", exit_code=4, hint="run `stsync connect`", more="stsync --config /etc/acme.toml diagnose",
    )
    body = payload(Origin("acme", "host1", "/etc/acme.toml"), [alert], at="2025-03-01T12:00:00.000Z")
    assert body["text"].startswith("stsync acme (host1):\n• `push-lead --new` exited 4")
    assert "(more: `stsync --config /etc/acme.toml diagnose`)" in body["text"] and "→ run `stsync connect`" in body["text"]
    details = body["stsync"]
    assert (details["version"], details["connection"], details["host"], details["config"]) == (1, "acme", "host1", "/etc/acme.toml")
    [sent] = details["alerts"]
    assert (sent["event"], sent["job"], sent["exit_code"], sent["command"]) == ("job_failed", "push", 4, "push-lead --new")
    assert sent["more"] == "stsync --config /etc/acme.toml diagnose"
    assert "sk-live-0123456789abcdef" not in json.dumps(body) and "***" in sent["what"]


# -- sending -------------------------------------------------------------------------------------
def test_pings_follow_healthchecks_start_success_and_exit_code_and_6_and_7_send_nothing(receiver):
    notifier = Notifier(webhook_url=None, ping_url=receiver.url("/hc/stsync-{job}"), timeout=2)
    assert notifier.ping_start("push") is True
    assert notifier.ping_end("push", 0, "push-lead --new: exit 0") is True
    assert notifier.ping_start("sync") and notifier.ping_end("sync", 4, "sync: exit 4") is True
    assert notifier.ping_end("sync", 6) is None and notifier.ping_end("sync", 7) is None and notifier.ping_end("sync", 130) is None
    assert receiver.paths() == ["/hc/stsync-push/start", "/hc/stsync-push", "/hc/stsync-sync/start", "/hc/stsync-sync/4"]
    assert receiver.received("/hc/stsync-sync/4")[0].text == "sync: exit 4"


def test_one_ping_url_without_a_placeholder_serves_every_job(receiver):
    notifier = Notifier(webhook_url=None, ping_url=receiver.url("/hc/uuid/"), timeout=2)
    notifier.ping_start("qualify")
    notifier.ping_end("qualify", 5)
    assert receiver.paths() == ["/hc/uuid/start", "/hc/uuid/5"]


def test_a_receiver_that_hangs_or_fails_costs_a_bounded_wait_and_is_logged_without_its_url(receiver, caplog):
    caplog.set_level(logging.INFO, logger="stsync")
    receiver.delay = 30
    notifier = Notifier.from_settings(type("N", (), {"webhook_url": receiver.url("/hook/T0/secret-path"), "ping_url": None, "timeout_seconds": 0.3})())
    started = time.monotonic()
    assert notifier.send({"text": "x"}) is False
    assert time.monotonic() - started < 0.3 + 1 + 1  # the deadline, plus a margin for a busy machine
    receiver.delay = 0
    receiver.status = 500
    assert notifier.send({"text": "x"}) is False
    dead = Notifier(webhook_url="http://127.0.0.1:9/hook", ping_url=None, timeout=1)
    assert dead.send({"text": "x"}) is False
    logged = caplog.text
    assert "secret-path" not in logged and "answered HTTP 500" in logged and "could not reach the alert webhook" in logged


def test_the_environment_wins_over_the_config_for_the_urls(monkeypatch, receiver):
    monkeypatch.setenv("STSYNC_NOTIFY_WEBHOOK_URL", receiver.url("/from-env"))
    config = default_config()
    config.notify.webhook_url = "https://hooks.example.com/from-config"
    assert Notifier.from_settings(config.notify).webhook_url == receiver.url("/from-env")


# -- the state machine ---------------------------------------------------------------------------
def test_a_failing_job_is_said_once_then_reminded_a_day_later_and_forgotten_when_it_succeeds(paths, ledger, receiver):
    config = config_with(receiver)
    watch = watch_for(paths, ledger, config)
    failed = JobResult("push", "push-lead --new", 4, AUTH_ERROR)

    first = watch.look(now=T0, job_result=failed)
    assert first.sent and [a.event for a in first.alerts] == ["job_failed"]
    [body] = receiver.json_bodies("/hook")
    [alert] = alerts_in(body)
    assert alert["exit_code"] == 4 and alert["more"].endswith("diagnose") and "rejected the Client ID" in alert["what"]

    for minutes in (5, 10, 60 * 23):  # every tick after it: silent
        assert watch.look(now=T0 + timedelta(minutes=minutes), job_result=failed).alerts == []
    # 6 (temporary) and 7 (lock held) change nothing and say nothing.
    assert watch.look(now=T0 + timedelta(hours=23, minutes=30), job_result=JobResult("push", "push-lead --new", 6)).alerts == []
    assert watch.look(now=T0 + timedelta(hours=23, minutes=40), job_result=JobResult("push", "push-lead --new", 7)).alerts == []
    assert len(receiver.json_bodies("/hook")) == 1

    reminder = watch.look(now=T0 + timedelta(hours=24, minutes=1), job_result=failed)
    assert [a.reminder for a in reminder.alerts] == [True] and reminder.alerts[0].what.startswith("still: ")
    assert watch.look(now=T0 + timedelta(hours=25), job_result=failed).alerts == []

    assert watch.look(now=T0 + timedelta(hours=26), job_result=JobResult("push", "push-lead --new", 0)).alerts == []
    again = watch.look(now=T0 + timedelta(hours=27), job_result=failed)
    assert [a.event for a in again.alerts] == ["job_failed"] and not again.alerts[0].reminder
    assert len(receiver.json_bodies("/hook")) == 3


def test_a_problem_not_looked_at_again_is_still_reminded(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    watch.look(now=T0, job_result=JobResult("sync", "sync-customers --ongoing", 3, {"type": "ConfigError", "message": "bad key"}))
    assert watch.look(now=T0 + timedelta(hours=2)).alerts == []  # a periodic look (serve, run): no job result
    later = watch.look(now=T0 + timedelta(hours=24, seconds=1))
    assert [(a.event, a.reminder, a.job) for a in later.alerts] == [("job_failed", True, "sync")]


def test_another_failure_of_the_same_job_is_a_change_of_state(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    assert watch.look(now=T0, job_result=JobResult("qualify", "qualify", 4, AUTH_ERROR)).alerts
    changed = watch.look(now=T0 + timedelta(minutes=10), job_result=JobResult("qualify", "qualify", 3, {"type": "SetupRequired", "message": "map it"}))
    assert [a.exit_code for a in changed.alerts] == [3] and changed.alerts[0].more.endswith("validate")


def test_new_failed_records_are_said_once_each_and_a_fixed_one_that_fails_anew_again(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))

    def fail_push(external_id: str, email: str) -> None:
        attempt = ledger.record_push_intent(external_id, kind="lead", email=email, name="X")
        ledger.record_push_result(attempt, outcome="failed", error=REFUSED)

    fail_push("ANN1", "ann@example.com")
    first = watch.look(now=T0)
    assert [a.event for a in first.alerts] == ["record_failed"]
    assert "ann@example.com (ANN1): HTTP 400: Name is required" in first.alerts[0].what
    assert first.alerts[0].more.endswith("history --failed")

    fail_push("ANN1", "ann@example.com")  # the next run fails it again: not news
    assert watch.look(now=T0 + timedelta(minutes=5)).alerts == []
    fail_push("BOB2", "bob@example.com")
    second = watch.look(now=T0 + timedelta(minutes=10))
    assert len(second.alerts) == 1 and "bob@example.com" in second.alerts[0].what and "ann@" not in second.alerts[0].what
    assert second.alerts[0].details["new"] == ["push:BOB2"] and second.alerts[0].details["open"]["pushes"] == 2

    fixed = ledger.record_push_intent("ANN1", kind="lead", email="ann@example.com", name="X")
    ledger.record_push_result(fixed, outcome="created", booking_id=5)
    assert watch.look(now=T0 + timedelta(minutes=15)).alerts == []
    ledger.upsert_referrer(42, state="failed", email="carl@example.com", error=REFUSED)
    third = watch.look(now=T0 + timedelta(minutes=20))
    assert "customer 42 (carl@example.com)" in third.alerts[0].what
    reminder = watch.look(now=T0 + timedelta(hours=25))
    assert [a.reminder for a in reminder.alerts] == [True] and "2 record(s) failed" in reminder.alerts[0].what


def test_failed_webhook_deliveries_are_said_once_each(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    ledger.admit_delivery("lead_created:1", event="lead_created", external_id="ANN1", lead={"referral_code": "ANN1"}, payload={"code": "ANN1"})
    ledger.finish_delivery("lead_created:1", "failed", REFUSED)
    said = watch.look(now=T0)
    assert [a.event for a in said.alerts] == ["delivery_failed"] and "lead_created:1" in said.alerts[0].what
    assert watch.look(now=T0 + timedelta(minutes=1)).alerts == []


def test_a_job_without_success_for_n_intervals_is_overdue_once(paths, ledger, receiver):
    config = config_with(receiver, push=300.0, qualify=None, sync=None, overdue_after=3.0)
    watch = watch_for(paths, ledger, config)
    run = ledger.start_run("push", "push-lead --new")
    ledger.finish_run(run, "ok", {})
    finished = datetime.fromisoformat(ledger.get_run(run).finished_at.replace("Z", "+00:00"))
    assert watch.look(now=finished + timedelta(minutes=14)).alerts == []
    late = watch.look(now=finished + timedelta(minutes=16))
    assert [(a.event, a.job) for a in late.alerts] == [("job_overdue", "push")]
    assert "has not succeeded for 16 min" in late.alerts[0].what and "every 5 min" in late.alerts[0].what
    assert watch.look(now=finished + timedelta(minutes=30)).alerts == []
    assert watch.look(now=finished + timedelta(hours=25)).alerts[0].reminder


def test_a_job_switched_off_or_with_nothing_to_do_is_never_overdue(paths, ledger, receiver):
    config = config_with(receiver, push=None, qualify=60.0, sync=60.0)  # qualify: rule none
    for job in ("push", "qualify"):
        ledger.finish_run(ledger.start_run(job, job), "failed", {})
    ledger.finish_run(ledger.start_run("sync", "sync-customers --ongoing"), "ok", {})
    said = watch_for(paths, ledger, config).look(now=datetime.now(UTC) + timedelta(hours=1))
    assert [(a.event, a.job) for a in said.alerts] == [("job_overdue", "sync")]


def limiter_at(paths, wall: datetime) -> RateLimiter:
    """The connection's shared Referral Factory limiter, its wall clock at ``wall``."""
    return RateLimiter(600, 60.0, state_file=paths.rate_file("referral_factory"), wall_clock=wall.timestamp, service="Referral Factory")


def test_the_referral_factory_cool_down_is_said_once_per_cool_down_and_forgotten_when_over(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    limiter = limiter_at(paths, T0)
    limiter.record_rate_limited()
    assert watch.look(now=T0 + timedelta(seconds=1)).alerts == []  # one episode: half speed, nobody paged
    limiter.record_rate_limited()  # the second episode of the hour: every process stops for an hour
    said = watch.look(now=T0 + timedelta(seconds=2))
    [alert] = said.alerts
    assert alert.event == "rf_cooldown" and "2025-03-01T13:00:00.000Z" in alert.what and "(in 59 min)" in alert.what
    assert alert.details["episodes_last_hour"] == 2 and alert.more.endswith("status")
    assert watch.look(now=T0 + timedelta(minutes=30)).alerts == []
    assert watch.look(now=T0 + timedelta(hours=2)).alerts == []  # over: forgotten
    limiter_at(paths, T0 + timedelta(hours=3)).record_ip_blocked()
    [blocked] = watch.look(now=T0 + timedelta(hours=3, seconds=1)).alerts
    assert blocked.event == "rf_blocked" and "blocked this machine's IP address" in blocked.what
    assert len(receiver.json_bodies("/hook")) == 2


def test_a_message_the_receiver_refused_is_said_again_at_the_next_look(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    receiver.status = 503
    failed = JobResult("sync", "sync-customers --ongoing", 4, AUTH_ERROR)
    assert watch.look(now=T0, job_result=failed).sent is False
    assert ledger.get(STATE_KEY) is None
    receiver.status = 200
    assert watch.look(now=T0 + timedelta(minutes=5), job_result=failed).sent is True
    assert len(receiver.json_bodies("/hook")) == 2


def test_without_a_webhook_url_nothing_is_evaluated_or_stored(paths, ledger):
    config = default_config()
    look = Watch(paths, ledger, config, Notifier.from_settings(config.notify)).look(now=T0, job_result=JobResult("push", "push-lead --new", 4, AUTH_ERROR))
    assert look.alerts == [] and ledger.get(STATE_KEY) is None


def test_everything_said_in_one_look_is_one_message(paths, ledger, receiver):
    watch = watch_for(paths, ledger, config_with(receiver))
    attempt = ledger.record_push_intent("ANN1", kind="lead", email="ann@example.com", name="X")
    ledger.record_push_result(attempt, outcome="failed", error=REFUSED)
    limiter_at(paths, T0).record_ip_blocked()
    look = watch.look(now=T0, job_result=JobResult("push", "push-lead --new", 5, {"type": "PartialFailure", "message": "1 of 3 lead(s) failed"}))
    assert sorted(a.event for a in look.alerts) == ["job_failed", "record_failed", "rf_blocked"]
    [body] = receiver.json_bodies("/hook")
    assert len(alerts_in(body)) == 3 and body["text"].count("\n• ") == 3
