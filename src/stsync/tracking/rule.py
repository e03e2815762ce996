"""The qualification rule judged from what the ledger knows of one job — no request here.

``judge(job, settings, now)`` says whether the rule of ``[leads.qualification]`` is met, held,
broken or not met yet, from the job's status now, the statuses it **passed through** (its
steps: ServiceTitan's job history when it could be read, else the statuses stsync saw), its
``createdOn`` and ``completedOn``. Pure: the same facts and ``now`` give the same judgement
(``services.qualify`` decides with it; ``services.referral_story`` tells it).

What "reached" means for ``rule = "job_status"`` with target T:

- a status *counts* for T when it is T, or a later step of ServiceTitan's forward progression
  ``Scheduled → Dispatched → InProgress → Completed`` (a job seen Completed was Dispatched);
  ``Hold`` and ``Canceled`` count only for themselves;
- the job reached T when any step counts (however briefly it was held: a job that went
  Completed → InProgress between two runs reached Completed), when its status now counts,
  or — for Completed — when it has a ``completedOn`` (ServiceTitan keeps it: the durable
  signal, api/servicetitan.md §8) and is not Canceled now.

A job **Canceled now** never meets a rule (unless T is Canceled): the referral is closed.

**The hold** (``hold_days`` = N > 0): the rule is met only once the job has stayed reached for
N whole days, counted from the start of the current stretch (``since``):

- a cancellation inside the hold breaks it for good (``broken``: the referral is closed and
  never qualified, even if ServiceTitan removes the cancellation later);
- with ``job_status``, leaving T *backwards* — entering a status earlier in the progression
  (Completed → InProgress) — ends the stretch; the hold starts again when the job reaches T
  again. ``Hold`` is outside the progression, so pausing a job is not going backwards; for a
  target of ``Hold`` only a cancellation ends the stretch;
- with ``job_created`` the stretch starts when the job was created; only a cancellation
  breaks it.

Times are ServiceTitan's (history dates, ``createdOn``, ``completedOn``); ``now`` is the
caller's clock (UTC). A history ``eventType`` is read as a status when it is one of
``Jpm.V2.JobStatus`` (the sandbox's reading, the spec's "Type of the job status") or a phrase
naming one ("Job Completed", "Job Cancelled"); other entries are not steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from stsync.storage.ledger import JobEvent, JobRow, parse_utc
from stsync.vocabulary import DEFAULT_JOB_STATUS, QualificationRule

# A job moves forward through these; one seen at a later step has passed the earlier ones.
JOB_PROGRESSION = ("Scheduled", "Dispatched", "InProgress", "Completed")
CANCELED = "Canceled"
COMPLETED = "Completed"
HOLD = "Hold"

# History wordings that name a status without being its enum name.
_EVENT_WORDS = {
    "scheduled": "Scheduled",
    "dispatched": "Dispatched",
    "inprogress": "InProgress",
    "working": "InProgress",
    "hold": HOLD,
    "onhold": HOLD,
    "completed": COMPLETED,
    "complete": COMPLETED,
    "done": COMPLETED,
    "canceled": CANCELED,
    "cancelled": CANCELED,
}
_SPACES = re.compile(r"[\s_-]+")

Verdict = Literal["met", "held", "broken", "waiting"]


def event_status(event_type: str | None) -> str | None:
    """A history entry's ``eventType`` as a job status, or None when it names none."""
    if not event_type:
        return None
    squeezed = _SPACES.sub("", event_type).casefold()
    if squeezed in _EVENT_WORDS:
        return _EVENT_WORDS[squeezed]
    # "Job Completed", "Job Cancelled", "Job put on hold": the last word that names a status.
    for word in reversed(_SPACES.split(event_type.strip().casefold())):
        if word in _EVENT_WORDS:
            return _EVENT_WORDS[word]
    return None


def counts_for(status: str | None, target: str) -> bool:
    """Does a job in ``status`` count as having reached ``target``?"""
    if status is None:
        return False
    if status == target:
        return True
    if status in JOB_PROGRESSION and target in JOB_PROGRESSION:
        return JOB_PROGRESSION.index(status) >= JOB_PROGRESSION.index(target)
    return False


def is_backwards(status: str, target: str) -> bool:
    """Entering ``status`` from a stretch at ``target`` goes back in the progression."""
    if status in JOB_PROGRESSION and target in JOB_PROGRESSION:
        return JOB_PROGRESSION.index(status) < JOB_PROGRESSION.index(target)
    return target == CANCELED and status != CANCELED


@dataclass(frozen=True)
class Step:
    """The job entered ``status`` at ``at``."""

    status: str
    at: datetime


@dataclass(frozen=True)
class JobFacts:
    """One job as the rule sees it."""

    job_id: int
    status: str | None
    created_on: datetime | None = None
    completed_on: datetime | None = None
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_ledger(cls, job: JobRow, events: Iterable[JobEvent]) -> JobFacts:
        """From the ledger's row and events: ServiceTitan's history when the ledger holds any
        for this job, else the statuses stsync observed."""
        events = list(events)
        history = [e for e in events if e.source == "history"]
        chosen = history or [e for e in events if e.source != "history"]
        steps = sorted(
            (Step(e.status, at) for e in chosen if (at := parse_utc(e.at)) is not None),
            key=lambda step: step.at,
        )
        return cls(
            job_id=job.job_id,
            status=job.status,
            created_on=parse_utc(job.created_on),
            completed_on=parse_utc(job.completed_on),
            steps=tuple(steps),
        )


@dataclass(frozen=True)
class RuleSettings:
    rule: QualificationRule
    job_status: str | None = None
    hold_days: int = 0

    @property
    def target(self) -> str:
        return self.job_status or DEFAULT_JOB_STATUS

    @property
    def hold(self) -> timedelta:
        return timedelta(days=self.hold_days)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    since: datetime | None = None  # the start of the stretch the hold counts from
    held_until: datetime | None = None  # while held: when the hold ends


def status_reached(status: str | None, completed_on: datetime | None, target: str) -> bool:
    """Has a job reached ``target``, as far as one look at its current state can tell?"""
    if counts_for(status, target):
        return True
    return target == COMPLETED and completed_on is not None and status != CANCELED


def judge(job: JobFacts, settings: RuleSettings, now: datetime) -> Judgement:
    """The rule applied to ``job`` at ``now`` (see the module docstring)."""
    if settings.rule == QualificationRule.JOB_CREATED:
        return _judge_created(job, settings, now)
    return _judge_status(job, settings, now)


def _day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "?"


def _judge_created(job: JobFacts, settings: RuleSettings, now: datetime) -> Judgement:
    canceled = Judgement("waiting", f"job {job.job_id} canceled")
    since = job.created_on or (job.steps[0].at if job.steps else None)
    if not settings.hold_days:
        return canceled if job.status == CANCELED else Judgement("met", f"booking became job {job.job_id}", since=since)
    if since is None:
        return Judgement("waiting", f"job {job.job_id}: its creation date is unknown, so the hold cannot start")
    until = since + settings.hold
    for step in job.steps:
        if step.status == CANCELED and since <= step.at < until:
            return Judgement(
                "broken", f"job {job.job_id} was canceled on {_day(step.at)}, inside the {settings.hold_days}-day hold",
                since=since,
            )
    if job.status == CANCELED:
        return canceled
    if now >= until:
        return Judgement(
            "met", f"booking became job {job.job_id}; not canceled in the {settings.hold_days}-day hold", since=since
        )
    return Judgement("held", f"job {job.job_id} created; held {settings.hold_days} days", since=since, held_until=until)


def _judge_status(job: JobFacts, settings: RuleSettings, now: datetime) -> Judgement:
    target = settings.target
    canceled = job.status == CANCELED and target != CANCELED
    steps = list(job.steps)
    if target == COMPLETED and job.completed_on is not None and not any(counts_for(s.status, target) for s in steps):
        # No step says it (no history, or it came before what stsync saw): completedOn does.
        steps = sorted([*steps, Step(COMPLETED, job.completed_on)], key=lambda step: step.at)
    reached = any(counts_for(s.status, target) for s in steps) or status_reached(job.status, job.completed_on, target)
    if not settings.hold_days:
        if canceled:
            return Judgement("waiting", f"job {job.job_id} canceled")
        if reached:
            return Judgement("met", _reached_reason(job, target))
        return Judgement("waiting", f"job {job.job_id} is {job.status}, waiting for {target}")

    since: datetime | None = None
    left: Step | None = None
    for step in steps:
        if since is not None and step.at >= since + settings.hold:
            break  # the stretch outlasted the hold before this step: the rule was met then
        if counts_for(step.status, target):
            if since is None:
                since = step.at
        elif step.status == CANCELED and target != CANCELED:
            if since is not None:
                return Judgement(
                    "broken",
                    f"job {job.job_id} was canceled on {_day(step.at)}, inside the {settings.hold_days}-day hold",
                    since=since,
                )
        elif since is not None and is_backwards(step.status, target):
            left, since = step, None
    if canceled:
        # Canceled before the rule was met, or after its hold had passed: not qualified now.
        return Judgement("waiting", f"job {job.job_id} canceled")
    if since is None and counts_for(job.status, target):
        # Reached now, with no dated step for it: the hold cannot start before stsync saw it.
        return Judgement("waiting", f"job {job.job_id} is {job.status}; the date it got there is not known yet")
    if since is None:
        if left is not None:
            return Judgement(
                "waiting",
                f"job {job.job_id} left {target} for {left.status} on {_day(left.at)}; "
                f"the {settings.hold_days}-day hold starts again when it reaches {target} again",
            )
        return Judgement("waiting", f"job {job.job_id} is {job.status}, waiting for {target}")
    until = since + settings.hold
    if now >= until:
        return Judgement(
            "met", f"{_reached_reason(job, target)}; held {settings.hold_days} days without a cancellation", since=since
        )
    return Judgement(
        "held", f"job {job.job_id} reached {target} on {_day(since)}; held {settings.hold_days} days",
        since=since, held_until=until,
    )


def _reached_reason(job: JobFacts, target: str) -> str:
    if counts_for(job.status, target):
        return f"job {job.job_id} reached {target} (status {job.status})"
    return f"job {job.job_id} passed through {target} (status now {job.status})"

