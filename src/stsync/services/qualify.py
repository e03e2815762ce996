"""Qualification: pushed bookings → jobs → the referral qualified in Referral Factory.

``qualify(conn)`` first brings the ledger's mirror of ServiceTitan up to date with what
changed since the last run (``tracking.reads``: the provider's bookings by watermark, the job
history and job export feeds by ``continueFrom``, jobs by id only where the ledger lacks them
or a hold is ending — with nothing changed, three requests however many bookings are open),
then decides every open booking (``Ledger.open_bookings()``: pushed, booked, not yet final)
from what the ledger holds, and applies ``[leads.qualification]`` (``tracking.rule``):

- ``rule = "none"``: nothing at all (no ledger read, no request); the report says so.
- ``rule = "job_created"``: the referral qualifies once its booking has a job (and the job is
  not Canceled).
- ``rule = "job_status"``: the referral qualifies once that job has *reached* ``job_status``
  (``Completed`` by default): the status, a later step of ``Scheduled → Dispatched →
  InProgress → Completed``, a status it **passed through** between two runs (the job
  history), or for ``Completed`` a ``completedOn`` date. ``Hold`` and ``Canceled`` match only
  themselves.
- ``hold_days = N``: a referral whose job met the rule is **held** (outcome ``held``, with
  ``held_until``; not final, watched every run) until the job has kept meeting it for N days;
  a cancellation inside the hold closes it for good; leaving the status backwards restarts the
  hold when the status is reached again.

``refresh(conn)`` makes the same reads (``read_servicetitan``) and nothing else: the mirror
brought up to date for ``report --refresh``, following the jobs of every referral instead of
the open bookings' only.

``full=True`` (``qualify --full``) re-reads every booking of the provider and every job of an
open booking; a run does so by itself when the ledger has no position yet or its last full
read is older than ``tracking.reads.FULL_READ_EVERY`` (``report.reads`` says which and why).

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
- a job Canceled before the rule was met, or at any time inside the hold: final,
  ``not_qualified``;
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

A booking ServiceTitan no longer returns (in a full read), or a job it does not return, stays
open and is reported (``missing``). ``dry_run`` reads ServiceTitan and reports what would be
done: it sends nothing to Referral Factory and records no decision (no qualification, no
tracking of the pushes, no run); what it read of ServiceTitan is kept in the ledger's mirror,
as any read is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.errors import NotFound, StsyncError, stops_run
from stsync.logs import get_logger, log_context
from stsync.progress import NO_PROGRESS, Progress
from stsync.referralfactory.models import PERSON_INVITED
from stsync.storage.ledger import iso_utc
from stsync.storage.states import QualificationAction, QualificationState, QualificationValue, RunJob
from stsync.tracking.reads import ReadReport, ServiceTitanReads
from stsync.tracking.rule import (
    CANCELED,
    COMPLETED,
    JobFacts,
    Judgement,
    RuleSettings,
    judge,
)
from stsync.tracking.rule import status_reached as _status_reached
from stsync.vocabulary import DEFAULT_JOB_STATUS, Kind, QualificationRule, UnqualifyEvent

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import User
    from stsync.servicetitan.models import Job
    from stsync.storage.ledger import BookingRow, JobEvent, JobRow, Ledger, PushRecord

log = get_logger(__name__)

DISMISSED = "Dismissed"

# What happened to one open booking in this run.
QUALIFIED = "qualified"  # PUT qualified=true sent and answered
UNQUALIFIED = "unqualified"  # PUT qualified=false sent and answered
ALREADY = "already"  # Referral Factory already had the wanted state: recorded, nothing sent
CLOSED = "closed"  # final without qualification (dismissed, canceled, completed off-rule)
FINISHED = "finished"  # already qualified, now final (nothing left to watch)
HELD = "held"  # the rule is met; qualified when the hold ends (held_until)
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

    def decision(
        self, outcome: str, reason: str, *, final: bool, error: dict | None = None, held_until: str | None = None
    ) -> QualifyDecision:
        return QualifyDecision(
            **asdict(self), outcome=outcome, reason=reason, final=final, error=error, held_until=held_until
        )


@dataclass(frozen=True)
class QualifyDecision(BookingSeen):
    """One open booking: what ServiceTitan says now and what this run did about it."""

    outcome: str
    reason: str
    final: bool
    error: dict | None = None
    held_until: str | None = None  # with outcome "held": when the hold ends (UTC, ISO-8601)


@dataclass
class QualifyReport:
    rule: str
    dry_run: bool
    job_status: str | None = None
    unqualify_on: list[str] = field(default_factory=list)
    hold_days: int = 0
    open_bookings: int = 0
    run_id: int | None = None
    reads: ReadReport = field(default_factory=ReadReport)
    decisions: list[QualifyDecision] = field(default_factory=list)

    @property
    def bookings_read(self) -> int:
        return self.reads.bookings_read

    @property
    def jobs_read(self) -> int:
        return self.reads.jobs_read

    def count(self, *outcomes: str) -> int:
        return sum(1 for decision in self.decisions if decision.outcome in outcomes)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def still_open(self) -> int:
        return sum(1 for decision in self.decisions if not decision.final)

    @property
    def held(self) -> list[QualifyDecision]:
        """The referrals being held, the hold ending first first."""
        return sorted((d for d in self.decisions if d.outcome == HELD), key=lambda d: (d.held_until or "", d.external_id))

    def counts(self) -> dict[str, int]:
        return {
            "open_bookings": self.open_bookings,
            "bookings_read": self.bookings_read,
            "jobs_read": self.jobs_read,
            "servicetitan_requests": self.reads.requests,
            "qualified": self.count(QUALIFIED, WOULD_QUALIFY),
            "unqualified": self.count(UNQUALIFIED, WOULD_UNQUALIFY),
            "already": self.count(ALREADY),
            "closed": self.count(CLOSED, WOULD_CLOSE),
            "finished": self.count(FINISHED),
            "held": self.count(HELD),
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
            "hold_days": self.hold_days,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "reads": self.reads.to_dict(),
            "counts": self.counts(),
            "held": [{"external_id": d.external_id, "email": d.email, "job_id": d.job_id, "held_until": d.held_until}
                     for d in self.held],
            "decisions": [asdict(decision) for decision in self.decisions],
        }


@dataclass(frozen=True)
class QualificationSettings:
    rule: QualificationRule
    job_status: str | None
    unqualify_on: frozenset[UnqualifyEvent]
    hold_days: int = 0

    @classmethod
    def from_config(cls, config: Any) -> QualificationSettings:
        # storage.config has validated the values (rule, job status, events, hold) already.
        section = config.leads.qualification
        rule = QualificationRule(section.rule)
        job_status = (section.job_status or DEFAULT_JOB_STATUS) if rule == QualificationRule.JOB_STATUS else None
        events = frozenset(UnqualifyEvent(event) for event in section.unqualify_on or ())
        return cls(rule=rule, job_status=job_status, unqualify_on=events, hold_days=int(section.hold_days or 0))

    @property
    def rule_settings(self) -> RuleSettings:
        return RuleSettings(rule=self.rule, job_status=self.job_status, hold_days=self.hold_days)


def status_reached(job: Job, target: str) -> bool:
    """Has ``job`` reached ``target``, as far as one look at its current state can tell?"""
    return _status_reached(job.job_status, job.completed_on, target)


def qualify(
    conn: Connection, *, dry_run: bool = False, full: bool = False, progress: Progress = NO_PROGRESS
) -> QualifyReport:
    """Apply the qualification rule to every open booking (see the module docstring)."""
    settings = QualificationSettings.from_config(conn.config)
    report = QualifyReport(
        rule=settings.rule,
        dry_run=dry_run,
        job_status=settings.job_status,
        unqualify_on=sorted(settings.unqualify_on),
        hold_days=settings.hold_days,
    )
    if settings.rule == QualificationRule.NONE:
        return report
    run = _QualifyRun(conn, settings, report, dry_run=dry_run, full=full, progress=progress)
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
        full: bool,
        progress: Progress,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.report = report
        self.dry_run = dry_run
        self.full = full
        self.progress = progress
        self.ledger: Ledger = conn.ledger
        self.now = datetime.now(UTC)

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
            seen = self._read(open_pushes)
            self._decide_all(open_pushes, seen)

    # -- reading ServiceTitan (into the ledger) ------------------------------------------------
    def _read(self, pushes: list[PushRecord]) -> set[int] | None:
        """Bring the ledger's mirror up to date. → the booking ids a full read returned (None
        for an incremental read: a booking it does not return simply did not change)."""

        def open_jobs(ledger: Ledger) -> set[int]:
            bookings = ledger.bookings_for(_booking_ids(pushes))
            return {job_id for p in pushes if (job_id := _job_id(p, _booking_of(p, bookings)))}

        return read_servicetitan(self.conn, self.report.reads, asked_full=self.full, jobs_followed=open_jobs)

    # -- deciding --------------------------------------------------------------------------
    def _decide_all(self, pushes: list[PushRecord], seen: set[int] | None) -> None:
        bookings = self.ledger.bookings_for(_booking_ids(pushes))
        job_ids = [job_id for p in pushes if (job_id := _job_id(p, _booking_of(p, bookings)))]
        jobs = self.ledger.jobs_for(job_ids)
        events = self.ledger.job_events_for(jobs)
        for push in pushes:
            booking = _booking_of(push, bookings)
            if seen is not None and push.booking_id not in seen:
                booking = None
            job_id = _job_id(push, booking)
            job = jobs.get(job_id) if job_id is not None else None
            with log_context(external_id=push.external_id):
                decision = self._decide_and_apply(
                    push, booking, job_id, job, events.get(job_id, []) if job_id else []
                )
            self.report.decisions.append(decision)
            # A booking still waiting is the common case of every run: not worth a log line each.
            (log.debug if decision.outcome == WAITING else log.info)(
                "qualify %s booking=%s job=%s status=%s: %s (%s)",
                push.external_id,
                push.booking_id,
                decision.job_id,
                decision.job_status,
                decision.outcome,
                decision.reason,
            )
            self.progress.advance(1)

    def _decide_and_apply(
        self,
        push: PushRecord,
        booking: BookingRow | None,
        job_id: int | None,
        job: JobRow | None,
        events: list[JobEvent],
    ) -> QualifyDecision:
        booking_status = booking.status if booking is not None else push.booking_status
        job_status = job.status if job is not None else None
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
                return seen.decision(outcome=FAILED, reason="an interrupted run's write could not be checked",
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
            judgement = self._judge(job_id, job, events)
            if judgement.verdict == "met":
                return self._write(
                    push, seen, QualificationAction.QUALIFY, judgement.reason, final_after=final_once_qualified
                )
            if judgement.verdict == "held":
                held_until = iso_utc(judgement.held_until)
                self._track(push, booking_status=booking_status, job_id=job_id, job_status=job_status, held_until=held_until)
                return seen.decision(
                    outcome=HELD, reason=f"{judgement.reason}, until {held_until}", final=False, held_until=held_until
                )
            if judgement.verdict == "broken" or dismissed or terminal_job:
                if judgement.verdict == "broken":
                    why = judgement.reason
                elif dismissed:
                    why = "booking dismissed"
                else:
                    why = f"job {job_id} {job_status.lower() if job_status else ''} before the rule was met"
                if self.dry_run:
                    return seen.decision(outcome=WOULD_CLOSE, reason=why, final=True)
                self._track(
                    push,
                    booking_status=booking_status,
                    job_id=job_id,
                    job_status=job_status,
                    final=True,
                    qualification=QualificationValue.NOT_QUALIFIED,
                    held_until=None,
                )
                return seen.decision(outcome=CLOSED, reason=why, final=True)
            self._track(push, booking_status=booking_status, job_id=job_id, job_status=job_status, held_until=None)
            return seen.decision(outcome=WAITING, reason=judgement.reason, final=False)

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

    def _judge(self, job_id: int | None, job: JobRow | None, events: list[JobEvent]) -> Judgement:
        if job_id is None or job is None:
            return Judgement("waiting", "no job yet")
        return judge(JobFacts.from_ledger(job, events), self.settings.rule_settings, self.now)

    # -- writing Referral Factory ----------------------------------------------------------
    def _write(
        self, push: PushRecord, seen: BookingSeen, action: QualificationAction, reason: str, *, final_after
    ) -> QualifyDecision:
        wanted = action == QualificationAction.QUALIFY
        booking_status, job_id, job_status = seen.booking_status, seen.job_id, seen.job_status
        if self.dry_run:
            outcome = WOULD_QUALIFY if wanted else WOULD_UNQUALIFY
            return seen.decision(outcome=outcome, reason=reason, final=not wanted or final_after())
        self._track(push, booking_status=booking_status, job_id=job_id, job_status=job_status)
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
            self._track(push, final=final or None, held_until=None)
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
        self._track(push, final=final or None, held_until=None)
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
        self,
        push: PushRecord,
        *,
        final: bool | None = None,
        qualification: str | None = None,
        held_until: Any = ...,
        **observed: Any,
    ) -> None:
        """Record what ServiceTitan says now (only what changed), the push's finality and its
        hold (``held_until``: a time, None to clear it, left out to keep it)."""
        if self.dry_run:
            return
        changed = {key: value for key, value in observed.items() if value is not None and getattr(push, key) != value}
        if changed or final is not None or qualification is not None:
            self.ledger.update_tracking(push.external_id, final=final, qualification=qualification, **changed)
        if held_until is not ... and held_until != push.held_until:
            self.ledger.set_held_until(push.external_id, held_until)


def read_servicetitan(
    conn: Connection, report: ReadReport, *, asked_full: bool, jobs_followed: Callable[[Ledger], set[int]]
) -> set[int] | None:
    """The one read of ServiceTitan into the ledger's mirror (``tracking.reads``, in its
    order), for ``qualify`` and ``refresh``: bookings by watermark (all of them when the read
    is full), the job history and job export feeds from their positions, then by id the jobs
    of ``jobs_followed(ledger)`` (asked once the bookings are stored) that the ledger lacks —
    all of them when the read is full — and the jobs of held referrals. → the booking ids a
    full read returned (None for an incremental read)."""
    ledger = conn.ledger
    reads = ServiceTitanReads(conn, report)
    reason = reads.full_read_reason(asked=asked_full)
    full = reason is not None
    report.full, report.full_reason = full, reason
    reads.read_bookings(full=full)
    reads.read_history_feed()
    reads.read_jobs_feed()
    # A feed ServiceTitan made us restart from a date may have skipped changes: the jobs
    # followed are read again.
    jobs_in_full = full or report.full

    job_ids = jobs_followed(ledger)
    known_jobs = ledger.jobs_for(job_ids)
    to_read = set(job_ids) if jobs_in_full else {j for j in job_ids if j not in known_jobs}
    # A hold about to end is checked against ServiceTitan's dates as they are now.
    to_read |= {p.job_id for p in ledger.held_pushes() if p.job_id and p.kind == Kind.LEAD}
    reads.read_jobs(to_read, check_dates=True)
    reads.store_history()
    if full:
        reads.mark_full_read()
    reads.finish()
    # A full read lists every booking of the provider: one it did not return is missing.
    return reads.bookings_returned if full else None


def refresh(conn: Connection, *, full: bool = False) -> ReadReport:
    """Bring the ledger's mirror of ServiceTitan up to date — the reads ``qualify`` makes,
    without deciding or writing anything in Referral Factory (``report --refresh``). The jobs
    followed are those of every referral's booking (``Ledger.referral_job_ids``): a job the
    ledger lacks is read by id (≤ 50 per request) once, the export feed keeps it current
    after that. Works whatever the qualification rule (``none`` included). The caller holds
    the qualify run lock: the two read the same positions."""
    report = ReadReport()
    read_servicetitan(conn, report, asked_full=full, jobs_followed=lambda ledger: ledger.referral_job_ids())
    return report


def _booking_ids(pushes: list[PushRecord]) -> list[int]:
    return [push.booking_id for push in pushes if push.booking_id is not None]


def _booking_of(push: PushRecord, bookings: dict[int, BookingRow]) -> BookingRow | None:
    return bookings.get(push.booking_id) if push.booking_id is not None else None


def _job_id(push: PushRecord, booking: BookingRow | None) -> int | None:
    """The job booked from the push's booking: ServiceTitan's word, else the ledger's."""
    if booking is not None and booking.job_id is not None:
        return booking.job_id
    return push.job_id


def _describe(push: PushRecord) -> str:
    if push.email and push.referral_code:
        return f"{push.email} ({push.referral_code})"
    return push.email or push.referral_code or push.external_id
