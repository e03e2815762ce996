"""services.qualify: the rule applied to open bookings, exactly once, with a real ledger.

The two API clients are replaced by small fakes holding ServiceTitan's bookings and jobs and
Referral Factory's users; every call they receive is recorded, so a test can say "no
qualification request was sent" or "final bookings were not read again".
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from connection_fixtures import BOOKING_PROVIDER as BP  # tests/support
from connection_fixtures import CAMPAIGN
from fakes import FakeReferralFactoryUsers  # tests/support

from stsync.connection import Connection
from stsync.errors import AuthError, ReferralFactoryApiError, TemporaryError
from stsync.services.qualify import (
    ALREADY,
    CLOSED,
    FAILED,
    FINISHED,
    MISSING,
    QUALIFIED,
    UNQUALIFIED,
    WAITING,
    WOULD_CLOSE,
    WOULD_QUALIFY,
    qualify,
    status_reached,
)
from stsync.servicetitan.models import Booking, Job
from stsync.storage.config import Qualification, default_config


class FakeServiceTitan:
    def __init__(self) -> None:
        self.bookings: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.booking_reads: list[list[int]] = []
        self.job_reads: list[list[int]] = []

    def get_bookings(self, bp, ids):
        assert bp == BP
        ids = list(ids)
        assert 0 < len(ids) <= 50, "ServiceTitan takes at most 50 ids"
        self.booking_reads.append(ids)
        return [Booking(id=i, **self.bookings[i]) for i in ids if i in self.bookings]

    def get_jobs(self, ids):
        ids = list(ids)
        assert 0 < len(ids) <= 50, "ServiceTitan takes at most 50 ids"
        self.job_reads.append(ids)
        return [Job(id=i, **self.jobs[i]) for i in ids if i in self.jobs]

    @property
    def read_booking_ids(self) -> list[int]:
        return [i for batch in self.booking_reads for i in batch]


class FakeReferralFactory(FakeReferralFactoryUsers):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[bool, int]] = []
        self.fail_write: Exception | None = None

    def add(self, user_id: int, code: str, email: str, *, qualified: bool = False, type: str = "person_invited") -> None:
        self.users[user_id] = {
            "id": user_id, "campaign_id": CAMPAIGN, "code": code, "email": email, "type": type,
            "qualified_at": "2025-01-01" if qualified else None,
        }

    def set_qualification(self, qualified, *, id=None, code=None, email=None, campaign_id=None):
        assert id is not None and code is None and email is None, "qualify by the saved id"
        if self.fail_write is not None:
            raise self.fail_write
        self.writes.append((qualified, id))
        self.users[id]["qualified_at"] = "2025-06-01" if qualified else None


def set_rule(conn, rule: str, *, job_status: str | None = None, unqualify_on: list[str] | None = None) -> None:
    conn.config.leads.qualification = Qualification.model_validate(
        {"rule": rule, **({"job_status": job_status} if job_status else {}), "unqualify_on": unqualify_on or []}
    )


@pytest.fixture
def conn(make_connection):
    """The real ledger; ServiceTitan and Referral Factory are the fakes above."""
    connection = make_connection(servicetitan=FakeServiceTitan(), referral_factory=FakeReferralFactory())
    set_rule(connection, "job_created")
    return connection


def pushed(conn: Connection, n: int, *, booking_id: int, job: dict | None = None, status: str = "New",
           kind: str = "lead", user: bool = True, rf_user_id: int | None = None) -> str:
    """A lead pushed and booked in the ledger, its booking (and job) in the fake ServiceTitan."""
    code = f"CODE{n}"
    email = f"lead{n}@example.com"
    attempt = conn.ledger.record_push_intent(code, kind=kind, email=email, name=f"Lead {n}", referral_code=code,
                                             rf_user_id=rf_user_id)
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=booking_id)
    conn.servicetitan.bookings[booking_id] = {"status": status, "externalId": code,
                                              "jobId": job["id"] if job else None}
    if job:
        conn.servicetitan.jobs[job["id"]] = {k: v for k, v in job.items() if k != "id"}
    if user:
        conn.referral_factory.add(1000 + n, code, email)
    return code


def outcomes(report) -> dict[str, str]:
    return {d.external_id: d.outcome for d in report.decisions}


# -- rule none -------------------------------------------------------------------------------------


def test_rule_none_does_nothing_at_all():
    class Untouchable:
        config = default_config()

        def __getattr__(self, name):
            raise AssertionError(f"rule none must not touch conn.{name}")

    report = qualify(Untouchable())
    assert report.rule == "none"
    assert report.decisions == [] and report.open_bookings == 0


# -- job_created -------------------------------------------------------------------------------------


def test_job_created_qualifies_converted_bookings_once_and_waits_for_the_others(conn):
    converted = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    waiting = pushed(conn, 2, booking_id=502)

    report = qualify(conn)

    assert outcomes(report) == {converted: QUALIFIED, waiting: WAITING}
    assert conn.referral_factory.writes == [(True, 1001)]
    push = conn.ledger.get_push(converted)
    assert push.qualification == "qualified" and push.final and push.job_id == 9001 and push.job_status == "Scheduled"
    assert [(q.action, q.state, q.rule) for q in conn.ledger.qualifications_for(converted)] == [("qualify", "done", "job_created")]
    assert not conn.ledger.get_push(waiting).final
    assert report.counts()["qualified"] == 1 and report.counts()["still_open"] == 1
    run = conn.ledger.last_run("qualify")
    assert run.outcome == "ok" and run.counts["qualified"] == 1

    # Second run: nothing sent again, and the final booking is not even read.
    conn.servicetitan.booking_reads.clear()
    again = qualify(conn)
    assert conn.referral_factory.writes == [(True, 1001)]
    assert conn.servicetitan.read_booking_ids == [502]
    assert outcomes(again) == {waiting: WAITING}


def test_booking_converted_between_runs_qualifies_on_the_next_run(conn):
    code = pushed(conn, 1, booking_id=501)
    assert outcomes(qualify(conn)) == {code: WAITING}
    conn.servicetitan.bookings[501].update(status="Converted", jobId=77)
    conn.servicetitan.jobs[77] = {"jobStatus": "Scheduled"}
    assert outcomes(qualify(conn)) == {code: QUALIFIED}
    assert conn.referral_factory.writes == [(True, 1001)]


def test_dismissed_booking_and_canceled_job_are_final_and_not_qualified(conn):
    dismissed = pushed(conn, 1, booking_id=501, status="Dismissed")
    canceled = pushed(conn, 2, booking_id=502, job={"id": 9002, "jobStatus": "Canceled"}, status="Converted")

    report = qualify(conn)

    assert outcomes(report) == {dismissed: CLOSED, canceled: CLOSED}
    assert conn.referral_factory.writes == []
    for code in (dismissed, canceled):
        push = conn.ledger.get_push(code)
        assert push.final and push.qualification == "not_qualified"
    assert conn.ledger.get_push(dismissed).booking_status == "Dismissed"
    assert conn.ledger.open_bookings() == []


def test_referrer_bookings_are_never_read_or_qualified(conn):
    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Completed"}, kind="referrer")
    report = qualify(conn)
    assert report.decisions == [] and conn.servicetitan.booking_reads == [] and conn.referral_factory.writes == []


def test_bookings_and_jobs_are_read_in_batches_of_50(conn):
    for n in range(120):
        pushed(conn, n, booking_id=10_000 + n, job={"id": 20_000 + n, "jobStatus": "InProgress"}, status="Converted")
    set_rule(conn, "job_status", job_status="Completed")

    report = qualify(conn)

    assert [len(batch) for batch in conn.servicetitan.booking_reads] == [50, 50, 20]
    assert [len(batch) for batch in conn.servicetitan.job_reads] == [50, 50, 20]
    assert report.count(WAITING) == 120

    # Known jobs are read directly: the bookings that led to them are not read again.
    conn.servicetitan.booking_reads.clear()
    conn.servicetitan.job_reads.clear()
    qualify(conn)
    assert conn.servicetitan.booking_reads == []
    assert [len(batch) for batch in conn.servicetitan.job_reads] == [50, 50, 20]


# -- job_status ----------------------------------------------------------------------------------------


def test_job_status_qualifies_only_once_the_job_is_completed(conn):
    set_rule(conn, "job_status", job_status="Completed")
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")

    for status in ("Scheduled", "Dispatched", "InProgress", "Hold"):
        conn.servicetitan.jobs[9001]["jobStatus"] = status
        assert outcomes(qualify(conn)) == {code: WAITING}, status
    assert conn.referral_factory.writes == []
    assert conn.ledger.get_push(code).job_status == "Hold"

    conn.servicetitan.jobs[9001]["jobStatus"] = "Completed"
    assert outcomes(qualify(conn)) == {code: QUALIFIED}
    assert conn.referral_factory.writes == [(True, 1001)]
    assert conn.ledger.get_push(code).final
    assert qualify(conn).decisions == []


def test_job_completed_without_reaching_a_hold_target_is_closed(conn):
    set_rule(conn, "job_status", job_status="Hold")
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Completed"}, status="Converted")
    assert outcomes(qualify(conn)) == {code: CLOSED}
    assert conn.ledger.get_push(code).qualification == "not_qualified"


@pytest.mark.parametrize(
    ("status", "completed_on", "target", "reached"),
    [
        ("Completed", None, "Completed", True),
        ("InProgress", None, "Completed", False),
        ("Completed", None, "Dispatched", True),  # a completed job went through dispatch
        ("Dispatched", None, "InProgress", False),
        ("Hold", None, "Dispatched", False),
        ("Hold", None, "Hold", True),
        ("Completed", None, "Hold", False),
        ("Canceled", None, "Scheduled", False),
        ("Canceled", None, "Canceled", True),
        ("Dispatched", datetime(2025, 1, 1, tzinfo=UTC), "Completed", True),  # completedOn is durable
        ("Canceled", datetime(2025, 1, 1, tzinfo=UTC), "Completed", False),
        ("SomethingNew", None, "Completed", False),
    ],
)
def test_status_reached(status, completed_on, target, reached):
    assert status_reached(Job(id=1, job_status=status, completed_on=completed_on), target) is reached


# -- unqualify_on ----------------------------------------------------------------------------------------


def test_canceled_job_unqualifies_when_job_canceled_is_watched(conn):
    set_rule(conn, "job_created", unqualify_on=["job_canceled"])
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")

    assert outcomes(qualify(conn)) == {code: QUALIFIED}
    assert not conn.ledger.get_push(code).final, "stays open for a cancellation until the job is Completed"
    assert outcomes(qualify(conn)) == {code: WAITING}

    conn.servicetitan.jobs[9001]["jobStatus"] = "Canceled"
    assert outcomes(qualify(conn)) == {code: UNQUALIFIED}
    assert conn.referral_factory.writes == [(True, 1001), (False, 1001)]
    push = conn.ledger.get_push(code)
    assert push.qualification == "unqualified" and push.final and push.job_status == "Canceled"
    assert [(q.action, q.state) for q in conn.ledger.qualifications_for(code)] == [("qualify", "done"), ("unqualify", "done")]
    assert qualify(conn).decisions == []


def test_completed_job_ends_the_watch_for_cancellation(conn):
    set_rule(conn, "job_created", unqualify_on=["job_canceled"])
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    qualify(conn)
    conn.servicetitan.jobs[9001]["jobStatus"] = "Completed"
    assert outcomes(qualify(conn)) == {code: FINISHED}
    push = conn.ledger.get_push(code)
    assert push.final and push.qualification == "qualified"
    assert conn.referral_factory.writes == [(True, 1001)]


def test_without_unqualify_on_a_canceled_job_keeps_the_qualification(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    qualify(conn)
    assert conn.ledger.get_push(code).final
    conn.servicetitan.jobs[9001]["jobStatus"] = "Canceled"
    assert qualify(conn).decisions == []
    assert conn.referral_factory.writes == [(True, 1001)]


def test_dismissed_booking_of_a_referral_qualified_elsewhere_is_unqualified(conn):
    set_rule(conn, "job_status", job_status="Completed", unqualify_on=["booking_dismissed"])
    code = pushed(conn, 1, booking_id=501)
    conn.referral_factory.users[1001]["qualified_at"] = "2025-05-05"
    # e.g. `serve` recorded Referral Factory's "lead qualified" before any job existed.
    intent = conn.ledger.record_qualification_intent(code, "qualify", rule="referral_factory", reason="webhook")
    conn.ledger.record_qualification_result(intent, state="done")

    assert outcomes(qualify(conn)) == {code: WAITING}
    conn.servicetitan.bookings[501]["status"] = "Dismissed"
    assert outcomes(qualify(conn)) == {code: UNQUALIFIED}
    assert conn.referral_factory.writes == [(False, 1001)]
    assert conn.ledger.get_push(code).final


# -- exactly once ----------------------------------------------------------------------------------------


def test_a_referral_already_qualified_in_referral_factory_is_recorded_not_sent(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    conn.referral_factory.users[1001]["qualified_at"] = "2025-05-05"

    assert outcomes(qualify(conn)) == {code: ALREADY}
    assert conn.referral_factory.writes == []
    assert conn.ledger.get_push(code).qualification == "qualified"
    assert [q.state for q in conn.ledger.qualifications_for(code)] == ["done"]


def test_an_intent_left_by_a_crash_after_the_write_is_closed_without_writing_again(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    # The crashed run: intent recorded, PUT applied in Referral Factory, result never recorded.
    crashed = conn.ledger.record_qualification_intent(code, "qualify", rule="job_created", reason="booking became job 9001")
    conn.referral_factory.users[1001]["qualified_at"] = "2025-05-05"

    assert outcomes(qualify(conn)) == {code: FINISHED}
    assert conn.referral_factory.writes == []
    assert [(q.id, q.state) for q in conn.ledger.qualifications_for(code)] == [(crashed, "done")]
    push = conn.ledger.get_push(code)
    assert push.qualification == "qualified" and push.final


def test_an_intent_left_by_a_crash_before_the_write_is_failed_and_the_write_made(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    crashed = conn.ledger.record_qualification_intent(code, "qualify", rule="job_created", reason="booking became job 9001")

    assert outcomes(qualify(conn)) == {code: QUALIFIED}
    assert conn.referral_factory.writes == [(True, 1001)]
    states = [(q.id == crashed, q.state) for q in conn.ledger.qualifications_for(code)]
    assert states == [(True, "failed"), (False, "done")]


def test_the_saved_user_id_is_preferred_then_the_code(conn):
    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted", rf_user_id=1001)
    pushed(conn, 2, booking_id=502, job={"id": 9002, "jobStatus": "Scheduled"}, status="Converted")
    qualify(conn)
    assert conn.referral_factory.lookups == [("id", 1001), ("code", "CODE2")]
    assert sorted(conn.referral_factory.writes) == [(True, 1001), (True, 1002)]


def test_a_deleted_referral_fails_once_and_is_not_retried(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted", user=False)

    report = qualify(conn)

    assert outcomes(report) == {code: FAILED} and report.failed == 1
    decision = report.decisions[0]
    assert decision.final and "no referral" in decision.error["message"]
    assert conn.ledger.last_run("qualify").outcome == "partial"
    assert [q.state for q in conn.ledger.qualifications_for(code)] == ["failed"]
    assert qualify(conn).decisions == []


def test_a_referrer_is_never_qualified(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted", user=False)
    conn.referral_factory.add(1001, code, "lead1@example.com", type="person_referring")
    report = qualify(conn)
    assert outcomes(report) == {code: FAILED}
    assert "not a referred lead" in report.decisions[0].error["message"]
    assert conn.referral_factory.writes == []


def test_a_rejected_write_is_recorded_and_retried_next_run(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    conn.referral_factory.fail_write = ReferralFactoryApiError(
        "Referral Factory answered HTTP 400", status=400, title="Bad request", method="PUT", path="/users/qualification"
    )
    report = qualify(conn)
    assert outcomes(report) == {code: FAILED} and not report.decisions[0].final
    [attempt] = conn.ledger.qualifications_for(code)
    assert attempt.state == "failed" and attempt.error["status"] == 400 and attempt.error["path"] == "/users/qualification"

    conn.referral_factory.fail_write = None
    assert outcomes(qualify(conn)) == {code: QUALIFIED}
    assert conn.ledger.get_push(code).qualification == "qualified"


def test_a_temporary_failure_stops_the_run_and_leaves_the_intent_for_the_next(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    conn.referral_factory.fail_write = TemporaryError("Referral Factory unavailable")
    with pytest.raises(TemporaryError):
        qualify(conn)
    assert [q.state for q in conn.ledger.qualifications_for(code)] == ["intent"]
    assert conn.ledger.last_run("qualify").outcome == "failed"

    # The PUT did land after all: the next run reads it back and closes the intent.
    conn.referral_factory.fail_write = None
    conn.referral_factory.users[1001]["qualified_at"] = "2025-05-05"
    assert outcomes(qualify(conn)) == {code: FINISHED}
    assert [q.state for q in conn.ledger.qualifications_for(code)] == ["done"]
    assert conn.referral_factory.writes == []


def test_an_auth_error_stops_the_run(conn):
    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    conn.referral_factory.fail_write = AuthError("key revoked")
    with pytest.raises(AuthError):
        qualify(conn)


# -- what ServiceTitan no longer returns, dry runs, progress ------------------------------------------------


def test_missing_booking_or_job_stays_open(conn):
    gone = pushed(conn, 1, booking_id=501)
    del conn.servicetitan.bookings[501]
    jobless = pushed(conn, 2, booking_id=502, job={"id": 9002, "jobStatus": "Scheduled"}, status="Converted")
    del conn.servicetitan.jobs[9002]

    report = qualify(conn)

    assert outcomes(report) == {gone: MISSING, jobless: MISSING}
    assert conn.referral_factory.writes == []
    assert len(conn.ledger.open_bookings()) == 2
    assert conn.ledger.get_push(jobless).job_id == 9002


def test_dry_run_reads_servicetitan_and_writes_nothing(conn):
    ready = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    dismissed = pushed(conn, 2, booking_id=502, status="Dismissed")
    before = conn.ledger.get_push(ready)

    report = qualify(conn, dry_run=True)

    assert outcomes(report) == {ready: WOULD_QUALIFY, dismissed: WOULD_CLOSE}
    assert report.counts()["qualified"] == 1 and report.counts()["closed"] == 1
    assert conn.referral_factory.writes == [] and conn.referral_factory.lookups == []
    assert conn.ledger.get_push(ready) == before
    assert conn.ledger.qualifications_for(ready) == []
    assert conn.ledger.last_run("qualify") is None
    assert len(conn.ledger.open_bookings()) == 2


def test_progress_is_reported_per_booking(conn):
    for n in range(3):
        pushed(conn, n, booking_id=500 + n)

    class Recorder:
        def __init__(self):
            self.total, self.done = None, 0

        def set_total(self, total):
            self.total = total

        def advance(self, n=1):
            self.done += n

    progress = Recorder()
    qualify(conn, progress=progress)
    assert (progress.total, progress.done) == (3, 3)


def test_report_to_dict_is_json_ready(conn):
    import json

    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    data = json.loads(json.dumps(qualify(conn).to_dict()))
    assert data["rule"] == "job_created" and data["counts"]["qualified"] == 1
    assert data["decisions"][0]["outcome"] == "qualified" and data["decisions"][0]["job_id"] == 9001


def test_a_wrong_booking_provider_is_reported_as_such(conn):
    from stsync.errors import ServiceTitanApiError

    pushed(conn, 1, booking_id=501)
    checked = []

    def not_found(bp, ids):
        raise ServiceTitanApiError("Not Found", status=404, method="GET", path=f"/booking-provider/{bp}/bookings")

    def check_booking_provider(bp):
        checked.append(bp)
        raise AuthError("Booking Provider Value is incorrect: ServiceTitan answered HTTP 404")

    conn.servicetitan.get_bookings = not_found
    conn.servicetitan.check_booking_provider = check_booking_provider
    with pytest.raises(AuthError, match="Booking Provider Value is incorrect"):
        qualify(conn)
    assert checked == [BP]
    assert conn.ledger.last_run("qualify").outcome == "failed"


def test_an_interrupted_qualify_that_landed_is_done_before_the_cancellation_unqualifies(conn):
    set_rule(conn, "job_created", unqualify_on=["job_canceled"])
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Canceled"}, status="Converted")
    # A run crashed after its PUT qualified=true landed; the job was canceled since.
    crashed = conn.ledger.record_qualification_intent(code, "qualify", rule="job_created", reason="booking became job 9001")
    conn.referral_factory.users[1001]["qualified_at"] = "2025-05-05"
    assert conn.ledger.get_push(code).qualification is None  # the result was never recorded

    assert outcomes(qualify(conn)) == {code: UNQUALIFIED}
    assert conn.referral_factory.writes == [(False, 1001)]
    history = [(q.id == crashed, q.action, q.state) for q in conn.ledger.qualifications_for(code)]
    assert history == [(True, "qualify", "done"), (False, "unqualify", "done")]
    assert conn.ledger.get_push(code).qualification == "unqualified"


def test_a_failed_read_back_leaves_an_unfinished_intent_open(conn):
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted", rf_user_id=1001)
    crashed = conn.ledger.record_qualification_intent(code, "qualify", rule="job_created", reason="x")

    def unavailable(identifier):
        raise ReferralFactoryApiError("Referral Factory answered HTTP 400", status=400, method="GET", path="/users/1001")

    conn.referral_factory.get_user = unavailable
    report = qualify(conn)
    assert outcomes(report) == {code: FAILED} and not report.decisions[0].final
    assert report.decisions[0].error["status"] == 400
    assert [(q.id, q.state) for q in conn.ledger.qualifications_for(code)] == [(crashed, "intent")]
    assert conn.referral_factory.writes == []
