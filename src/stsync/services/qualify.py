"""Qualification: pushed bookings → jobs → the referral qualified in Referral Factory.

``qualify(conn)`` walks the ledger's open bookings (``Ledger.open_bookings()``: pushed,
booked, not yet final), reads them back from ServiceTitan in batches of 50
(``get_bookings``), reads the jobs booked from them in batches of 50 (``get_jobs``), and
applies ``[leads.qualification]``:

- ``rule = "none"``: nothing at all (no ledger read, no request); the report says so.
- ``rule = "job_created"``: the referral qualifies once its booking has a ``jobId`` (and the
  job is not already Canceled).
- ``rule = "job_status"``: the referral qualifies once that job has *reached*
  ``job_status`` (``Completed`` by default). Polling sees only the current status, so
  "reached" is read generously: the status itself, or a later step of ServiceTitan's
  forward progression ``Scheduled → Dispatched → InProgress → Completed`` (a job seen
  Completed has been Dispatched), and for ``Completed`` also a ``completedOn`` date.
  ``Hold`` and ``Canceled`` match only themselves.

Only referred leads (``kind = "lead"``) are qualified; referrer bookings are never read.

**Exactly once.** Each qualification is an intent row in the ledger before
``PUT /users/qualification`` and a result row after it. An intent left open by a crash
between the PUT and its record is settled first, before anything is decided: the referral
is read back from Referral Factory (by its saved id, else its code, else its e-mail) and the
intent recorded as done if its write landed, failed if not. Before every write the referral
is read back too: one already in the wanted state (qualified by hand, or by Referral
Factory itself) is recorded as done without a write. A referral that no longer exists
(deleted), or that is not a referred lead, is recorded as failed and final: it is never
retried. A 404 proves a deletion only by the Referral Factory client's one rule
(``confirm_deleted``: the API's own JSON not-found while the campaign reads fine); any other
404 stops the run (exit 3 for a wrong ``api_url``, else 6) and nothing becomes final. Any
other refusal is recorded as failed and retried by the next run. A run-level failure
(``errors.stops_run``: credentials, a remote down past the retry budget) stops the run and
is raised; an intent it interrupts stays open, settled by the next run.

**What is final** (never read again — the cost of a run grows with the bookings still open,
not with history):

- a booking Dismissed without a job: final, ``not_qualified``;
- a job Canceled before the rule was met: final, ``not_qualified``;
- a job Completed without the rule being met (e.g. ``job_status = "Hold"``): final,
  ``not_qualified``;
- a qualified referral, as soon as nothing in ``unqualify_on`` can still happen to it:
  with ``unqualify_on`` empty that is at once; with ``"job_canceled"`` the booking stays open
  until its job is **Completed** (final, stays qualified) or **Canceled** (the referral goes
  back to pending, ``unqualified``, final); with ``"booking_dismissed"`` it stays open until
  the booking gets a job or is dismissed (a referral can be qualified before its booking
  became a job: by Referral Factory, by hand, or reported by ``serve``'s "lead qualified").

A cancellation that ServiceTitan later reverses (``remove-cancellation``) is not followed:
the booking is final by then; qualify that referral by hand in Referral Factory.

A booking ServiceTitan no longer returns, or a job it does not return, stays open and is
reported (``missing``). ``dry_run`` reads ServiceTitan and reports what would be done; it
writes nothing, to Referral Factory or to the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stsync.errors import NotFound, ServiceTitanApiError, StsyncError, stops_run
from stsync.logs import get_logger
from stsync.progress import NO_PROGRESS, Progress
from stsync.referralfactory.models import PERSON_INVITED
from stsync.storage.states import QualificationAction, QualificationState, QualificationValue, RunJob
from stsync.vocabulary import DEFAULT_JOB_STATUS, Kind, QualificationRule, UnqualifyEvent

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import User
    from stsync.servicetitan.models import Booking, Job
    from stsync.storage.ledger import Ledger, PushRecord

log = get_logger(__name__)

BATCH_SIZE = 50  # ServiceTitan's `ids` takes at most 50 (api/servicetitan.md §4)

# A job moves forward through these; one seen at a later step has passed the earlier ones.
JOB_PROGRESSION = ("Scheduled", "Dispatched", "InProgress", "Completed")
DISMISSED = "Dismissed"
CANCELED = "Canceled"
COMPLETED = "Completed"

# What happened to one open booking in this run.
QUALIFIED = "qualified"  # PUT qualified=true sent and answered
UNQUALIFIED = "unqualified"  # PUT qualified=false sent and answered
ALREADY = "already"  # Referral Factory already had the wanted state: recorded, nothing sent
CLOSED = "closed"  # final without qualification (dismissed, canceled, completed off-rule)
FINISHED = "finished"  # already qualified, now final (nothing left to watch)
WAITING = "waiting"  # still open: the rule is not met yet
MISSING = "missing"  # ServiceTitan did not return the booking or its job
FAILED = "failed"  # the Referral Factory write failed; the error is in the ledger
WOULD_QUALIFY = "would_qualify"  # dry run
WOULD_UNQUALIFY = "would_unqualify"  # dry run
WOULD_CLOSE = "would_close"  # dry run


@dataclass(frozen=True)
class BookingSeen:
    """What ServiceTitan says now about one open booking: every decision about it starts here."""

    external_id: str
    email: str | None
    booking_id: int | None
    booking_status: str | None
    job_id: int | None
    job_status: str | None

    def decision(self, outcome: str, reason: str, *, final: bool, error: dict | None = None) -> QualifyDecision:
        return QualifyDecision(**asdict(self), outcome=outcome, reason=reason, final=final, error=error)


@dataclass(frozen=True)
class QualifyDecision(BookingSeen):
    """One open booking: what ServiceTitan says now and what this run did about it."""

    outcome: str
    reason: str
    final: bool
    error: dict | None = None


@dataclass
class QualifyReport:
    rule: str
    dry_run: bool
    job_status: str | None = None
    unqualify_on: list[str] = field(default_factory=list)
    open_bookings: int = 0
    bookings_read: int = 0
    jobs_read: int = 0
    run_id: int | None = None
    decisions: list[QualifyDecision] = field(default_factory=list)

    def count(self, *outcomes: str) -> int:
        return sum(1 for decision in self.decisions if decision.outcome in outcomes)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def still_open(self) -> int:
        return sum(1 for decision in self.decisions if not decision.final)

    def counts(self) -> dict[str, int]:
        return {
            "open_bookings": self.open_bookings,
            "bookings_read": self.bookings_read,
            "jobs_read": self.jobs_read,
            "qualified": self.count(QUALIFIED, WOULD_QUALIFY),
            "unqualified": self.count(UNQUALIFIED, WOULD_UNQUALIFY),
            "already": self.count(ALREADY),
            "closed": self.count(CLOSED, WOULD_CLOSE),
            "finished": self.count(FINISHED),
            "waiting": self.count(WAITING),
            "missing": self.count(MISSING),
            "failed": self.failed,
            "still_open": self.still_open,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "job_status": self.job_status,
            "unqualify_on": list(self.unqualify_on),
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "counts": self.counts(),
            "decisions": [asdict(decision) for decision in self.decisions],
        }


@dataclass(frozen=True)
class QualificationSettings:
    rule: QualificationRule
    job_status: str | None
    unqualify_on: frozenset[UnqualifyEvent]

    @classmethod
    def from_config(cls, config: Any) -> QualificationSettings:
        # storage.config has validated the values (rule, job status, events) already.
        section = config.leads.qualification
        rule = QualificationRule(section.rule)
        job_status = (section.job_status or DEFAULT_JOB_STATUS) if rule == QualificationRule.JOB_STATUS else None
        events = frozenset(UnqualifyEvent(event) for event in section.unqualify_on or ())
        return cls(rule=rule, job_status=job_status, unqualify_on=events)


def status_reached(job: Job, target: str) -> bool:
    """Has ``job`` reached ``target``, as far as one look at its current state can tell?"""
    status = job.job_status
    if status == target:
        return True
    if target == COMPLETED and job.completed_on is not None and status != CANCELED:
        return True
    if status in JOB_PROGRESSION and target in JOB_PROGRESSION:
        return JOB_PROGRESSION.index(status) >= JOB_PROGRESSION.index(target)
    return False


def qualify(conn: Connection, *, dry_run: bool = False, progress: Progress = NO_PROGRESS) -> QualifyReport:
    """Apply the qualification rule to every open booking (see the module docstring)."""
    settings = QualificationSettings.from_config(conn.config)
    report = QualifyReport(
        rule=settings.rule,
        dry_run=dry_run,
        job_status=settings.job_status,
        unqualify_on=sorted(settings.unqualify_on),
    )
    if settings.rule == QualificationRule.NONE:
        return report
    run = _QualifyRun(conn, settings, report, dry_run=dry_run, progress=progress)
    run.execute()
    return report


class _QualifyRun:
    def __init__(
        self,
        conn: Connection,
        settings: QualificationSettings,
        report: QualifyReport,
        *,
        dry_run: bool,
        progress: Progress,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.report = report
        self.dry_run = dry_run
        self.progress = progress
        self.ledger: Ledger = conn.ledger

    def execute(self) -> None:
        open_pushes = [push for push in self.ledger.open_bookings() if push.kind == Kind.LEAD and push.booking_id]
        self.report.open_bookings = len(open_pushes)
        if not open_pushes:
            return
        self.progress.set_total(len(open_pushes))
        recording = (
            nullcontext()
            if self.dry_run
            else self.ledger.recorded_run(
                RunJob.QUALIFY, "qualify", counts=self.report.counts, failed=lambda: bool(self.report.failed)
            )
        )
        with recording as run_id:
            self.report.run_id = run_id
            self._qualify_all(open_pushes)

    # -- reading ServiceTitan --------------------------------------------------------------
    def _qualify_all(self, pushes: list[PushRecord]) -> None:
        st = self.conn.servicetitan
        bp = self.conn.booking_provider
        # A booking with a job never changes its jobId: only bookings without one are re-read.
        to_read = [push.booking_id for push in pushes if push.job_id is None and push.booking_id is not None]
        bookings: dict[int, Booking] = {}
        for batch in _batches(to_read):
            try:
                found = st.get_bookings(bp, batch)
            except ServiceTitanApiError as exc:
                if exc.status == 404:
                    # The provider's bookings path itself is unknown: say "Booking Provider
                    # Value is incorrect" (AuthError, with where to find it) if that is why.
                    st.check_booking_provider(bp)
                raise
            bookings.update((booking.id, booking) for booking in found)
        self.report.bookings_read = len(bookings)

        def booking_of(push: PushRecord) -> Booking | None:
            return bookings.get(push.booking_id) if push.booking_id is not None else None

        job_ids: dict[str, int] = {}
        for push in pushes:
            booking = booking_of(push)
            job_id = booking.job_id if booking is not None and booking.job_id is not None else push.job_id
            if job_id is not None:
                job_ids[push.external_id] = job_id
        jobs: dict[int, Job] = {}
        for batch in _batches(job_ids.values()):
            jobs.update((job.id, job) for job in st.get_jobs(batch))
        self.report.jobs_read = len(jobs)

        for push in pushes:
            booking = booking_of(push)
            job_id = job_ids.get(push.external_id)
            job = jobs.get(job_id) if job_id is not None else None
            decision = self._decide_and_apply(push, booking, job_id, job)
            self.report.decisions.append(decision)
            log.info(
                "qualify %s booking=%s job=%s status=%s: %s (%s)",
                push.external_id,
                push.booking_id,
                decision.job_id,
                decision.job_status,
                decision.outcome,
                decision.reason,
            )
            self.progress.advance(1)

    # -- deciding --------------------------------------------------------------------------
    def _decide_and_apply(
        self, push: PushRecord, booking: Booking | None, job_id: int | None, job: Job | None
    ) -> QualifyDecision:
        booking_status = booking.status if booking is not None else push.booking_status
        job_status = job.job_status if job is not None else None
        seen = BookingSeen(
            external_id=push.external_id,
            email=push.email,
            booking_id=push.booking_id,
            booking_status=booking_status,
            job_id=job_id,
            job_status=job_status,
        )
        if push.job_id is None and booking is None:
            return seen.decision(outcome=MISSING, reason="ServiceTitan did not return the booking", final=False)
        if not self.dry_run:
            try:
                push = self._settle_unfinished(push)
            except StsyncError as exc:
                if stops_run(exc):
                    raise
                # Not read back: the intents stay open for the next run to settle.
                return seen.decision(
                    outcome=FAILED, reason="an interrupted run's write could not be checked",
                    final=False, error=exc.to_dict(),
                )
        if job_id is not None and job is None:
            self._track(push, booking_status=booking_status, job_id=job_id)
            return seen.decision(outcome=MISSING, reason=f"ServiceTitan did not return job {job_id}", final=False)

        dismissed = job_id is None and booking_status == DISMISSED
        canceled = job_status == CANCELED
        terminal_job = job_status in (CANCELED, COMPLETED)
        qualified = push.qualification == QualificationValue.QUALIFIED
        watch_cancel = UnqualifyEvent.JOB_CANCELED in self.settings.unqualify_on
        watch_dismiss = UnqualifyEvent.BOOKING_DISMISSED in self.settings.unqualify_on

        def final_once_qualified() -> bool:
            if watch_cancel and not terminal_job:
                return False
            if watch_dismiss and job_id is None and not dismissed:
                return False
            return True

        if not qualified:
            met, reason = self._rule_met(job_id, job)
            if met:
                return self._write(push, seen, QualificationAction.QUALIFY, reason, final_after=final_once_qualified)
            if dismissed or terminal_job:
                why = (
                    "booking dismissed"
                    if dismissed
                    else f"job {job_id} {job_status.lower() if job_status else ''} before the rule was met"
                )
                if self.dry_run:
                    return seen.decision(outcome=WOULD_CLOSE, reason=why, final=True)
                self._track(
                    push,
                    booking_status=booking_status,
                    job_id=job_id,
                    job_status=job_status,
                    final=True,
                    qualification=QualificationValue.NOT_QUALIFIED,
                )
                return seen.decision(outcome=CLOSED, reason=why, final=True)
            self._track(push, booking_status=booking_status, job_id=job_id, job_status=job_status)
            return seen.decision(outcome=WAITING, reason=reason, final=False)

        # Qualified already: only a cancellation or a dismissal under unqualify_on matters.
        if canceled and watch_cancel:
            return self._write(push, seen, QualificationAction.UNQUALIFY, f"job {job_id} canceled", final_after=lambda: True)
        if dismissed and watch_dismiss:
            return self._write(push, seen, QualificationAction.UNQUALIFY, "booking dismissed", final_after=lambda: True)
        final = final_once_qualified()
        self._track(push, booking_status=booking_status, job_id=job_id, job_status=job_status, final=final or None)
        if final:
            return seen.decision(outcome=FINISHED, reason="qualified; nothing left to watch", final=True)
        watching = " and ".join(sorted(self.settings.unqualify_on))
        return seen.decision(outcome=WAITING, reason=f"qualified; watching for {watching}", final=False)

    def _rule_met(self, job_id: int | None, job: Job | None) -> tuple[bool, str]:
        if job_id is None or job is None:
            return False, "no job yet"
        if job.job_status == CANCELED and self.settings.job_status != CANCELED:
            return False, f"job {job_id} canceled"
        if self.settings.rule == QualificationRule.JOB_CREATED:
            return True, f"booking became job {job_id}"
        target = self.settings.job_status or DEFAULT_JOB_STATUS
        if status_reached(job, target):
            return True, f"job {job_id} reached {target} (status {job.job_status})"
        return False, f"job {job_id} is {job.job_status}, waiting for {target}"

    # -- writing Referral Factory ----------------------------------------------------------
    def _write(
        self, push: PushRecord, seen: BookingSeen, action: QualificationAction, reason: str, *, final_after
    ) -> QualifyDecision:
        wanted = action == QualificationAction.QUALIFY
        if self.dry_run:
            outcome = WOULD_QUALIFY if wanted else WOULD_UNQUALIFY
            return seen.decision(outcome=outcome, reason=reason, final=not wanted or final_after())
        self._track(push, booking_status=seen.booking_status, job_id=seen.job_id, job_status=seen.job_status)
        rule = self.settings.rule
        try:
            user = self._find_referral(push)
        except StsyncError as exc:
            if stops_run(exc):
                raise
            return self._failed(push, seen, action, reason, exc.to_dict(), final=False)
        if user is None:
            error = {"message": f"Referral Factory has no referral for {_describe(push)} (deleted?)"}
            return self._failed(push, seen, action, reason, error, final=True)
        if user.type is not None and user.type != PERSON_INVITED:
            error = {"message": f"Referral Factory user {user.id} is a {user.type}, not a referred lead"}
            return self._failed(push, seen, action, reason, error, final=True)

        if (user.qualified_at is not None) == wanted:
            # Already in the wanted state: someone else (Referral Factory, a person) did it.
            # Record it; send nothing.
            already = "already qualified" if wanted else "already pending"
            intent_id = self.ledger.record_qualification_intent(
                push.external_id, action, rule=rule, reason=f"{reason}; {already} in Referral Factory"
            )
            self.ledger.record_qualification_result(intent_id, state=QualificationState.DONE)
            final = final_after()
            self._track(push, final=final or None)
            return seen.decision(outcome=ALREADY, reason=reason, final=final)

        intent_id = self.ledger.record_qualification_intent(push.external_id, action, rule=rule, reason=reason)
        try:
            self.conn.referral_factory.set_qualification(wanted, id=user.id)
        except StsyncError as exc:
            if stops_run(exc):
                # E.g. Referral Factory down: the PUT may or may not have landed. The intent
                # stays open, and the next run reads the referral back before writing again.
                raise
            if isinstance(exc, NotFound):
                # Final only if the 404 proves a deletion; if not, this raises and the intent
                # stays open (the client's one 404 rule).
                self.conn.referral_factory.confirm_deleted(exc, campaign_id=self.conn.campaign_id)
            error = exc.to_dict()
            self.ledger.record_qualification_result(intent_id, state=QualificationState.FAILED, error=error)
            final = isinstance(exc, NotFound)  # the lead was deleted: nothing to retry
            if final:
                self._track(push, final=True)
            return seen.decision(outcome=FAILED, reason=reason, final=final, error=error)
        self.ledger.record_qualification_result(intent_id, state=QualificationState.DONE)
        final = final_after()
        self._track(push, final=final or None)
        return seen.decision(outcome=QUALIFIED if wanted else UNQUALIFIED, reason=reason, final=final)

    def _failed(
        self, push: PushRecord, seen: BookingSeen, action: QualificationAction, reason: str, error: dict, *, final: bool
    ) -> QualifyDecision:
        intent_id = self.ledger.record_qualification_intent(push.external_id, action, rule=self.settings.rule, reason=reason)
        self.ledger.record_qualification_result(intent_id, state=QualificationState.FAILED, error=error)
        if final:
            self._track(push, final=True)
        return seen.decision(outcome=FAILED, reason=reason, final=final, error=error)

    def _settle_unfinished(self, push: PushRecord) -> PushRecord:
        """Close the intents a crashed run left open (a PUT whose answer was never recorded).

        The referral's state, read back from Referral Factory, says whether each landed. Done
        before deciding anything: a qualification that landed must count (e.g. to be taken
        back after a cancellation), one that did not must not.
        """
        unfinished = [q for q in self.ledger.qualifications_for(push.external_id) if q.state == QualificationState.INTENT]
        if not unfinished:
            return push
        user = self._find_referral(push)
        for intent in unfinished:
            if user is None:
                self.ledger.record_qualification_result(
                    intent.id,
                    state=QualificationState.FAILED,
                    error={"message": "the referral no longer exists in Referral Factory"},
                )
                continue
            landed = (user.qualified_at is not None) == (intent.action == QualificationAction.QUALIFY)
            if landed:
                self.ledger.record_qualification_result(intent.id, state=QualificationState.DONE)
            else:
                self.ledger.record_qualification_result(
                    intent.id,
                    state=QualificationState.FAILED,
                    error={"message": "interrupted before Referral Factory applied it"},
                )
        log.info("qualify %s: settled %d unfinished intent(s) from an interrupted run", push.external_id, len(unfinished))
        return self.ledger.get_push(push.external_id) or push

    def _find_referral(self, push: PushRecord) -> User | None:
        """The referral as Referral Factory has it now: by saved id, else code, else e-mail."""
        rf = self.conn.referral_factory
        if push.rf_user_id is not None:
            try:
                return rf.get_user(push.rf_user_id)
            except NotFound as exc:
                rf.confirm_deleted(exc, campaign_id=self.conn.campaign_id)  # raises unless a deletion
                return None
        campaign_id = self.conn.campaign_id
        if push.referral_code:
            user = rf.find_user_by_code(campaign_id, push.referral_code)
            if user is not None:
                return user
        if push.email:
            return rf.find_user_by_email(campaign_id, push.email)
        return None

    def _track(
        self, push: PushRecord, *, final: bool | None = None, qualification: str | None = None, **observed: Any
    ) -> None:
        """Record what ServiceTitan says now (only what changed) and the push's finality."""
        if self.dry_run:
            return
        changed = {key: value for key, value in observed.items() if value is not None and getattr(push, key) != value}
        if changed or final is not None or qualification is not None:
            self.ledger.update_tracking(push.external_id, final=final, qualification=qualification, **changed)




def _describe(push: PushRecord) -> str:
    if push.email and push.referral_code:
        return f"{push.email} ({push.referral_code})"
    return push.email or push.referral_code or push.external_id


def _batches(ids: Iterable[int]) -> Iterable[list[int]]:
    unique = list(dict.fromkeys(int(i) for i in ids))
    for start in range(0, len(unique), BATCH_SIZE):
        yield unique[start : start + BATCH_SIZE]
