"""services.qualify: the rule applied to open bookings, exactly once, with a real ledger.

The two API clients are replaced by small fakes holding ServiceTitan's bookings and jobs and
Referral Factory's users; every call they receive is recorded, so a test can say "no
qualification request was sent" or "final bookings were not read again".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from connection_fixtures import BOOKING_PROVIDER as BP  # tests/support
from connection_fixtures import CAMPAIGN
from fakes import FakeReferralFactoryUsers  # tests/support

from stsync.connection import Connection
from stsync.errors import AuthError, ReferralFactoryApiError, ServiceTitanApiError, TemporaryError
from stsync.services.qualify import (
    ALREADY,
    CLOSED,
    FAILED,
    FINISHED,
    HELD,
    MISSING,
    QUALIFIED,
    UNQUALIFIED,
    WAITING,
    WOULD_CLOSE,
    WOULD_QUALIFY,
    qualify,
    status_reached,
)
from stsync.servicetitan.models import Booking, ExportPage, Job, JobHistory, JobHistoryEntry
from stsync.storage.config import Qualification, default_config
from stsync.storage.ledger import iso_utc


class FakeServiceTitan:
    """ServiceTitan's bookings, jobs and job histories as qualify's reads see them.

    Tests change ``bookings``, ``jobs`` and ``history`` in place; a record whose content
    changed gets a new ``modifiedOn`` the next time anything is read (6 minutes after the
    previous change: past the 5-minute overlap), as a change in ServiceTitan would, and comes
    back in the incremental reads after it. Every read is recorded in ``calls``.
    """

    page_size = 200
    STEP_MS = 6 * 60_000

    def __init__(self) -> None:
        self.bookings: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.history: dict[int, list[tuple[str, datetime]]] = {}
        self.calls: list[tuple[str, object]] = []
        self.booking_reads: list[list[int]] = []
        self.job_reads: list[list[int]] = []
        self.history_refused = False
        self._versions: dict[tuple[str, int], tuple[str, int]] = {}
        self._ms = int((datetime.now(UTC) - timedelta(hours=2)).timestamp() * 1000)

    # -- what changed, and when -------------------------------------------------------------
    def _sweep(self) -> None:
        for kind, records in (("booking", self.bookings), ("job", self.jobs), ("history", self.history)):
            for record_id, record in records.items():
                snapshot = repr(sorted(record.items()) if isinstance(record, dict) else record)
                old = self._versions.get((kind, record_id))
                if old is None or old[0] != snapshot:
                    self._ms += self.STEP_MS
                    self._versions[(kind, record_id)] = (snapshot, self._ms)

    def _modified(self, kind: str, record_id: int) -> int:
        return self._versions[(kind, record_id)][1]

    @staticmethod
    def _at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    def _after(self, start: str) -> int:
        if start.startswith("T"):
            return int(start[1:])
        return int(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp() * 1000) - 1

    def _booking(self, booking_id: int) -> Booking:
        return Booking(id=booking_id, modified_on=self._at(self._modified("booking", booking_id)), **self.bookings[booking_id])

    def _job(self, job_id: int) -> Job:
        booking_id = next((b for b, data in self.bookings.items() if data.get("jobId") == job_id), None)
        return Job(id=job_id, booking_id=booking_id, modified_on=self._at(self._modified("job", job_id)), **self.jobs[job_id])

    # -- the reads ------------------------------------------------------------------------------
    def list_bookings(self, bp, *, modified_on_or_after=None, sort=None, **filters):
        assert bp == BP and not filters
        self._sweep()
        self.calls.append(("bookings", "delta" if modified_on_or_after is not None else "all"))
        since = int(modified_on_or_after.timestamp() * 1000) if modified_on_or_after is not None else None
        # Not in id order: the reads must not trust the order of a page.
        for booking_id in sorted(self.bookings, reverse=True):
            if since is None or self._modified("booking", booking_id) >= since:
                yield self._booking(booking_id)

    def export_jobs(self, start):
        self._sweep()
        self.calls.append(("export_jobs", start))
        after = self._after(start)
        rows = [self._job(i) for i in self.jobs if self._modified("job", i) > after]
        yield ExportPage[Job](data=rows, continue_from=f"T{self._ms}", has_more=False)

    def export_job_history(self, start):
        self._sweep()
        self.calls.append(("export_history", start))
        if self.history_refused:
            raise AuthError("ServiceTitan refused access to tenant 1234567 (GET /export/job-history, HTTP 403)")
        after = self._after(start)
        rows = [self._history(i) for i in self.history if self._modified("history", i) > after]
        yield ExportPage[JobHistory](data=rows, continue_from=f"T{self._ms}", has_more=False)

    def _history(self, job_id: int) -> JobHistory:
        entries = [JobHistoryEntry(id=n, event_type=status, date=at) for n, (status, at) in enumerate(self.history[job_id])]
        return JobHistory(job_id=job_id, history=entries)

    def get_jobs(self, ids):
        ids = list(ids)
        assert 0 < len(ids) <= 50 or len(ids) > 50, "batching is the client's"
        self._sweep()
        self.calls.append(("jobs", len(ids)))
        for start in range(0, len(ids), 50):
            self.job_reads.append(ids[start : start + 50])
        return [self._job(i) for i in ids if i in self.jobs]

    def get_job_history(self, job_id):
        self.calls.append(("job_history", job_id))
        return self._history(job_id) if job_id in self.history else JobHistory(job_id=job_id)

    def feeds(self) -> list[str]:
        """The kinds of read made since the last ``calls.clear()``."""
        return [kind for kind, _ in self.calls]


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

    # Second run: nothing sent again, the final booking is not decided again, and only what
    # changed is read: the bookings by watermark and the two feeds, no job by id.
    conn.servicetitan.calls.clear()
    again = qualify(conn)
    assert conn.referral_factory.writes == [(True, 1001)]
    assert outcomes(again) == {waiting: WAITING}
    assert conn.servicetitan.feeds() == ["bookings", "export_history", "export_jobs"]
    assert conn.servicetitan.calls[0] == ("bookings", "delta")
    assert not again.reads.full


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


def test_the_first_run_reads_everything_then_only_what_changed(conn):
    for n in range(120):
        pushed(conn, n, booking_id=10_000 + n, job={"id": 20_000 + n, "jobStatus": "InProgress"}, status="Converted")
    set_rule(conn, "job_status", job_status="Completed")

    first = qualify(conn)

    assert first.count(WAITING) == 120
    assert first.reads.full and "first run" in first.reads.full_reason
    assert conn.servicetitan.calls[0] == ("bookings", "all")
    assert [len(batch) for batch in conn.servicetitan.job_reads] == [50, 50, 20]

    # Nothing changed: three reads, whatever the number of open bookings; no job by id.
    conn.servicetitan.calls.clear()
    conn.servicetitan.job_reads.clear()
    second = qualify(conn)
    assert second.count(WAITING) == 120 and not second.reads.full
    assert conn.servicetitan.feeds() == ["bookings", "export_history", "export_jobs"]
    assert conn.servicetitan.job_reads == []

    # One job completes: the jobs feed brings it; nothing is read by id.
    conn.servicetitan.jobs[20_007]["jobStatus"] = "Completed"
    conn.servicetitan.calls.clear()
    third = qualify(conn)
    assert outcomes(third)["CODE7"] == QUALIFIED and third.count(WAITING) == 119
    assert conn.servicetitan.job_reads == []
    assert conn.ledger.jobs_for([20_007])[20_007].status == "Completed"


def test_a_booking_converted_between_runs_has_its_job_read_by_id_once(conn):
    code = pushed(conn, 1, booking_id=501)
    qualify(conn)
    conn.servicetitan.bookings[501].update(status="Converted", jobId=77)
    conn.servicetitan.jobs[77] = {"jobStatus": "Scheduled"}
    # The job changed before the feed's position (as a job the feed brought before its booking
    # was known): only the booking's jobId says it exists.
    conn.servicetitan._sweep()
    conn.ledger.set_position("servicetitan.export.jobs", f"T{conn.servicetitan._ms}")
    conn.servicetitan.calls.clear()

    report = qualify(conn)

    assert outcomes(report) == {code: QUALIFIED}
    assert ("jobs", 1) in conn.servicetitan.calls
    conn.servicetitan.calls.clear()
    qualify(conn)
    assert "jobs" not in conn.servicetitan.feeds()


def test_full_reads_again_when_asked_and_when_the_last_full_read_is_old(conn):
    from stsync.tracking.reads import FULL_READ_AT

    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "InProgress"}, status="Converted")
    set_rule(conn, "job_status", job_status="Completed")
    qualify(conn)

    conn.servicetitan.calls.clear()
    asked = qualify(conn, full=True)
    assert asked.reads.full and asked.reads.full_reason == "asked for (--full)"
    assert conn.servicetitan.calls[0] == ("bookings", "all") and ("jobs", 1) in conn.servicetitan.calls

    conn.ledger.put(FULL_READ_AT, "2020-01-01T00:00:00.000Z")
    conn.servicetitan.calls.clear()
    old = qualify(conn)
    assert old.reads.full and "days ago" in old.reads.full_reason
    assert conn.servicetitan.calls[0] == ("bookings", "all")
    conn.servicetitan.calls.clear()
    assert not qualify(conn).reads.full, "the full read was recorded"


def test_the_watermark_is_the_largest_modified_on_read_not_the_last_row(conn):
    from stsync.storage.ledger import parse_utc
    from stsync.tracking.reads import BOOKINGS_POSITION

    for n in range(5):
        pushed(conn, n, booking_id=500 + n)
    qualify(conn)
    newest = max(conn.servicetitan._modified("booking", b) for b in conn.servicetitan.bookings)
    watermark = parse_utc(conn.ledger.get_position(BOOKINGS_POSITION))
    # The fake serves the rows newest id first and the newest change is not the last row.
    assert watermark <= FakeServiceTitan._at(newest)
    assert FakeServiceTitan._at(newest) - watermark < timedelta(seconds=30)


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

    conn.servicetitan.list_bookings = lambda bp, **params: not_found(bp, None)
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


# -- statuses passed through between two runs (job history) ------------------------------------


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def test_a_job_that_passed_through_completed_between_two_runs_is_qualified(conn):
    set_rule(conn, "job_status", job_status="Completed")
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "InProgress"}, status="Converted")
    conn.servicetitan.history[9001] = [("Scheduled", days_ago(2)), ("InProgress", days_ago(1))]
    assert outcomes(qualify(conn)) == {code: WAITING}

    # Completed for a moment, then back to work; ServiceTitan kept no completedOn here, only
    # the history says it.
    conn.servicetitan.history[9001] += [("Completed", days_ago(0.5)), ("InProgress", days_ago(0.4))]
    report = qualify(conn)

    assert outcomes(report) == {code: QUALIFIED}
    assert "passed through Completed" in report.decisions[0].reason
    assert conn.referral_factory.writes == [(True, 1001)]


def test_a_brief_hold_is_seen_through_the_history_and_missed_without_it(conn):
    set_rule(conn, "job_status", job_status="Hold")
    seen = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    qualify(conn)
    conn.servicetitan.history[9001] = [("Scheduled", days_ago(1)), ("Hold", days_ago(0.5)), ("Scheduled", days_ago(0.4))]
    assert outcomes(qualify(conn)) == {seen: QUALIFIED}


def test_without_the_history_scope_the_run_goes_on_and_says_what_it_misses(conn):
    set_rule(conn, "job_status", job_status="Completed")
    conn.servicetitan.history_refused = True
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "InProgress"}, status="Converted")
    qualify(conn)
    conn.servicetitan.jobs[9001]["completedOn"] = days_ago(0.2)  # completedOn is durable

    report = qualify(conn)

    assert outcomes(report) == {code: QUALIFIED}
    assert not report.reads.history_available
    assert any("tn.jpm.jobhistory:r" in note for note in report.reads.notes)


def test_a_refused_feed_position_restarts_the_feed_and_reads_the_jobs_again(conn):
    set_rule(conn, "job_status", job_status="Completed")
    pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled"}, status="Converted")
    qualify(conn)
    conn.servicetitan.calls.clear()
    original = conn.servicetitan.export_jobs

    def refuse_tokens(start):
        if start.startswith("T"):
            raise ServiceTitanApiError("invalid token", status=400, method="GET", path="/export/jobs")
        yield from original(start)

    conn.servicetitan.export_jobs = refuse_tokens
    report = qualify(conn)
    assert report.reads.full and "refused" in report.reads.full_reason
    assert any("read again from" in note for note in report.reads.notes)
    assert ("jobs", 1) in conn.servicetitan.calls, "the open jobs are read again by id"
    assert conn.ledger.get_position("servicetitan.export.jobs").startswith("T"), "a new position is kept"


# -- hold_days ----------------------------------------------------------------------------------------


def set_hold(conn, days: int, rule: str = "job_status", **extra) -> None:
    set_rule(conn, rule, **({"job_status": "Completed"} if rule == "job_status" else {}), **extra)
    conn.config.leads.qualification.hold_days = days


def test_a_completed_job_is_held_then_qualified_when_its_hold_has_passed(conn):
    set_hold(conn, 7)
    completed = days_ago(3)
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Completed", "completedOn": completed,
                                                 "createdOn": days_ago(5)}, status="Converted")
    conn.servicetitan.history[9001] = [("Scheduled", days_ago(5)), ("Completed", completed)]

    report = qualify(conn)

    [decision] = report.decisions
    assert decision.outcome == HELD and not decision.final
    until = completed + timedelta(days=7)
    assert decision.held_until == iso_utc(until)
    assert report.counts()["held"] == 1 and [d.external_id for d in report.held] == [code]
    assert conn.ledger.get_push(code).held_until == iso_utc(until)
    assert conn.referral_factory.writes == []

    # Five days later (the job's dates moved back by five days: what age_job does): a held job
    # is read again by id, its history again because its dates moved, and it qualifies.
    conn.servicetitan.jobs[9001].update(completedOn=days_ago(8), createdOn=days_ago(10))
    conn.servicetitan.history[9001] = [("Scheduled", days_ago(10)), ("Completed", days_ago(8))]
    conn.servicetitan._sweep()
    conn.ledger.set_position("servicetitan.export.jobs", f"T{conn.servicetitan._ms}")
    conn.ledger.set_position("servicetitan.export.job_history", f"T{conn.servicetitan._ms}")
    conn.servicetitan.calls.clear()

    again = qualify(conn)

    assert outcomes(again) == {code: QUALIFIED}
    assert ("jobs", 1) in conn.servicetitan.calls and ("job_history", 9001) in conn.servicetitan.calls
    assert conn.ledger.get_push(code).held_until is None
    assert conn.referral_factory.writes == [(True, 1001)]


def test_a_job_canceled_inside_the_hold_is_closed_and_never_qualified(conn):
    set_hold(conn, 7)
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Completed", "completedOn": days_ago(2)},
                  status="Converted")
    conn.servicetitan.history[9001] = [("Completed", days_ago(2))]
    assert outcomes(qualify(conn)) == {code: HELD}

    # Canceled, and the cancellation removed again before the next run: the history says it.
    conn.servicetitan.history[9001] += [("Canceled", days_ago(1)), ("Completed", days_ago(0.5))]
    report = qualify(conn)

    assert outcomes(report) == {code: CLOSED}
    assert "inside the 7-day hold" in report.decisions[0].reason
    push = conn.ledger.get_push(code)
    assert push.final and push.qualification == "not_qualified" and push.held_until is None
    conn.servicetitan.jobs[9001]["completedOn"] = days_ago(30)
    assert qualify(conn).decisions == [] and conn.referral_factory.writes == []


def test_leaving_the_status_backwards_restarts_the_hold(conn):
    set_hold(conn, 7)
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "InProgress", "completedOn": days_ago(10)},
                  status="Converted")
    conn.servicetitan.history[9001] = [("Completed", days_ago(10)), ("InProgress", days_ago(9))]
    report = qualify(conn)
    assert outcomes(report) == {code: WAITING} and "hold starts again" in report.decisions[0].reason

    conn.servicetitan.jobs[9001]["jobStatus"] = "Completed"
    conn.servicetitan.history[9001] += [("Completed", days_ago(1))]
    held = qualify(conn)
    assert outcomes(held) == {code: HELD}
    assert held.decisions[0].held_until == iso_utc(conn.servicetitan.history[9001][-1][1] + timedelta(days=7))


def test_job_created_with_a_hold_counts_from_the_job_creation(conn):
    set_hold(conn, 3, rule="job_created")
    old = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Scheduled", "createdOn": days_ago(4)},
                 status="Converted")
    new = pushed(conn, 2, booking_id=502, job={"id": 9002, "jobStatus": "Scheduled", "createdOn": days_ago(1)},
                 status="Converted")
    report = qualify(conn)
    assert outcomes(report) == {old: QUALIFIED, new: HELD}


def test_a_dry_run_shows_the_hold_and_stores_none_of_it(conn):
    set_hold(conn, 7)
    code = pushed(conn, 1, booking_id=501, job={"id": 9001, "jobStatus": "Completed", "completedOn": days_ago(1)},
                  status="Converted")
    report = qualify(conn, dry_run=True)
    assert outcomes(report) == {code: HELD} and report.decisions[0].held_until
    assert conn.ledger.get_push(code).held_until is None


def test_the_watermark_moves_on_through_a_quiet_period(conn, monkeypatch):
    from stsync.tracking import reads

    for n in range(3):
        pushed(conn, n, booking_id=500 + n)
    qualify(conn)
    # Right after, the last change is inside the 5-minute overlap: read again (and ignored).
    assert qualify(conn).reads.bookings_read == 1
    # Ten quiet minutes later on our clock: ServiceTitan's has moved as much; nothing is read.
    later = datetime.now(UTC) + timedelta(minutes=10)
    monkeypatch.setattr(reads, "_now", lambda: later)
    assert qualify(conn).reads.bookings_read == 0
    # A change after that is still read.
    conn.servicetitan.bookings[501]["status"] = "Dismissed"
    conn.servicetitan._ms = max(conn.servicetitan._ms, int(later.timestamp() * 1000))
    assert outcomes(qualify(conn))["CODE1"] == CLOSED
