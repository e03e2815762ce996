"""The report's arithmetic: referrals → the funnel, the outcomes and the money, for the whole
period and per group (referrer or month). Pure functions of what the ledger holds.

**A referral** (``Referral``) is a referred lead stsync has seen, placed in time by the day it
joined the campaign (``joined_on``: Referral Factory's ``signed_up_at``; when that was never
known, the day stsync first saw the lead). Everything that happened to it later — its booking,
job, completion, qualification, revenue — counts in the period (and the month) it joined: the
report follows cohorts, so a month's row always shows what that month's referrals brought,
however late their jobs were done.

**The funnel** (``STAGES``), each stage counting the referrals that reached it *and every
stage before it*, so it never grows and every conversion rate lies in [0, 1]:

1. ``referred`` — referred leads seen;
2. ``booked`` — a booking exists for it (stsync's, or the provider's with its externalId);
3. ``jobs`` — that booking became a job;
4. ``completed`` — the job was completed and is not canceled now;
5. ``qualified`` — completed, and the referral qualified in Referral Factory.

**The outcomes**, each counted on its own: ``qualified_all`` (every referral qualified, also
those qualified before their job was completed: rule ``job_created``, or by hand), ``held``
(the rule is met, the hold not over: ``hold_days``), ``canceled`` (the job is Canceled now,
also after a completion), ``dismissed`` (the booking was dismissed without a job).

**The money** is the job's ``total`` — ServiceTitan's "Total amount of the job" — summed in
whole cents over the jobs not canceled (``revenue_cents``). The invoice's own total needs
ServiceTitan's accounting API, outside the app's scopes: it is not read. Jobs with a $0 total
(``zero_total_jobs``), without a total yet (``jobs_without_total``), with an invoice id
(``jobs_with_invoice``) are counted apart, and so are the totals of canceled jobs
(``canceled_total_cents``, never in the revenue).

``Tally`` adds up: the tally of a set of referrals is the sum of the tallies of any partition
of it (the groups of ``--by referrer`` and ``--by month`` add up to the period's total).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any

from stsync.storage.ledger import KnownReferrer, ReferralRow, parse_utc
from stsync.storage.states import QualificationValue

CANCELED = "Canceled"
COMPLETED = "Completed"
DISMISSED = "Dismissed"

# (name, label): the funnel's stages, in order.
STAGES: tuple[tuple[str, str], ...] = (
    ("referred", "Referred leads"),
    ("booked", "Bookings created"),
    ("jobs", "Became jobs"),
    ("completed", "Jobs completed"),
    ("qualified", "Qualified"),
)
OUTCOMES: tuple[tuple[str, str], ...] = (
    ("qualified_all", "Qualified (all)"),
    ("held", "Held"),
    ("canceled", "Jobs canceled"),
    ("dismissed", "Bookings dismissed"),
)
TOP = 10  # referrers in each top list
NO_REFERRER = "none"
UNKNOWN_REFERRER_LABEL = "(referrer not known)"


@dataclass(frozen=True)
class Referrer:
    """Who brought a referral, as far as the ledger knows. ``key`` identifies them in groups:
    ``rf:<user id>``, else ``email:<e-mail>``, else ``code:<referral code>``."""

    key: str
    rf_user_id: int | None = None
    email: str | None = None
    name: str | None = None
    code: str | None = None
    customer_id: int | None = None  # a ServiceTitan customer enrolled by customer sync

    @property
    def label(self) -> str:
        if self.name and self.email:
            return f"{self.name} <{self.email}>"
        if self.email or self.name:
            return str(self.email or self.name)
        if self.rf_user_id is not None:
            return f"Referral Factory user {self.rf_user_id}"
        return f"referral code {self.code}"

    @property
    def synced(self) -> bool:
        return self.customer_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "rf_user_id": self.rf_user_id,
            "email": self.email,
            "name": self.name,
            "code": self.code,
            "customer_id": self.customer_id,
        }


@dataclass(frozen=True)
class Referral:
    """One referral as the report counts it (see the module docstring)."""

    external_id: str
    joined_on: date
    referrer: Referrer | None = None
    email: str | None = None
    booked: bool = False
    job: bool = False
    completed: bool = False
    qualified: bool = False  # in Referral Factory, whatever the stage
    held: bool = False
    canceled: bool = False
    dismissed: bool = False
    total_cents: int | None = None  # the job's total, None when it has none (or no job)
    invoiced: bool = False

    @property
    def month(self) -> str:
        return self.joined_on.strftime("%Y-%m")


@dataclass(frozen=True)
class Tally:
    """Counts and money of a set of referrals. Stage counts are cumulative (the funnel)."""

    referred: int = 0
    booked: int = 0
    jobs: int = 0
    completed: int = 0
    qualified: int = 0
    qualified_all: int = 0
    held: int = 0
    canceled: int = 0
    dismissed: int = 0
    revenue_cents: int = 0
    jobs_with_total: int = 0
    zero_total_jobs: int = 0
    jobs_without_total: int = 0
    jobs_with_invoice: int = 0
    canceled_total_cents: int = 0

    @classmethod
    def of(cls, referrals: Iterable[Referral]) -> Tally:
        counts: dict[str, int] = defaultdict(int)
        for r in referrals:
            counts["referred"] += 1
            booked = r.booked
            job = booked and r.job
            completed = job and r.completed
            counts["booked"] += booked
            counts["jobs"] += job
            counts["completed"] += completed
            counts["qualified"] += completed and r.qualified
            counts["qualified_all"] += r.qualified
            counts["held"] += r.held and not r.qualified
            counts["canceled"] += job and r.canceled
            counts["dismissed"] += booked and not job and r.dismissed
            if not job:
                continue
            counts["jobs_with_invoice"] += r.invoiced
            if r.canceled:
                counts["canceled_total_cents"] += r.total_cents or 0
            elif r.total_cents is None:
                counts["jobs_without_total"] += 1
            else:
                counts["revenue_cents"] += r.total_cents
                counts["jobs_with_total"] += 1
                counts["zero_total_jobs"] += r.total_cents == 0
        return cls(**counts)

    def __add__(self, other: Tally) -> Tally:
        return Tally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def stage_count(self, stage: str) -> int:
        return int(getattr(self, stage))

    def stages(self) -> list[dict[str, Any]]:
        """The funnel: each stage's count, its rate from the stage before and of the referred
        (None where the denominator is 0)."""
        out: list[dict[str, Any]] = []
        previous: int | None = None
        for name, label in STAGES:
            count = self.stage_count(name)
            out.append(
                {
                    "stage": name,
                    "label": label,
                    "count": count,
                    "rate_from_previous": None if previous is None else _rate(count, previous),
                    "rate_of_referred": _rate(count, self.referred),
                }
            )
            previous = count
        return out

    @property
    def revenue(self) -> float:
        return cents_to_money(self.revenue_cents)

    @property
    def paid_jobs(self) -> int:
        return self.jobs_with_total - self.zero_total_jobs

    @property
    def average_per_paid_job(self) -> float | None:
        return cents_to_money(round(self.revenue_cents / self.paid_jobs)) if self.paid_jobs else None

    def counts(self) -> dict[str, int]:
        """Every count as an integer (money in cents)."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """Every count, and the money in currency units."""
        data: dict[str, Any] = self.counts()
        data["revenue"] = self.revenue
        data["canceled_total"] = cents_to_money(self.canceled_total_cents)
        data["average_per_paid_job"] = self.average_per_paid_job
        return data


def _rate(count: int, of: int) -> float | None:
    return count / of if of else None


def cents_to_money(cents: int) -> float:
    return round(cents / 100, 2)


def money_to_cents(total: float | None) -> int | None:
    return None if total is None else round(total * 100)


@dataclass(frozen=True)
class Group:
    """The tally of one group: a referrer, a month, or the whole period."""

    key: str
    label: str
    tally: Tally
    referrer: Referrer | None = None
    month: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "label": self.label}
        if self.referrer is not None:
            data["referrer"] = self.referrer.to_dict()
        if self.month is not None:
            data["month"] = self.month
        data.update(self.tally.to_dict())
        return data


# -- who referred whom ---------------------------------------------------------------------------


class ReferrerDirectory:
    """Every referrer the ledger tells of, merged by Referral Factory user id and e-mail: what
    the referrals said of their referrer (id, e-mail, name, code), the customers customer
    sync enrolled (their user id, e-mail and customer id) and the referrers stsync pushed."""

    def __init__(self, rows: Iterable[ReferralRow], known: Iterable[KnownReferrer] = ()) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}
        self._id_by_email: dict[str, int] = {}
        self._by_email: dict[str, dict[str, Any]] = {}
        known = list(known)
        rows = list(rows)
        for k in known:
            if k.rf_user_id is not None and k.email:
                self._id_by_email.setdefault(k.email.casefold(), k.rf_user_id)
        for row in rows:
            if row.referrer_rf_user_id is not None and row.referrer_email:
                self._id_by_email.setdefault(row.referrer_email.casefold(), row.referrer_rf_user_id)
        for k in known:
            self._learn(k.rf_user_id, email=k.email, name=k.name, customer_id=k.customer_id)
        for row in rows:
            self._learn(row.referrer_rf_user_id, email=row.referrer_email, name=row.referrer_name, code=row.referrer_code)

    def _learn(self, rf_user_id: int | None, **values: Any) -> None:
        email = values.get("email")
        if rf_user_id is None and email:
            rf_user_id = self._id_by_email.get(email.casefold())
        if rf_user_id is not None:
            info = self._by_id.setdefault(rf_user_id, {})
        elif email:
            info = self._by_email.setdefault(email.casefold(), {})
        else:
            return
        for name, value in values.items():
            if value is not None and info.get(name) is None:
                info[name] = value

    def referrer_of(self, row: ReferralRow) -> Referrer | None:
        rf_user_id = row.referrer_rf_user_id
        email = row.referrer_email
        if rf_user_id is None and email:
            rf_user_id = self._id_by_email.get(email.casefold())
        if rf_user_id is not None:
            info = self._by_id.get(rf_user_id, {})
            return Referrer(key=f"rf:{rf_user_id}", rf_user_id=rf_user_id, **_referrer_values(info))
        if email:
            info = self._by_email.get(email.casefold(), {})
            return Referrer(key=f"email:{email.casefold()}", **{**_referrer_values(info), "email": info.get("email", email)})
        if row.referrer_code:
            return Referrer(key=f"code:{row.referrer_code}", name=row.referrer_name, code=row.referrer_code)
        return None


def _referrer_values(info: Mapping[str, Any]) -> dict[str, Any]:
    return {name: info.get(name) for name in ("email", "name", "code", "customer_id")}


def referral_of(row: ReferralRow, referrer: Referrer | None) -> Referral:
    """A ledger row as the report counts it (see the module docstring)."""
    joined = parse_utc(row.joined_at)
    booked = row.booking_id is not None
    job = booked and row.job_id is not None
    canceled = job and row.job_status == CANCELED
    completed = job and not canceled and (row.job_completed_on is not None or row.job_status == COMPLETED)
    qualified = row.qualification == QualificationValue.QUALIFIED
    return Referral(
        external_id=row.external_id,
        joined_on=joined.date() if joined is not None else date.min,
        referrer=referrer,
        email=row.email,
        booked=booked,
        job=job,
        completed=completed,
        qualified=qualified,
        held=row.held_until is not None and not row.final and not qualified,
        canceled=canceled,
        dismissed=booked and not job and row.booking_status == DISMISSED,
        total_cents=money_to_cents(row.job_total) if job else None,
        invoiced=job and row.job_invoice_id is not None,
    )


# -- the report ------------------------------------------------------------------------------------


@dataclass
class Report:
    """The funnel and the money of the referrals that joined from ``since`` to ``until``
    (both days included), with ``groups`` per ``by`` (``referrer``, ``month`` or None: one
    group, the period)."""

    since: date
    until: date
    by: str | None
    total: Tally
    groups: list[Group]
    months: list[Group]  # every month of the period, for the revenue chart
    top_by_revenue: list[Group]
    top_by_completed: list[Group]
    synced_referrers: list[Group]  # customers enrolled by customer sync who referred someone
    referrers: int  # distinct referrers known among the referrals
    unknown_referrer: int  # referrals whose referrer is not known
    notes: list[str] = field(default_factory=list)

    @property
    def period_label(self) -> str:
        return f"{self.since.isoformat()} to {self.until.isoformat()}"

    def counts(self) -> dict[str, int]:
        return {
            **self.total.counts(),
            "referrers": self.referrers,
            "unknown_referrer": self.unknown_referrer,
            "synced_referrers_who_referred": len(self.synced_referrers),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": {"since": self.since.isoformat(), "until": self.until.isoformat(), "placed_by": "signed_up_at"},
            "by": self.by,
            "funnel": self.total.stages(),
            "outcomes": {name: self.total.stage_count(name) for name, _ in OUTCOMES},
            "revenue": {
                "source": "job_total",
                "total": self.total.revenue,
                "jobs_with_total": self.total.jobs_with_total,
                "zero_total_jobs": self.total.zero_total_jobs,
                "jobs_without_total": self.total.jobs_without_total,
                "jobs_with_invoice": self.total.jobs_with_invoice,
                "canceled_total": cents_to_money(self.total.canceled_total_cents),
                "average_per_paid_job": self.total.average_per_paid_job,
            },
            "groups": [g.to_dict() for g in self.groups],
            "months": [g.to_dict() for g in self.months],
            "top_referrers": {
                "by_revenue": [g.to_dict() for g in self.top_by_revenue],
                "by_completed_jobs": [g.to_dict() for g in self.top_by_completed],
            },
            "synced_referrers": [g.to_dict() for g in self.synced_referrers],
            "notes": list(self.notes),
        }


def build_report(referrals: Sequence[Referral], *, since: date, until: date, by: str | None) -> Report:
    """The report of these referrals (those outside ``since``…``until`` are left out)."""
    if until < since:
        raise ValueError(f"the period ends ({until}) before it starts ({since})")
    chosen = [r for r in referrals if since <= r.joined_on <= until]
    by_referrer = group_by_referrer(chosen)
    months = group_by_month(chosen, since=since, until=until)
    if by == "referrer":
        groups = by_referrer
    elif by == "month":
        groups = months
    elif by is None:
        label = f"{since.isoformat()} to {until.isoformat()}"
        groups = [Group(key=f"{since.isoformat()}..{until.isoformat()}", label=label, tally=Tally.of(chosen))]
    else:
        raise ValueError(f"by must be referrer, month or None, not {by!r}")
    known = [g for g in by_referrer if g.referrer is not None]
    return Report(
        since=since,
        until=until,
        by=by,
        total=Tally.of(chosen),
        groups=groups,
        months=months,
        top_by_revenue=_top(known, lambda g: (g.tally.revenue_cents, g.tally.completed)),
        top_by_completed=_top(known, lambda g: (g.tally.completed, g.tally.revenue_cents)),
        synced_referrers=sorted(
            (g for g in known if g.referrer is not None and g.referrer.synced),
            key=lambda g: (-g.tally.referred, -g.tally.revenue_cents, g.label.casefold()),
        ),
        referrers=len(known),
        unknown_referrer=sum(g.tally.referred for g in by_referrer if g.referrer is None),
    )


def group_by_referrer(referrals: Iterable[Referral]) -> list[Group]:
    """One group per referrer (most referrals first), the referrals without a known referrer last."""
    members: dict[str, list[Referral]] = defaultdict(list)
    who: dict[str, Referrer | None] = {}
    for r in referrals:
        key = r.referrer.key if r.referrer is not None else NO_REFERRER
        members[key].append(r)
        who.setdefault(key, r.referrer)
    groups = []
    for key, rs in members.items():
        referrer = who[key]
        label = referrer.label if referrer is not None else UNKNOWN_REFERRER_LABEL
        groups.append(Group(key=key, label=label, tally=Tally.of(rs), referrer=referrer))
    return sorted(groups, key=lambda g: (g.referrer is None, -g.tally.referred, g.label.casefold(), g.key))


def group_by_month(referrals: Iterable[Referral], *, since: date, until: date) -> list[Group]:
    """One group per month from ``since`` to ``until``, months without a referral included."""
    members: dict[str, list[Referral]] = defaultdict(list)
    for r in referrals:
        members[r.month].append(r)
    return [
        Group(key=month, label=month, tally=Tally.of(members.get(month, [])), month=month)
        for month in months_between(since, until)
    ]


def months_between(since: date, until: date) -> list[str]:
    """``YYYY-MM`` of every month from ``since``'s to ``until``'s, both included."""
    out: list[str] = []
    current = since.replace(day=1)
    while current <= until:
        out.append(current.strftime("%Y-%m"))
        current = (current + timedelta(days=32)).replace(day=1)
    return out


def _top(groups: list[Group], score: Callable[[Group], tuple[int, int]]) -> list[Group]:
    """The ``TOP`` groups with the highest score (its first part above 0), ties by label."""
    ranked = sorted((g for g in groups if score(g)[0] > 0), key=lambda g: (tuple(-s for s in score(g)), g.label.casefold()))
    return ranked[:TOP]
