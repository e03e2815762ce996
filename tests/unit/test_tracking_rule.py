"""tracking.rule: the qualification rule and its hold, judged from a job's facts at a given time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stsync.storage.ledger import JobEvent, JobRow
from stsync.tracking.rule import JobFacts, RuleSettings, Step, counts_for, event_status, judge
from stsync.vocabulary import QualificationRule

NOW = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
STATUS = QualificationRule.JOB_STATUS
CREATED = QualificationRule.JOB_CREATED


def day(n: float) -> datetime:
    """``n`` days before NOW."""
    return NOW - timedelta(days=n)


def job(status: str, *steps: tuple[str, float], completed: float | None = None, created: float | None = None) -> JobFacts:
    return JobFacts(
        job_id=7,
        status=status,
        created_on=day(created) if created is not None else None,
        completed_on=day(completed) if completed is not None else None,
        steps=tuple(Step(s, day(n)) for s, n in steps),
    )


def verdict(facts: JobFacts, rule=STATUS, target: str | None = "Completed", hold: int = 0) -> str:
    return judge(facts, RuleSettings(rule=rule, job_status=target if rule == STATUS else None, hold_days=hold), NOW).verdict


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("Completed", "Completed"),
        ("InProgress", "InProgress"),
        ("Job Completed", "Completed"),
        ("Job Cancelled", "Canceled"),
        ("job canceled", "Canceled"),
        ("Put on hold", "Hold"),
        ("Working", "InProgress"),
        ("Appointment Dispatched", "Dispatched"),
        ("Technician assigned", None),
        ("", None),
        (None, None),
    ],
)
def test_history_wordings_are_read_as_statuses(event_type, status):
    assert event_status(event_type) == status


@pytest.mark.parametrize(
    ("status", "target", "counts"),
    [
        ("Completed", "Completed", True),
        ("Completed", "Dispatched", True),
        ("InProgress", "Completed", False),
        ("Hold", "Dispatched", False),
        ("Hold", "Hold", True),
        ("Completed", "Hold", False),
        ("Canceled", "Scheduled", False),
        ("SomethingNew", "Completed", False),
        (None, "Completed", False),
    ],
)
def test_what_counts_as_having_reached_a_status(status, target, counts):
    assert counts_for(status, target) is counts


# -- without a hold ------------------------------------------------------------------------


def test_a_status_passed_through_between_two_looks_meets_the_rule():
    assert verdict(job("InProgress", ("InProgress", 3), ("Completed", 2), ("InProgress", 1.9))) == "met"
    assert verdict(job("Scheduled", ("Scheduled", 3), ("Hold", 2), ("Scheduled", 1)), target="Hold") == "met"
    assert verdict(job("Scheduled", ("Scheduled", 3)), target="Hold") == "waiting"


def test_completed_on_is_durable_and_a_canceled_job_never_meets_the_rule():
    assert verdict(job("InProgress", completed=2)) == "met"
    assert verdict(job("Canceled", ("Completed", 3), ("Canceled", 1), completed=3)) == "waiting"
    assert verdict(job("Canceled", ("Canceled", 1)), target="Canceled") == "met"


def test_job_created_is_met_by_any_job_not_canceled():
    assert verdict(job("Scheduled", created=0.1), rule=CREATED) == "met"
    assert verdict(job("Canceled", created=2), rule=CREATED) == "waiting"


# -- with a hold -----------------------------------------------------------------------------


def test_the_hold_ends_n_days_after_the_status_was_reached():
    held = judge(job("Completed", ("Completed", 6.5)), RuleSettings(STATUS, "Completed", hold_days=7), NOW)
    assert held.verdict == "held" and held.held_until == day(6.5) + timedelta(days=7) and held.since == day(6.5)
    assert verdict(job("Completed", ("Completed", 7.5)), hold=7) == "met"
    assert verdict(job("Completed", ("Completed", 7)), hold=7) == "met", "exactly N days is enough"


def test_completed_on_starts_the_hold_when_no_step_says_completed():
    held = judge(job("Completed", ("Scheduled", 9), completed=3), RuleSettings(STATUS, "Completed", hold_days=7), NOW)
    assert held.verdict == "held" and held.since == day(3)


def test_a_cancellation_inside_the_hold_breaks_it_even_when_it_was_removed():
    facts = job("Completed", ("Completed", 5), ("Canceled", 4), ("Completed", 3.9))
    judgement = judge(facts, RuleSettings(STATUS, "Completed", hold_days=7), NOW)
    assert judgement.verdict == "broken" and "inside the 7-day hold" in judgement.reason
    assert verdict(job("Canceled", ("Completed", 2), ("Canceled", 1)), hold=7) == "broken"


def test_a_cancellation_after_the_hold_had_passed_does_not_break_it_but_a_canceled_job_is_not_qualified():
    assert verdict(job("Completed", ("Completed", 20), ("Canceled", 5), ("Completed", 4)), hold=7) == "met"
    assert verdict(job("Canceled", ("Completed", 20), ("Canceled", 5)), hold=7) == "waiting"


def test_going_backwards_restarts_the_hold_and_a_pause_does_not():
    left = judge(job("InProgress", ("Completed", 10), ("InProgress", 9)), RuleSettings(STATUS, "Completed", hold_days=7), NOW)
    assert left.verdict == "waiting" and "hold starts again" in left.reason
    again = judge(
        job("Completed", ("Completed", 10), ("InProgress", 9), ("Completed", 2)), RuleSettings(STATUS, "Completed", hold_days=7), NOW
    )
    assert again.verdict == "held" and again.since == day(2)
    # Leaving after the hold had passed: it was met then.
    assert verdict(job("InProgress", ("Completed", 10), ("InProgress", 1)), hold=7) == "met"
    # Hold is outside the progression: pausing a Dispatched job is not going backwards.
    assert verdict(job("Hold", ("Dispatched", 9), ("Hold", 8)), target="Dispatched", hold=7) == "met"
    # For a Hold target only a cancellation ends the stretch.
    assert verdict(job("InProgress", ("Hold", 9), ("InProgress", 8)), target="Hold", hold=7) == "met"


def test_job_created_with_a_hold():
    assert verdict(job("Scheduled", created=2), rule=CREATED, hold=3) == "held"
    assert verdict(job("Scheduled", created=4), rule=CREATED, hold=3) == "met"
    assert verdict(job("Scheduled", ("Canceled", 3), ("Scheduled", 2.5), created=4), rule=CREATED, hold=3) == "broken"
    assert verdict(job("Scheduled"), rule=CREATED, hold=3) == "waiting", "no creation date, no hold"


def test_facts_from_the_ledger_prefer_the_history_to_what_stsync_observed():
    row = JobRow(
        job_id=7, booking_id=1, status="InProgress", created_on="2025-06-01T00:00:00.000Z", completed_on=None,
        canceled_on=None, total=None, invoice_id=None, modified_on="2025-06-20T00:00:00.000Z", read_at="x",
    )
    events = [
        JobEvent(7, "observed:InProgress:2025-06-20T00:00:00.000Z", "InProgress", "2025-06-20T00:00:00.000Z", "observed"),
        JobEvent(7, "history:1", "Completed", "2025-06-10T00:00:00.000Z", "history"),
        JobEvent(7, "history:2", "InProgress", "2025-06-11T00:00:00.000Z", "history"),
    ]
    facts = JobFacts.from_ledger(row, events)
    assert [(s.status, s.at.day) for s in facts.steps] == [("Completed", 10), ("InProgress", 11)]
    observed_only = JobFacts.from_ledger(row, events[:1])
    assert [s.status for s in observed_only.steps] == ["InProgress"]
