"""`stsync report`: what referrals brought in, and who brought it — the funnel and the money of
the referrals that joined in a period, from the ledger alone.

``referral_report(conn, since=…, until=…, by=…, refresh=False)``:

1. with ``refresh``, brings the ledger's mirror of ServiceTitan up to date first
   (``services.qualify.refresh``: the reads ``qualify`` makes — the bookings changed since the
   watermark, the job and job-history export feeds, jobs by id only where the ledger lacks
   one — and nothing else; no per-record crawl; the caller holds the qualify run lock), then
   names the referrers the ledger knows by id alone (``tracking.referrals.read_referrer_details``:
   one paged search of the campaign's referrers, only when some are unnamed; a failure there
   is a note, not the report's failure).
2. reads the referrals that joined in the period (``Ledger.referral_rows``: the referred leads
   stsync has seen — ``tracking.referrals`` — and any lead push among them), and every
   referrer the ledger knows (``Ledger.known_referrers``), in two queries;
3. counts them (``reporting.funnel``): the funnel, the outcomes, the revenue, per referrer or
   per month, the top referrers, the customers enrolled by customer sync who referred someone.

**The period** is a range of days, UTC, both ends included (default: the 90 days ending
today). A referral is in it when the day it **joined the campaign** (Referral Factory's
``signed_up_at``) is; a lead whose sign-up day was never known is placed by the day stsync
first saw it. What happened to it afterwards — its job, its revenue, even this morning —
counts in its period: cohorts, not activity.

Without ``refresh`` nothing is requested: the report is as fresh as the last ``qualify`` (or
``report --refresh``), and says when that was (``data_as_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from stsync.errors import StsyncError, UsageError
from stsync.reporting.funnel import ReferrerDirectory, Report, build_report, referral_of
from stsync.services.qualify import refresh as refresh_mirror
from stsync.storage.ledger import iso_utc, parse_utc
from stsync.tracking.reads import READ_AT, ReadReport
from stsync.tracking.referrals import read_referrer_details
from stsync.vocabulary import ReportGroup

if TYPE_CHECKING:
    from stsync.connection import Connection

DEFAULT_DAYS = 90
STALE_AFTER = timedelta(days=1)  # a mirror older than this is pointed out

REVENUE_NOTE = (
    "Revenue is each job's total (ServiceTitan's JobResponse \"Total amount of the job\"), summed over the jobs "
    "not canceled. The invoice's own total needs ServiceTitan's accounting API, which is outside the app's scopes "
    "and contract, so it is not read; jobs with an invoice id are counted, $0 jobs apart."
)
LEADS_NOTE = (
    "Referred leads are the ones stsync has seen (push-lead --new, serve's webhooks, single pushes), pushed or not."
)


@dataclass
class ReferralReport:
    """The report (``reporting.funnel.Report``) with how fresh its data is."""

    report: Report
    data_as_of: str | None  # when the last read of ServiceTitan into the ledger ended
    refreshed: ReadReport | None = None
    placed_by_first_seen: int = 0  # referrals without a known sign-up day
    referrers_unnamed: int = 0  # with refresh: referrers the ledger knew by id alone …
    referrers_named: int = 0  # … and those of them Referral Factory named
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = self.report.counts()
        counts["placed_by_first_seen"] = self.placed_by_first_seen
        if self.refreshed is not None:
            counts["servicetitan_requests"] = self.refreshed.requests
            counts["referrers_unnamed"] = self.referrers_unnamed
            counts["referrers_named"] = self.referrers_named
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = self.report.to_dict()
        data["notes"] = list(self.notes)
        data["data_as_of"] = self.data_as_of
        data["refresh"] = self.refreshed.to_dict() if self.refreshed is not None else None
        data["counts"] = self.counts()
        return data


def referral_report(
    conn: Connection,
    *,
    since: date | None = None,
    until: date | None = None,
    by: str | None = None,
    refresh: bool = False,
    full: bool = False,
    now: datetime | None = None,
) -> ReferralReport:
    """The report of the referrals that joined from ``since`` to ``until`` (see the module docstring)."""
    now = now or datetime.now(UTC)
    until = until or now.date()
    since = since or until - timedelta(days=DEFAULT_DAYS - 1)
    if until < since:
        raise UsageError(f"--until {until} is before --since {since}", hint="give the first day, then the last one")
    if by is not None and by not in tuple(ReportGroup):
        raise UsageError(f"--by {by!r} is not one of: {', '.join(ReportGroup)}")
    by = str(by) if by is not None else None  # the word itself, not its enum, in the report

    refreshed = refresh_mirror(conn, full=full) if refresh else None
    unnamed = named = 0
    naming_failed: str | None = None
    if refresh:
        try:
            unnamed, named = read_referrer_details(conn)
        except StsyncError as exc:
            naming_failed = exc.message
    ledger = conn.ledger
    rows = ledger.referral_rows(
        joined_from=iso_utc(datetime.combine(since, time.min, tzinfo=UTC)) or "",
        joined_before=iso_utc(datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC)) or "",
    )
    directory = ReferrerDirectory(rows, ledger.known_referrers())
    referrals = [referral_of(row, directory.referrer_of(row)) for row in rows]
    report = build_report(referrals, since=since, until=until, by=by)
    data_as_of = ledger.get(READ_AT)
    result = ReferralReport(
        report=report,
        data_as_of=data_as_of,
        refreshed=refreshed,
        placed_by_first_seen=sum(1 for row in rows if not row.joined_at_known),
        referrers_unnamed=unnamed,
        referrers_named=named,
    )
    result.notes = _notes(result, now)
    if naming_failed is not None:
        result.notes.append(f"The referrers' names could not be read from Referral Factory: {naming_failed}")
    report.notes = list(result.notes)
    return result


def _notes(result: ReferralReport, now: datetime) -> list[str]:
    notes = [LEADS_NOTE, REVENUE_NOTE]
    if result.placed_by_first_seen:
        notes.append(
            f"{result.placed_by_first_seen} referral(s) without a sign-up day from Referral Factory are placed by the day "
            "stsync first saw them."
        )
    unknown = result.report.unknown_referrer
    if unknown:
        notes.append(
            f"{unknown} referral(s) have no known referrer (pushed from a file or flags without one, or before stsync "
            "kept referrers)."
        )
    last_read = parse_utc(result.data_as_of)
    if last_read is None:
        notes.append(
            "ServiceTitan has not been read into the ledger yet: bookings, jobs and revenue show only what pushes "
            "recorded. Run `stsync report --refresh` (or `stsync qualify`)."
        )
    elif result.refreshed is None and now - last_read > STALE_AFTER:
        notes.append(
            f"ServiceTitan was last read {_age(now - last_read)} ago ({result.data_as_of}); `--refresh` reads what "
            "changed since."
        )
    if result.refreshed is not None:
        notes.extend(result.refreshed.notes)
    return notes


def _age(delta: timedelta) -> str:
    if delta >= timedelta(days=2):
        return f"{delta.days} days"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"
