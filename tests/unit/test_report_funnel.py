"""The report's arithmetic (stsync.reporting.funnel): the funnel never grows, its rates are
rates, the groups add up to the total, and each ledger row is counted by the documented rules."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsync.reporting.funnel import (
    STAGES,
    Referral,
    Referrer,
    ReferrerDirectory,
    Tally,
    build_report,
    months_between,
    referral_of,
)
from stsync.storage.ledger import KnownReferrer, ReferralRow

START = date(2025, 1, 1)
REFERRERS = [
    None,
    Referrer(key="rf:1", rf_user_id=1, email="ann@example.com", name="Ann"),
    Referrer(key="rf:2", rf_user_id=2, customer_id=10002, email="bo@example.com"),
    Referrer(key="email:cy@example.com", email="cy@example.com"),
]

referrals = st.builds(
    Referral,
    external_id=st.text(alphabet="ABCDEFGH", min_size=1, max_size=6),
    joined_on=st.dates(min_value=START, max_value=START + timedelta(days=500)),
    referrer=st.sampled_from(REFERRERS),
    booked=st.booleans(),
    job=st.booleans(),
    completed=st.booleans(),
    qualified=st.booleans(),
    held=st.booleans(),
    canceled=st.booleans(),
    dismissed=st.booleans(),
    total_cents=st.one_of(st.none(), st.just(0), st.integers(min_value=1, max_value=10_000_000)),
    invoiced=st.booleans(),
)
periods = st.tuples(
    st.dates(min_value=START - timedelta(days=40), max_value=START + timedelta(days=300)),
    st.integers(min_value=0, max_value=400),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(referrals, max_size=60))
def test_the_funnel_never_grows_and_its_rates_are_rates(chosen):
    tally = Tally.of(chosen)
    stages = tally.stages()
    counts = [s["count"] for s in stages]
    assert [s["stage"] for s in stages] == [name for name, _ in STAGES]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == len(chosen)
    for stage in stages:
        for rate in (stage["rate_from_previous"], stage["rate_of_referred"]):
            assert rate is None or 0.0 <= rate <= 1.0
    assert stages[0]["rate_from_previous"] is None
    # Outcomes each within the referrals that could have them.
    assert tally.qualified <= tally.qualified_all <= tally.referred
    assert tally.canceled <= tally.jobs and tally.dismissed <= tally.booked - tally.jobs
    assert tally.jobs_with_total + tally.jobs_without_total + tally.canceled == tally.jobs
    assert tally.zero_total_jobs <= tally.jobs_with_total and tally.jobs_with_invoice <= tally.jobs


@settings(max_examples=150, deadline=None)
@given(st.lists(referrals, max_size=60), periods)
def test_the_groups_by_referrer_and_by_month_add_up_to_the_period(chosen, period):
    since, days = period
    until = since + timedelta(days=days)
    inside = [r for r in chosen if since <= r.joined_on <= until]
    for by in ("referrer", "month", None):
        report = build_report(chosen, since=since, until=until, by=by)
        assert report.total == Tally.of(inside)
        assert sum((g.tally for g in report.groups), Tally()) == report.total
    months = build_report(chosen, since=since, until=until, by="month")
    assert [g.key for g in months.groups] == months_between(since, until)
    assert sum((g.tally.revenue_cents for g in months.months), 0) == months.total.revenue_cents
    by_referrer = build_report(chosen, since=since, until=until, by="referrer")
    assert len({g.key for g in by_referrer.groups}) == len(by_referrer.groups)
    assert by_referrer.unknown_referrer == sum(1 for r in inside if r.referrer is None)


@settings(max_examples=100, deadline=None)
@given(st.lists(referrals, max_size=40), st.lists(referrals, max_size=40))
def test_a_tally_is_the_sum_of_the_tallies_of_its_parts(first, second):
    assert Tally.of(first + second) == Tally.of(first) + Tally.of(second)


@settings(max_examples=100, deadline=None)
@given(st.lists(referrals, max_size=60))
def test_top_referrers_are_ranked_and_only_those_who_brought_something(chosen):
    report = build_report(chosen, since=START, until=START + timedelta(days=500), by=None)
    revenue = [g.tally.revenue_cents for g in report.top_by_revenue]
    assert revenue == sorted(revenue, reverse=True) and all(cents > 0 for cents in revenue)
    completed = [g.tally.completed for g in report.top_by_completed]
    assert completed == sorted(completed, reverse=True) and all(n > 0 for n in completed)
    assert all(g.referrer is not None for g in report.top_by_revenue + report.top_by_completed)
    assert all(g.referrer is not None and g.referrer.synced for g in report.synced_referrers)
    assert {g.key for g in report.synced_referrers} == {
        r.referrer.key for r in chosen if r.referrer is not None and r.referrer.synced
    }


def referral(**values) -> Referral:
    return Referral(external_id=values.pop("external_id", "X1"), joined_on=values.pop("joined_on", START), **values)


def test_stages_are_cumulative_and_outcomes_are_counted_on_their_own():
    tally = Tally.of(
        [
            referral(booked=True, job=True, completed=True, qualified=True, total_cents=125_000, invoiced=True),
            # Qualified when its job was created (rule job_created): in the outcome, not past "jobs" in the funnel.
            referral(booked=True, job=True, qualified=True),
            # A job flag without a booking is not a job: the stages follow each other.
            referral(job=True, completed=True),
            referral(booked=True, dismissed=True),
            referral(booked=True, job=True, canceled=True, total_cents=90_000),
            referral(booked=True, job=True, completed=True, total_cents=0),
            referral(booked=True, job=True, held=True),
            referral(),
        ]
    )
    assert [s["count"] for s in tally.stages()] == [8, 6, 5, 2, 1]
    assert (tally.qualified_all, tally.held, tally.canceled, tally.dismissed) == (2, 1, 1, 1)
    assert tally.revenue_cents == 125_000 and tally.revenue == 1250.0
    assert (tally.jobs_with_total, tally.zero_total_jobs, tally.jobs_without_total) == (2, 1, 2)
    assert tally.canceled_total_cents == 90_000 and tally.jobs_with_invoice == 1
    assert tally.average_per_paid_job == 1250.0
    stages = {s["stage"]: s for s in tally.stages()}
    assert stages["jobs"]["rate_from_previous"] == 5 / 6 and stages["qualified"]["rate_of_referred"] == 1 / 8


def test_an_empty_period_has_no_rates_rather_than_a_division_by_zero():
    report = build_report([], since=START, until=START, by="month")
    assert [s["rate_of_referred"] for s in report.total.stages()] == [None] * len(STAGES)
    assert report.total.average_per_paid_job is None
    assert [g.key for g in report.groups] == ["2025-01"]


def test_the_period_includes_both_days_and_months_run_across_years():
    inside = [referral(joined_on=date(2024, 12, 1)), referral(joined_on=date(2025, 2, 28))]
    outside = [referral(joined_on=date(2024, 11, 30)), referral(joined_on=date(2025, 3, 1))]
    report = build_report(inside + outside, since=date(2024, 12, 1), until=date(2025, 2, 28), by="month")
    assert report.total.referred == 2
    assert [(g.key, g.tally.referred) for g in report.groups] == [("2024-12", 1), ("2025-01", 0), ("2025-02", 1)]
    with pytest.raises(ValueError):
        build_report([], since=date(2025, 2, 1), until=date(2025, 1, 31), by=None)


def row(**values) -> ReferralRow:
    base = {f.name: None for f in fields(ReferralRow)}
    base.update(external_id="X1", joined_at="2025-03-04T00:00:00.000Z", joined_at_known=True, final=False)
    base.update(values)
    return ReferralRow(**base)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, {}),
        ({"booking_id": 5, "booking_status": "Dismissed"}, {"booked": True, "dismissed": True}),
        ({"booking_id": 5, "job_id": 9, "job_status": "Scheduled"}, {"booked": True, "job": True}),
        # ServiceTitan keeps completedOn after a job goes back to work: still a completed job.
        ({"booking_id": 5, "job_id": 9, "job_status": "InProgress", "job_completed_on": "2025-04-01T00:00:00.000Z"},
         {"booked": True, "job": True, "completed": True}),
        ({"booking_id": 5, "job_id": 9, "job_status": "Completed"}, {"booked": True, "job": True, "completed": True}),
        # Completed, then canceled (a refund): canceled, not completed; its total kept apart.
        ({"booking_id": 5, "job_id": 9, "job_status": "Canceled", "job_completed_on": "2025-04-01T00:00:00.000Z",
          "job_total": 480.5, "job_invoice_id": 77},
         {"booked": True, "job": True, "canceled": True, "total_cents": 48050, "invoiced": True}),
        ({"booking_id": 5, "job_id": 9, "job_status": "Completed", "job_total": 0.0, "qualification": "qualified"},
         {"booked": True, "job": True, "completed": True, "total_cents": 0, "qualified": True}),
        ({"booking_id": 5, "job_id": 9, "job_status": "Completed", "held_until": "2025-05-01T00:00:00.000Z"},
         {"booked": True, "job": True, "completed": True, "held": True}),
        # A hold that ended in a closure (final) is no longer held.
        ({"booking_id": 5, "job_id": 9, "job_status": "Canceled", "held_until": "2025-05-01T00:00:00.000Z", "final": True,
          "qualification": "not_qualified"},
         {"booked": True, "job": True, "canceled": True}),
        # A job id without a booking (an old push) is not counted as a job.
        ({"job_id": 9, "job_status": "Completed"}, {}),
    ],
)
def test_a_ledger_row_is_counted_by_the_documented_rules(values, expected):
    counted = referral_of(row(**values), None)
    assert counted == replace(referral(joined_on=date(2025, 3, 4)), **expected)


def test_referrers_are_merged_by_id_and_email_with_what_customer_sync_knows():
    rows = [
        row(external_id="A", referrer_rf_user_id=1),
        row(external_id="B", referrer_rf_user_id=1, referrer_email="ann@example.com", referrer_name="Ann"),
        # Only an e-mail (a lead from a file): the same referrer, found by e-mail.
        row(external_id="C", referrer_email="ANN@example.com"),
        # A synced customer, known by id alone in the lead.
        row(external_id="D", referrer_rf_user_id=2),
        row(external_id="E", referrer_email="nobody@example.com", referrer_name="Nobody"),
        row(external_id="F", referrer_code="REF9"),
        row(external_id="G"),
    ]
    known = [KnownReferrer(rf_user_id=2, email="bo@example.com", name=None, customer_id=10002)]
    directory = ReferrerDirectory(rows, known)
    found = {r.external_id: directory.referrer_of(r) for r in rows}
    assert found["A"] == found["B"] == found["C"] == Referrer(key="rf:1", rf_user_id=1, email="ann@example.com", name="Ann")
    assert found["A"].label == "Ann <ann@example.com>"
    assert found["D"] == Referrer(key="rf:2", rf_user_id=2, email="bo@example.com", customer_id=10002)
    assert found["D"].synced and found["D"].label == "bo@example.com"
    assert found["E"].key == "email:nobody@example.com" and found["E"].name == "Nobody"
    assert found["F"].key == "code:REF9" and found["F"].label == "referral code REF9"
    assert found["G"] is None
    assert Referrer(key="rf:3", rf_user_id=3).label == "Referral Factory user 3"
