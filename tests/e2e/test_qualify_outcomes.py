"""`stsync qualify` reads only what changed, sees statuses held between two runs, and holds a
referral before qualifying it: the real CLI against the sandbox over sockets.

The sandbox plays the CSR and the technician (a booking converted, a job's statuses, a
cancellation) and moves a job's whole past back in time (``age_job``) for "N days later":
stsync's clock is never faked. Referral Factory's state and the requests made are read back
from the sandbox, not from stsync.
"""

from __future__ import annotations

import pytest
from sandbox_world import raise_limits

pytestmark = pytest.mark.e2e

RATE = 5_000
QUALIFY_PUT = "/users/qualification"


@pytest.fixture
def booked(make_sandbox, cli, isolated, monkeypatch):
    """Every seeded lead pushed and one qualify run made; → (sandbox, [booking ids])."""
    sb = make_sandbox(leads=4, customers=3, st_per_second=RATE, rf_per_minute=600_000)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    raise_limits(st_per_second=RATE, rf_per_minute=600_000)
    assert cli("map", "qualify", "job-status", "--status", "Completed").exit_code == 0
    pushed = cli("--json", "push-lead", "--new")
    assert pushed.exit_code == 0, str(pushed)
    first = cli("--json", "qualify")
    assert first.exit_code == 0 and first.json["reads"]["full"], str(first)
    bookings = sorted(b["id"] for b in sb.bookings())
    sb.clear_request_log()
    return sb, bookings


def user_of(sb, booking_id: int) -> dict:
    code = next(b["externalId"] for b in sb.bookings() if b["id"] == booking_id)
    return next(u for u in sb.rf_users(campaign_id=sb.credentials.campaign_id) if u["code"] == code)


def decision(result, booking_id: int) -> dict:
    return next(d for d in result.json["decisions"] if d["booking_id"] == booking_id)


def test_a_job_that_passes_through_completed_between_two_runs_is_qualified(booked, cli):
    sb, bookings = booked
    job = sb.convert_booking_to_job(bookings[0])
    assert cli("qualify").exit_code == 0
    sb.set_job_status(job["id"], "Completed")
    sb.set_job_status(job["id"], "InProgress")  # back to work before the next run

    result = cli("--json", "qualify")

    assert result.exit_code == 0, str(result)
    assert decision(result, bookings[0])["outcome"] == "qualified"
    assert decision(result, bookings[0])["job_status"] == "InProgress"
    assert sb.qualified(user_of(sb, bookings[0])["id"])


def test_a_status_held_for_a_moment_is_seen_in_the_job_history(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-status", "--status", "Hold").exit_code == 0
    job = sb.convert_booking_to_job(bookings[1])
    assert cli("qualify").exit_code == 0
    sb.set_job_status(job["id"], "Hold")
    sb.set_job_status(job["id"], "Scheduled")  # on hold for a moment, between two runs
    sb.clear_request_log()

    result = cli("--json", "qualify")

    assert result.exit_code == 0, str(result)
    assert decision(result, bookings[1])["outcome"] == "qualified"
    assert sb.count_requests(service="servicetitan", path_contains="/export/job-history") == 1


def test_the_hold_qualifies_on_day_n_plus_1_and_not_on_day_n(booked, cli):
    sb, bookings = booked
    hold = 7
    assert cli("map", "qualify", "job-status", "--status", "Completed", "--hold-days", str(hold)).exit_code == 0
    user = user_of(sb, bookings[2])
    job = sb.convert_booking_to_job(bookings[2])
    sb.complete_job(job["id"], total="480.00")
    sb.age_job(job["id"], hold - 0.5)  # completed six and a half days ago: day 7 of the hold

    on_day_n = cli("--json", "qualify")

    assert on_day_n.exit_code == 0, str(on_day_n)
    held = decision(on_day_n, bookings[2])
    assert held["outcome"] == "held" and not held["final"]
    assert held["held_until"] > sb.job(job["id"])["completedOn"]
    assert on_day_n.json["counts"]["held"] == 1
    assert [h["job_id"] for h in on_day_n.json["held"]] == [job["id"]]
    assert not sb.qualified(user["id"])
    human = cli("qualify")
    said = " ".join((human.stdout + human.stderr).split())
    assert "held until" in said and held["held_until"][:10] in said

    sb.age_job(job["id"], 1)  # a day later: day 8

    on_day_n_plus_1 = cli("--json", "qualify")

    assert on_day_n_plus_1.exit_code == 0, str(on_day_n_plus_1)
    assert decision(on_day_n_plus_1, bookings[2])["outcome"] == "qualified"
    assert sb.qualified(user["id"])
    story = cli("--json", "diagnose", "--offline", "--email", user["email"])
    assert "Held until" not in " ".join(story.json["story"]["summary"])


def test_a_job_canceled_inside_the_hold_is_never_qualified(booked, cli):
    sb, bookings = booked
    assert cli("map", "qualify", "job-status", "--status", "Completed", "--hold-days", "14").exit_code == 0
    user = user_of(sb, bookings[3])
    job = sb.convert_booking_to_job(bookings[3])
    sb.complete_job(job["id"], total="900.00")
    held = cli("--json", "qualify")
    assert decision(held, bookings[3])["outcome"] == "held"
    story = cli("--json", "diagnose", "--offline", "--email", user["email"])
    assert any(line.startswith("Held until") for line in story.json["story"]["summary"])
    [held_check] = [c for c in story.json["checks"] if c["name"] == "Held referrals"]
    assert f"{user['email']}, held until" in held_check["message"]

    sb.cancel_job(job["id"], memo="refund")
    sb.uncancel_job(job["id"])  # even taken back before the next run: the history keeps it

    result = cli("--json", "qualify")

    assert result.exit_code == 0, str(result)
    closed = decision(result, bookings[3])
    assert closed["outcome"] == "closed" and closed["final"] and "inside the 14-day hold" in closed["reason"]
    sb.age_job(job["id"], 30)
    later = cli("--json", "qualify")
    assert bookings[3] not in {d["booking_id"] for d in later.json["decisions"]}
    assert not sb.qualified(user["id"])
    assert sb.count_requests(service="referral_factory", method="PUT", path_contains=QUALIFY_PUT) == 0


def test_qualify_full_reads_every_booking_and_open_job_again(booked, cli):
    sb, bookings = booked
    sb.convert_booking_to_job(bookings[0])
    assert cli("qualify").exit_code == 0
    sb.clear_request_log()

    result = cli("--json", "qualify", "--full")

    assert result.exit_code == 0, str(result)
    assert result.json["reads"]["full"] and result.json["reads"]["full_reason"] == "asked for (--full)"
    lists = [r for r in sb.request_log if r.method == "GET" and r.path.endswith("/bookings")]
    assert lists and all("modifiedOnOrAfter" not in r.query for r in lists), "every booking, not what changed"
    assert [r for r in sb.request_log if r.path.endswith("/jpm/v2/tenant/" + str(sb.credentials.tenant_id) + "/jobs")]
    assert "full read" in cli("qualify", "--full").stderr


@pytest.mark.parametrize("open_bookings", [100, pytest.param(1_000, marks=pytest.mark.slow)])
def test_a_run_with_nothing_changed_makes_at_most_three_requests(make_sandbox, cli, isolated, monkeypatch, open_bookings):
    # Seeded bookings with a past book the campaign's leads: open for ever, converted,
    # completed, canceled, some passed through Completed (sandbox/seed.py LIFE).
    sb = make_sandbox(leads=open_bookings, bookings=open_bookings, customers=3, st_per_second=RATE, rf_per_minute=600_000)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    raise_limits(st_per_second=RATE, rf_per_minute=600_000)
    assert cli("map", "qualify", "job-status", "--status", "Completed").exit_code == 0
    assert cli("--json", "push-lead", "--new").exit_code == 0
    first = cli("--json", "qualify")
    assert first.exit_code == 0 and first.json["reads"]["full"], str(first)
    still_open = first.json["counts"]["still_open"]
    assert still_open >= open_bookings * 0.4  # the leads' bookings that stay open for ever, and more
    sb.clear_request_log()

    again = cli("--json", "qualify")

    assert again.exit_code == 0, str(again)
    assert again.json["counts"]["open_bookings"] == still_open and again.json["counts"]["qualified"] == 0
    made = [(r.service, r.method, r.path) for r in sb.request_log]
    assert len(made) <= 3, made
    assert {service for service, _, _ in made} == {"servicetitan"}, "no token, no Referral Factory request"
    assert again.json["counts"]["servicetitan_requests"] == len(made)
