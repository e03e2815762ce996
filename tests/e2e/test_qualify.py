"""`stsync qualify` end to end: the real CLI against the sandbox over sockets.

Leads are pushed with `push-lead --new`; the sandbox then plays the CSR (a booking becomes a
job, the job moves through its statuses, a booking is dismissed) and Referral Factory's state
is read back from the sandbox, not from stsync.
"""

from __future__ import annotations

import pytest

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

pytestmark = pytest.mark.e2e

QUALIFY_PUT = "/users/qualification"


@pytest.fixture
def booked(connected, cli, isolated):
    """Every seeded lead pushed; returns (sandbox, {booking id: RF user of that booking})."""
    sb = connected
    result = cli("--json", "push-lead", "--new")
    assert result.exit_code == 0, str(result)
    users = {u["code"]: u for u in sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")}
    bookings = {b["id"]: users[b["externalId"]] for b in sb.bookings() if b["externalId"] in users}
    assert len(bookings) == len(users) >= 3
    sb.clear_request_log()
    return sb, bookings


def set_rule(isolated, rule: str, *, job_status: str | None = None, unqualify_on: list[str] | None = None) -> None:
    path = isolated / "config.toml"
    config = load_config(path)
    config.leads.qualification.rule = rule
    config.leads.qualification.job_status = job_status
    config.leads.qualification.unqualify_on = unqualify_on or []
    save_config(config, path)


def qualification_puts(sb) -> int:
    return sb.count_requests(service="referral_factory", method="PUT", path_contains=QUALIFY_PUT)


def booking_ids_read(sb) -> set[int]:
    ids: set[int] = set()
    for record in sb.request_log:
        if record.service == "servicetitan" and record.method == "GET" and record.path.endswith("/bookings"):
            value = record.query.get("ids")
            values = value if isinstance(value, list) else [value]
            ids |= {int(i) for v in values if v for i in str(v).split(",")}
    return ids


def qualified_users(sb, bookings) -> set[int]:
    return {user["id"] for user in bookings.values() if sb.qualified(user["id"])}


def test_job_created_qualifies_the_converted_booking_once(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-created").exit_code == 0
    first, second = list(bookings)[:2]
    sb.convert_booking_to_job(first)

    result = cli("--json", "qualify")

    assert result.exit_code == 0, str(result)
    report = result.json
    assert report["ok"] and report["rule"] == "job_created"
    assert report["counts"]["qualified"] == 1 and report["counts"]["waiting"] == len(bookings) - 1
    assert qualified_users(sb, bookings) == {bookings[first]["id"]}
    assert qualification_puts(sb) == 1
    # The first run reads in full: the provider's bookings (one page), the job by id (one
    # batch of ≤ 50), and the two export feeds from a day ago.
    assert result.json["reads"]["full"]
    assert sb.count_requests(service="servicetitan", method="GET", path_contains="/bookings") == 1
    assert sb.count_requests(service="servicetitan", method="GET", path_contains="/jpm/v2/tenant") == 3
    assert "qualified 1" in result.stderr

    # A second run: no qualification call again; only what changed is read, and the final
    # booking is not decided again.
    sb.clear_request_log()
    sb.convert_booking_to_job(second)
    again = cli("--json", "qualify")
    assert again.exit_code == 0, str(again)
    assert again.json["counts"]["qualified"] == 1
    assert qualified_users(sb, bookings) == {bookings[first]["id"], bookings[second]["id"]}
    assert qualification_puts(sb) == 1, "only the newly converted booking is qualified"
    assert first not in {d["booking_id"] for d in again.json["decisions"]}, "a final booking is never decided again"
    assert not again.json["reads"]["full"] and booking_ids_read(sb) == set(), "no booking is read by id"

    sb.clear_request_log()
    third = cli("--json", "qualify")
    assert third.exit_code == 0 and third.json["counts"]["qualified"] == 0
    assert qualification_puts(sb) == 0


def test_job_status_completed_qualifies_only_once_the_job_is_completed(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-status", "--status", "Completed").exit_code == 0
    booking_id = next(iter(bookings))
    user_id = bookings[booking_id]["id"]
    job = sb.convert_booking_to_job(booking_id, "Scheduled")

    for status in ("Scheduled", "Dispatched", "InProgress"):
        if status != "Scheduled":
            sb.set_job_status(job["id"], status)
        result = cli("--json", "qualify")
        assert result.exit_code == 0, str(result)
        assert result.json["counts"]["qualified"] == 0, status
        assert not sb.qualified(user_id)
    assert qualification_puts(sb) == 0

    sb.set_job_status(job["id"], "Completed")
    result = cli("--json", "qualify")
    assert result.exit_code == 0, str(result)
    assert result.json["counts"]["qualified"] == 1
    assert sb.qualified(user_id)
    [decision] = [d for d in result.json["decisions"] if d["booking_id"] == booking_id]
    assert decision["job_status"] == "Completed" and decision["final"]

    sb.clear_request_log()
    assert cli("qualify").exit_code == 0
    assert qualification_puts(sb) == 0


def test_a_canceled_job_unqualifies_with_unqualify_on(booked, cli, isolated):
    sb, bookings = booked
    set_rule(isolated, "job_created", unqualify_on=["job_canceled"])
    booking_id = next(iter(bookings))
    user_id = bookings[booking_id]["id"]
    job = sb.convert_booking_to_job(booking_id)

    assert cli("qualify").exit_code == 0
    assert sb.qualified(user_id)

    sb.set_job_status(job["id"], "Canceled")
    result = cli("--json", "qualify")
    assert result.exit_code == 0, str(result)
    assert result.json["counts"]["unqualified"] == 1
    assert not sb.qualified(user_id), "back to pending in Referral Factory"
    assert qualification_puts(sb) == 2

    sb.clear_request_log()
    assert cli("qualify").exit_code == 0
    assert qualification_puts(sb) == 0


def test_dismissed_bookings_and_canceled_jobs_are_closed_not_qualified(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-created").exit_code == 0
    dismissed, canceled = list(bookings)[:2]
    sb.dismiss_booking(dismissed)
    job = sb.convert_booking_to_job(canceled)
    sb.set_job_status(job["id"], "Canceled")

    result = cli("--json", "qualify")

    assert result.exit_code == 0, str(result)
    outcomes = {d["booking_id"]: d["outcome"] for d in result.json["decisions"]}
    assert outcomes[dismissed] == "closed" and outcomes[canceled] == "closed"
    assert qualified_users(sb, bookings) == set()
    assert qualification_puts(sb) == 0
    sb.clear_request_log()
    again = cli("--json", "qualify")
    assert {d["booking_id"] for d in again.json["decisions"]}.isdisjoint({dismissed, canceled})


def test_rule_none_sends_nothing_and_says_so(booked, cli):
    sb, bookings = booked
    sb.convert_booking_to_job(next(iter(bookings)))
    result = cli("--json", "qualify")
    assert result.exit_code == 0, str(result)
    assert result.json["rule"] == "none" and result.json["decisions"] == []
    assert 'rule is "none"' in result.stderr
    assert len(sb.request_log) == 0


def test_dry_run_shows_what_would_be_qualified_and_writes_nothing(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-created").exit_code == 0
    booking_id = next(iter(bookings))
    sb.convert_booking_to_job(booking_id)

    result = cli("--json", "qualify", "--dry-run")

    assert result.exit_code == 0, str(result)
    assert result.json["dry_run"] and result.json["counts"]["qualified"] == 1
    assert {d["outcome"] for d in result.json["decisions"] if d["booking_id"] == booking_id} == {"would_qualify"}
    assert sb.count_requests(service="referral_factory") == 0
    assert not qualified_users(sb, bookings)

    real = cli("--json", "qualify")
    assert real.json["counts"]["qualified"] == 1 and sb.qualified(bookings[booking_id]["id"])


def test_a_second_qualify_while_one_runs_exits_7(booked, cli, isolated):
    from stsync.storage.locks import RunLock
    from stsync.storage.paths import ConnectionPaths

    assert cli("map", "qualify", "job-created").exit_code == 0
    paths = ConnectionPaths.for_config(isolated / "config.toml")
    with RunLock(paths, "qualify", command="qualify"):
        result = cli("qualify")
    assert result.exit_code == 7, str(result)
