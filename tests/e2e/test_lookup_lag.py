"""A create whose answer is lost while the lookup lags (issue 14 item 3), end to end: the
real CLI against the sandbox's ``lookup_lag_seconds`` variant with commit-then-500 faults.

Whatever the grace period, never a duplicate: a grace period longer than the lag finds the
record within the run; a shorter one leaves it "unknown — will be checked again" (exit 6,
``history``, ``diagnose --email``), and the next run finds it. What ServiceTitan and Referral
Factory hold is read back from the sandbox.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from stsync.cli.app import run
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

pytestmark = pytest.mark.e2e

UNKNOWN = "unknown — will be checked again"


@pytest.fixture
def make_connected(isolated, monkeypatch, capsys):
    from stsync.sandbox import Sandbox, Variants

    opened = []

    def connect(*, lag: float, grace: int, **sandbox_options):
        sb = Sandbox(
            seed=31, st_per_second=1_000, rf_per_minute=60_000, variants=Variants(lookup_lag_seconds=lag), **sandbox_options
        ).start()
        opened.append(sb)
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        assert run([*sb.connect_args(), "--secrets-store", "file"]) == 0
        path = isolated / "config.toml"
        config = load_config(path)
        config.limits.servicetitan_per_second = 1_000
        config.limits.referral_factory_per_minute = 60_000
        config.limits.lookup_grace_seconds = grace
        save_config(config, path)
        capsys.readouterr()
        return sb

    yield connect
    for sb in opened:
        sb.stop()


def cli(capsys, *args: str) -> tuple[int, dict, str]:
    code = run(["--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


# -- bookings ---------------------------------------------------------------------------------


def test_a_lost_booking_answer_stays_unknown_past_a_short_grace_and_the_next_run_finds_it(
    make_connected, capsys, monkeypatch, tmp_path
):
    from stsync.sandbox import Faults

    monkeypatch.setenv("COLUMNS", "250")
    lag = 4.0
    sb = make_connected(lag=lag, grace=1, customers=3, leads=3)
    users = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")
    codes = {u["code"]: u["email"] for u in users}
    # The leads as a file (a list of Referral Factory users): each is looked up by its
    # externalId — the lookup the lag hides (push-lead --new reads the provider's list instead).
    leads_file = tmp_path / "leads.json"
    leads_file.write_text(json.dumps(users), encoding="utf-8")
    sb.set_faults(Faults(commit_then_500_rate=1.0, path_contains="/bookings"))
    created_by = time.monotonic()

    code, report, err = cli(capsys, "push-lead", "--file", str(leads_file))

    # Every create was committed, its answer lost, and the lookup does not list it for 4 s:
    # not sent again, each left unknown for the next run.
    assert code == 6, err
    assert report["counts"]["unknown"] == 3 and report["counts"]["created"] == 0
    assert f"3 booking(s) {UNKNOWN}" in err
    assert Counter(b["externalId"] for b in sb.bookings()) == Counter(set(codes))  # one each, never two
    code_one, email_one = sorted(codes.items())[0]
    code, history, _ = cli(capsys, "history", "--email", email_one)
    assert [a["outcome"] for a in history["attempts"]] == ["unknown"]
    assert history["attempts"][0]["error"]["message"].startswith(UNKNOWN)
    assert run(["history", "--email", email_one]) == 0
    shown = capsys.readouterr()
    assert UNKNOWN in shown.out + shown.err  # the outcome column says it (COLUMNS is wide: one line)
    code, diagnosis, _ = cli(capsys, "diagnose", "--offline", "--email", email_one)
    story = diagnosis["story"]
    assert any(UNKNOWN in line for line in story["summary"]), story["summary"]
    assert any("nothing to fix" in step for step in story["next_steps"])
    checks = {c["name"]: c for c in diagnosis["checks"]}
    assert checks["Creates in doubt"]["status"] == "warn" and code_one in checks["Creates in doubt"]["message"]

    # Later (cron's next tick): the lookup lists them now; found, recorded, nothing re-sent.
    wait_until(created_by + lag + 0.5)
    posts_before = sb.count_requests(service="servicetitan", method="POST", path_contains="/bookings")
    code, again, err = cli(capsys, "push-lead", "--file", str(leads_file))
    assert code == 0, err
    assert again["counts"]["already_booked"] == 3 and again["counts"]["unknown"] == 0
    assert sb.count_requests(service="servicetitan", method="POST", path_contains="/bookings") == posts_before
    assert Counter(b["externalId"] for b in sb.bookings()) == Counter(set(codes))
    code, history, _ = cli(capsys, "history", "--email", email_one)
    assert [a["outcome"] for a in history["attempts"]] == ["already_booked", "created"]  # the doubt settled as created


def test_push_new_finds_its_lost_bookings_within_the_run_whatever_the_lag(make_connected, capsys):
    from stsync.sandbox import Faults

    # push-lead --new reads the provider's bookings as a list (modifiedOn order), which shows a
    # new booking the ?externalId= filter does not list yet: its lost answers are found at once.
    sb = make_connected(lag=30.0, grace=1, customers=3, leads=2)
    codes = {u["code"] for u in sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")}
    sb.set_faults(Faults(commit_then_500_rate=1.0, path_contains="/bookings"))

    code, report, err = cli(capsys, "push-lead", "--new")

    assert code == 0, err
    assert report["counts"]["created"] == 2 and report["counts"]["unknown"] == 0
    assert Counter(b["externalId"] for b in sb.bookings()) == Counter(codes)
    assert sb.count_requests(service="servicetitan", method="POST", path_contains="/bookings") == 2


# -- referrers --------------------------------------------------------------------------------


def test_a_lost_referrer_answer_stays_unknown_past_a_short_grace_and_the_next_run_finds_it(make_connected, capsys):
    from customer_sync_expectations import expected_outcomes

    from stsync.sandbox import Faults

    lag = 4.0
    sb = make_connected(lag=lag, grace=1, customers=12, leads=1)
    expected = expected_outcomes(sb)
    enrolled = {cid: email for cid, (outcome, email) in expected.items() if outcome == "created"}
    assert len(enrolled) >= 4
    sb.set_faults(Faults(commit_then_500_rate=1.0, path_ends_with="/api/v2/users"))  # creates, not searches
    created_by = time.monotonic()

    code, report, err = cli(capsys, "sync-customers", "--once")

    assert code == 6, err
    assert report["counts"]["unknown"] == len(enrolled) and report["counts"]["created"] == 0 and report["counts"]["failed"] == 0
    assert {c["customer_id"] for c in report["unknown_customers"]} == set(enrolled)
    users = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_referring")
    per_email = Counter(u["email"].casefold() for u in users)
    assert all(per_email[email.casefold()] == 1 for email in enrolled.values())  # made once, never twice
    customer_id, email = sorted(enrolled.items())[0]
    code, diagnosis, _ = cli(capsys, "diagnose", "--offline", "--email", email)
    assert any(f"customer {customer_id} → referrer ({UNKNOWN})" in line for line in diagnosis["story"]["summary"])

    wait_until(created_by + lag + 0.5)
    sb.clear_request_log()
    code, again, err = cli(capsys, "sync-customers", "--ongoing")
    assert code == 0, err
    assert again["counts"]["created"] == len(enrolled) and again["counts"]["unknown"] == 0
    creates = [r for r in sb.request_log if r.method == "POST" and r.path.endswith("/api/v2/users")]
    assert creates == []  # found by search: nothing sent again
    users = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_referring")
    per_email = Counter(u["email"].casefold() for u in users)
    by_email = {u["email"].casefold(): u for u in users}
    for cid, email in enrolled.items():
        assert per_email[email.casefold()] == 1
        values = {f["name"]: f["value"] for f in sb.customer(cid)["customFields"]}
        assert values.get("Referral Code") == by_email[email.casefold()]["code"]
