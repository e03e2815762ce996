"""Everything the ledger knows is visible (issue 15 items 5 and 9), through the real CLI against
the sandbox:

- ``history`` lists pushes, qualifications, customer sync outcomes and webhook deliveries,
  newest first in one table; ``--kind`` one kind with its own columns; ``--json`` each entry
  with its kind;
- a failed record is acknowledged with ``history --ack ID``: recorded in the ledger, and
  ``diagnose`` stops failing on it until it fails again;
- a "last run failed" check clears once its cause is fixed, re-checked live, without waiting
  for the next run;
- ``diagnose --email`` tells a delivery's story, a customer-sync referrer's story (not a lead
  push), and what a booking that became a job waits for.
"""

from __future__ import annotations

import pytest
from json_schema import assert_valid
from sandbox_world import leads_of

from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e


def said(result) -> str:
    return " ".join(result.stderr.split())


def checks_by_name(result) -> dict[str, dict]:
    return {check["name"]: check for check in result.json["checks"]}


def ledger_of(isolated) -> Ledger:
    return Ledger.open(ConnectionPaths.for_config(isolated / "config.toml").ledger)


def record_delivery(
    isolated, key: str, *, event: str, external_id: str | None, outcome: str, error: str | None = None, email: str | None = None
) -> None:
    """A delivery as `stsync serve` records it (admitted with what it says, then its outcome)."""
    ledger = ledger_of(isolated)
    try:
        lead = {"email": email, "referral_code": external_id}
        ledger.admit_delivery(key, event=event, external_id=external_id, lead=lead, payload={"email": email})
        ledger.finish_delivery(key, outcome, error)
    finally:
        ledger.close()


def every_kind(sb, cli, isolated) -> dict[str, str]:
    """One record of each kind: a push created and one failed, a customer synced, a
    qualification, a webhook delivery that failed. Returns the e-mails used."""
    lead, other = leads_of(sb)[:2]
    assert cli("push-lead", "--code", lead["code"]).exit_code == 0
    failing = cli("push-lead", "--email", "broken@localhost", "--first-name", "Bro", "--referral-code", "broken01")
    assert failing.exit_code == 5  # an address ServiceTitan would not take: recorded as failed
    assert cli("sync-customers", "--once", "--limit", "3").exit_code == 0
    assert cli("map", "qualify", "job-created").exit_code == 0
    [booking] = sb.bookings(external_id=lead["code"])
    sb.convert_booking_to_job(booking["id"])
    assert cli("qualify").exit_code == 0
    record_delivery(
        isolated, f"lead_created:id={other['id']}:2026-01-01", event="lead_created", email=other["email"],
        external_id=other["code"], outcome="failed", error="ServiceTitan refused the booking: HTTP 400",
    )  # fmt: skip
    return {"lead": lead["email"], "other": other["email"], "broken": "broken@localhost"}


@pytest.mark.slow
def test_history_lists_every_kind_newest_first_and_each_kind_with_its_columns(connected, cli, cli_subprocess, isolated):
    emails = every_kind(connected, cli, isolated)

    everything = cli_subprocess("--json", "history")
    assert everything.exit_code == 0, str(everything)
    entries = everything.json["entries"]
    assert {entry["kind"] for entry in entries} == {"push", "qualify", "sync", "webhook"}
    assert [entry["at"] for entry in entries] == sorted((entry["at"] for entry in entries), reverse=True)
    assert entries[0]["kind"] == "webhook", "the delivery was recorded last"
    assert all(entry["id"][0] == entry["kind"][0] for entry in entries)

    listing = cli_subprocess("history")  # in a pipe: TSV, one record per line
    assert listing.exit_code == 0
    header, *rows = listing.stdout.splitlines()
    assert header.split("\t") == ["at", "kind", "id", "email", "record", "outcome", "detail"]
    assert {row.split("\t")[1] for row in rows} == {"push", "qualify", "sync", "webhook"}

    sync = cli_subprocess("--json", "history", "--kind", "sync")
    assert {entry["kind"] for entry in sync.json["entries"]} == {"sync"} and len(sync.json["entries"]) >= 3
    assert all("customer_id" in entry and "return_fields" in entry for entry in sync.json["entries"])
    sync_listing = cli_subprocess("history", "--kind", "sync")
    assert sync_listing.stdout.splitlines()[0].split("\t")[:3] == ["updated_at", "id", "customer_id"]

    failed = cli_subprocess("--json", "history", "--failed")
    assert {(entry["kind"], entry["email"]) for entry in failed.json["entries"]} == {
        ("push", emails["broken"]), ("webhook", emails["other"]),
    }  # fmt: skip
    theirs = cli_subprocess("--json", "history", "--email", emails["lead"])
    assert {entry["kind"] for entry in theirs.json["entries"]} == {"push", "qualify"}
    assert cli_subprocess("history", "--kind", "bogus").exit_code == 2


@pytest.mark.slow
def test_a_failed_record_is_acknowledged_and_diagnose_stops_failing_on_it(connected, cli, cli_subprocess):
    lead = leads_of(connected)[0]
    assert cli("push-lead", "--code", lead["code"]).exit_code == 0
    assert cli("push-lead", "--email", "test@localhost", "--first-name", "Test", "--referral-code", "test0001").exit_code == 5
    before = cli_subprocess("--json", "diagnose", "--offline")
    assert checks_by_name(before)["Push failures"]["status"] == "fail"
    [failure] = cli_subprocess("--json", "history", "--failed").json["entries"]
    [created] = [e for e in cli_subprocess("--json", "history", "--kind", "push").json["entries"] if e["outcome"] == "created"]

    refused = cli_subprocess("history", "--ack", created["id"])
    assert refused.exit_code == 2 and "did not fail (created)" in said(refused), str(refused)
    assert cli_subprocess("history", "--ack", "x99").exit_code == 2
    assert cli_subprocess("history", "--ack", "p999999").exit_code == 2

    acked = cli_subprocess("--json", "history", "--ack", failure["id"], "--note", "a test lead")
    assert acked.exit_code == 0, str(acked)
    assert acked.json["acknowledged"]["id"] == failure["id"] and acked.json["acknowledged"]["note"] == "a test lead"
    assert_valid(acked.json)
    confirmed = cli_subprocess("history", "--ack", failure["id"])
    assert confirmed.exit_code == 0 and f"acknowledged {failure['id']}" in said(confirmed)
    assert "no longer fails on it" in said(confirmed)

    listing = cli_subprocess("--json", "history", "--failed").json
    assert_valid(listing)
    listed = listing["entries"]
    assert listed[0]["id"] == failure["id"] and listed[0]["acknowledged_at"], "kept, marked acknowledged"
    after = cli_subprocess("--json", "diagnose", "--offline")
    push_failures = checks_by_name(after)["Push failures"]
    assert push_failures["status"] == "pass" and "1 acknowledged" in push_failures["message"]

    # It fails again: reported again.
    assert cli("push-lead", "--email", "test@localhost", "--first-name", "Test", "--referral-code", "test0001").exit_code == 5
    again = cli_subprocess("--json", "diagnose", "--offline")
    assert checks_by_name(again)["Push failures"]["status"] == "fail"


def test_a_failed_runs_check_clears_once_its_cause_is_fixed(connected, cli, monkeypatch):
    new_secret = connected.rotate_client_secret()  # the admin generated a new secret in ServiceTitan
    connected.expire_tokens()  # ... and the cached token ran out
    failed_run = cli("push-lead", "--new")
    assert failed_run.exit_code == 4, str(failed_run)

    still = cli("--json", "diagnose")
    last = checks_by_name(still)["Last push run"]
    assert last["status"] == "fail" and "still failing now: ServiceTitan token" in last["message"]
    offline = checks_by_name(cli("--json", "diagnose", "--offline"))["Last push run"]
    assert offline["status"] == "fail" and "without --offline" in offline["fix"]

    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", new_secret)  # the new secret, given to stsync
    fixed = cli("--json", "diagnose")
    last = checks_by_name(fixed)["Last push run"]
    assert last["status"] == "pass", last
    assert "its cause is fixed" in last["message"] and "ServiceTitan token" in last["message"]
    assert "the next `stsync push-lead` should succeed" in last["message"]


def test_diagnose_email_tells_the_webhook_deliveries(connected, cli, isolated):
    lead = leads_of(connected)[3]
    key = f"lead_created:id={lead['id']}:{lead['signed_up_at']}"
    ledger_of(isolated).close()  # the ledger exists
    record_delivery(isolated, key, event="lead_created", external_id=lead["code"], outcome="failed",
                    error="ServiceTitan is unavailable")  # fmt: skip

    result = cli("--json", "diagnose", "--email", lead["email"])

    story = result.json["story"]
    [delivery] = story["deliveries"]
    assert delivery["event"] == "lead_created" and delivery["outcome"] == "failed"
    assert delivery["error_text"] == "ServiceTitan is unavailable" and delivery["id"].startswith("w")
    assert any(line.startswith(f"Webhook {delivery['id']} (lead_created)") and "failed" in line for line in story["summary"])
    assert any(f"stsync push-lead --code {lead['code']}" in step and "--ack" in step for step in story["next_steps"])


def test_diagnose_email_of_a_customer_sync_referrer_tells_the_customer_sync(connected, cli):
    assert cli("sync-customers", "--once", "--limit", "5").exit_code == 0
    created = [u for u in connected.rf_users(campaign_id=connected.credentials.campaign_id) if u["source"] == "Api"]
    referrer = created[0]

    result = cli("--json", "diagnose", "--email", referrer["email"])

    story = result.json["story"]
    text = "\n".join(story["summary"])
    assert f"Referral Factory referrer #{referrer['id']}" in text and f"(code {referrer['code']})" in text
    assert "return fields written to the customer: " in text and referrer["code"] in text
    assert "no booking is made for them" in text
    steps = "\n".join(story["next_steps"])
    assert "push-lead" not in steps and "never pushed" not in text, "an existing customer is not a lead to push"


def test_diagnose_email_of_a_booking_that_became_a_job_says_what_it_waits_for(connected, cli):
    lead = leads_of(connected)[1]
    assert cli("push-lead", "--code", lead["code"]).exit_code == 0
    assert cli("map", "qualify", "job-status", "--status", "Completed").exit_code == 0
    [booking] = connected.bookings(external_id=lead["code"])
    job = connected.convert_booking_to_job(booking["id"], "Dispatched")

    waiting = cli("--json", "diagnose", "--email", lead["email"]).json["story"]["summary"]
    assert any(f"the booking is job {job['id']} (Dispatched); waiting for the job to reach Completed" in s for s in waiting)
    assert not any("qualifies when the booking becomes a job" in s for s in waiting)

    assert cli("map", "qualify", "job-created").exit_code == 0
    met = cli("--json", "diagnose", "--email", lead["email"]).json["story"]
    assert any(f"job {job['id']} (Dispatched) and the rule is met" in s for s in met["summary"])
    assert any("`stsync qualify`" in step for step in met["next_steps"])
