"""What changed in ServiceTitan, read into the ledger's mirror (``st_bookings``, ``st_jobs``,
``job_events``) — incrementally, so that the cost of a run follows what changed, not history.

``ServiceTitanReads(conn)`` has one method per read; ``services.qualify`` runs them in this
order (``push`` uses the first alone, through ``tracking.index``):

1. **Bookings** — the booking provider's list (the only bookings an app bound to a provider
   surely may read, api/servicetitan.md §8) with ``modifiedOnOrAfter`` = the stored watermark
   − ``BOOKINGS_OVERLAP``, paged by ``sort=+Id`` (a row modified while we page does not move,
   so no row is skipped; new matches only add duplicates). Rows are deduplicated by id and by
   ``modifiedOn`` (an older copy never overwrites a newer one). The sort order is not trusted
   for anything else: the new watermark is the largest ``modifiedOn`` over **all** rows read
   (ties included: ``modifiedOnOrAfter`` is inclusive, so equal ones are read again next time,
   never skipped), minus the time the paging took, so a row modified while we paged — dated
   after the paging began — is read by the next run. The overlap (5 minutes) covers
   ServiceTitan writes committed later than the ``modifiedOn`` they carry. Through quiet
   periods the watermark still moves: ServiceTitan's clock, as a lower bound relative to ours
   (``CLOCK_OFFSET_POSITION``: the watermark minus our time at the read that set it; only
   durations of our clock are used, so skew does not matter), says how far the next read may
   start — else a run would re-read the last five minutes before the last change for ever. A **full** read
   lists every booking of the provider (no filter): ⌈bookings ÷ page size⌉ requests.
2. **Job history** — ``export/job-history`` from its stored ``continueFrom``: a row per job whose
   history changed, with **all** its entries, so a status held for seconds between two runs
   (Completed → InProgress, Scheduled → Hold → Scheduled) is still seen. Rows are kept in
   memory until step 3 says which jobs are ours. Without the scope (``tn.jpm.jobhistory:r``;
   a 403) the run goes on without it (``history_available`` = False): statuses are then the
   ones stsync sees, and ``completedOn`` keeps Completed durable.
3. **Jobs** — ``export/jobs`` from its stored ``continueFrom`` (includeRecentChanges, so no
   15-minute lag; repeated rows are harmless). Chosen over ``jobs?ids=`` for jobs already
   known because its cost with nothing changed is **one request however many jobs are
   open** (``ids`` takes 50 per request: 10,000 open bookings with 3,000 open jobs would be 60
   requests a run), and because it also brings what happens to jobs whose referral is already
   settled (a refund, a cancellation after completion) — what ``report`` needs — at no extra
   request. It is tenant-wide: rows of jobs not booked from one of the provider's bookings
   (``bookingId`` not in ``st_bookings``) are dropped; their number follows the tenant's
   activity since the last run, not the age of the campaign.
4. **Jobs by id** (``ids``, ≤ 50 per request) only for jobs the ledger does not hold yet
   (a booking just converted whose job the feed did not bring), the jobs of referrals being
   held (their dates are checked again before the hold can end: a job whose ``createdOn`` or
   ``completedOn`` moved has its history read again, ``GET jobs/{id}/history``), and, in a
   full read, every job of an open booking.
5. **History stored** for the jobs now known (those of step 3 and 4); its position saved.

Positions (``sync_positions``): ``BOOKINGS_POSITION`` (an ISO timestamp: only ever moved
forward, so two runs reading at once never lose a change), ``JOBS_POSITION`` and
``HISTORY_POSITION`` (``continueFrom`` tokens, saved after the rows they cover are stored).
A feed without a token starts from a date ``FEED_START_BACK`` ago. ``FULL_READ_AT`` (kv) is
when the last full read ended, ``READ_AT`` (kv) when the last read of all five steps did.

**When a read is full** (``full_read_reason``): when asked (``qualify --full``), when a
position is missing (the first run, a new ledger), or when the last full read is older than
``FULL_READ_EVERY`` (7 days). Seven days because (a) a schedule that stopped for a week has a
gap whose tenant-wide feeds may well cost more than re-reading the open bookings, (b) an
export token may not live for ever (ServiceTitan documents no lifetime), and (c) the feeds
say nothing of deleted records: Fivetran re-imports ServiceTitan weekly for the same reason
(api/servicetitan.md §7). A full read also continues the feeds, so a status passed through
since the last run is still seen. An export token ServiceTitan refuses (HTTP 400) restarts
that feed from a date and makes the read full.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from stsync.errors import AuthError, ServiceTitanApiError
from stsync.logs import get_logger
from stsync.storage.ledger import BookingRow, JobRow, iso_utc, parse_utc, utc_now
from stsync.tracking.rule import CANCELED, event_status

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.servicetitan.models import Booking, Job, JobHistory

log = get_logger(__name__)

BOOKINGS_OVERLAP = timedelta(minutes=5)
FULL_READ_EVERY = timedelta(days=7)
FEED_START_BACK = timedelta(days=1)
STORE_BATCH = 500  # rows per ledger transaction while paging

BOOKINGS_POSITION = "servicetitan.bookings.modified_on"
# A lower bound of ServiceTitan's clock minus ours, in ms, from the bookings read so far.
CLOCK_OFFSET_POSITION = "servicetitan.clock_offset_ms"
JOBS_POSITION = "servicetitan.export.jobs"
HISTORY_POSITION = "servicetitan.export.job_history"
FULL_READ_AT = "servicetitan.full_read_at"
READ_AT = "servicetitan.read_at"  # kv: when the last read (qualify's or report --refresh's) ended


@dataclass
class ReadReport:
    """What one run read. ``requests`` counts ServiceTitan API requests (pages, batches)."""

    full: bool = False
    full_reason: str | None = None
    bookings_read: int = 0
    jobs_read: int = 0
    history_rows_read: int = 0
    history_available: bool = True
    requests: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "full": self.full,
            "full_reason": self.full_reason,
            "bookings_read": self.bookings_read,
            "jobs_read": self.jobs_read,
            "history_rows_read": self.history_rows_read,
            "history_available": self.history_available,
            "requests": self.requests,
            "notes": list(self.notes),
        }


def booking_row(booking: Booking, read_at: str) -> BookingRow:
    return BookingRow(
        booking_id=booking.id,
        external_id=booking.external_id,
        status=booking.status,
        job_id=booking.job_id,
        created_on=iso_utc(booking.created_on),
        modified_on=iso_utc(booking.modified_on),
        read_at=read_at,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class ServiceTitanReads:
    """The reads of one run (see the module docstring). Not thread-safe: one run, one thread
    (``tracking.index`` serializes push's workers around ``read_bookings``)."""

    def __init__(self, conn: Connection, report: ReadReport | None = None) -> None:
        self.conn = conn
        self.ledger = conn.ledger
        self.st = conn.servicetitan
        self.report = report or ReadReport()
        self._history_rows: dict[int, JobHistory] = {}
        self._history_token: str | None = None
        self._dates_moved: set[int] = set()
        self.bookings_returned: set[int] = set()  # by read_bookings(full=True)
        self.newest_booking: datetime | None = None  # the largest modifiedOn read_bookings saw
        self._requests_at_start = self._requests_made()

    # -- when a read must be full --------------------------------------------------------
    def full_read_reason(self, *, asked: bool = False) -> str | None:
        if asked:
            return "asked for (--full)"
        if self.ledger.get_position(BOOKINGS_POSITION) is None:
            return "no bookings watermark yet (first run)"
        if self.ledger.get_position(JOBS_POSITION) is None:
            return "no jobs feed position yet (first run)"
        last = parse_utc(self.ledger.get(FULL_READ_AT))
        if last is None:
            return "no full read recorded yet"
        age = _now() - last
        if age > FULL_READ_EVERY:
            return f"the last full read was {age.days} days ago (more than {FULL_READ_EVERY.days})"
        return None

    def mark_full_read(self) -> None:
        self.ledger.put(FULL_READ_AT, utc_now())

    # -- 1. bookings ------------------------------------------------------------------------
    def read_bookings(self, *, full: bool, since: datetime | None = None) -> int:
        """The provider's bookings changed since the watermark (all of them when ``full`` or
        when there is no watermark yet) into ``st_bookings``. ``since`` replaces the stored
        watermark − overlap (an index re-read within one run). → rows read."""
        started = time.monotonic()
        started_at = _now()
        offset = _as_int(self.ledger.get_position(CLOCK_OFFSET_POSITION))
        if since is None and not full:
            watermark = parse_utc(self.ledger.get_position(BOOKINGS_POSITION))
            if watermark is not None:
                if offset is not None:
                    # Time has passed on ServiceTitan's clock too: what it committed before
                    # (our now + the offset) − overlap has been read, even if nothing changed.
                    watermark = max(watermark, started_at + timedelta(milliseconds=offset))
                since = watermark - BOOKINGS_OVERLAP
        read_at = utc_now()
        newest: datetime | None = None
        count = 0
        batch: list[BookingRow] = []
        try:
            for booking in self.st.list_bookings(self.conn.booking_provider, modified_on_or_after=since, sort="+Id"):
                count += 1
                if since is None:
                    self.bookings_returned.add(booking.id)
                if booking.modified_on is not None and (newest is None or booking.modified_on > newest):
                    newest = booking.modified_on
                batch.append(booking_row(booking, read_at))
                if len(batch) >= STORE_BATCH:
                    self.ledger.upsert_bookings(batch)
                    batch = []
        except ServiceTitanApiError as exc:
            if exc.status == 404:
                # The provider's path itself is unknown: "Booking Provider Value is incorrect".
                self.st.check_booking_provider(self.conn.booking_provider)
            raise
        except AuthError:
            self.st.check_booking_provider(self.conn.booking_provider)
            raise
        self.ledger.upsert_bookings(batch)
        elapsed = timedelta(seconds=time.monotonic() - started)
        if newest is not None:
            # ServiceTitan's clock read at least `newest` when the paging ended, so at least
            # newest − elapsed when it began: everything committed before that (less the
            # overlap) has been read. The same bound, relative to our clock, carries the
            # watermark forward through quiet periods (durations only: no clock skew).
            settled = newest - elapsed
            self.ledger.advance_position(BOOKINGS_POSITION, iso_utc(settled))  # type: ignore[arg-type]
            self.ledger.advance_number(CLOCK_OFFSET_POSITION, int((settled - started_at) / timedelta(milliseconds=1)))
        elif offset is not None:
            self.ledger.advance_position(
                BOOKINGS_POSITION, iso_utc(started_at + timedelta(milliseconds=offset))  # type: ignore[arg-type]
            )
        elif since is None:
            # The provider has no booking at all: start the next read from a day ago by our
            # clock (clock skew beyond a day is not plausible).
            self.ledger.advance_position(BOOKINGS_POSITION, iso_utc(started_at - FEED_START_BACK))  # type: ignore[arg-type]
        self.report.bookings_read += count
        if newest is not None and (self.newest_booking is None or newest > self.newest_booking):
            self.newest_booking = newest
        return count

    # -- 2. job history (kept in memory until the jobs are known) -----------------------------
    def read_history_feed(self) -> None:
        position = self.ledger.get_position(HISTORY_POSITION)
        try:
            for page in self._feed(self.st.export_job_history, position, HISTORY_POSITION):
                for row in page.data:
                    if row.job_id is not None:
                        self._history_rows[row.job_id] = row  # a later row has every entry again
                        self.report.history_rows_read += 1
                self._history_token = page.continue_from or self._history_token
        except AuthError as exc:
            # Most likely the app lacks tn.jpm.jobhistory:r. If credentials are the problem,
            # the next read fails the same way and stops the run.
            self.report.history_available = False
            self.report.notes.append(
                "ServiceTitan refused the job history export (the app may lack the scope tn.jpm.jobhistory:r): "
                "a status held only between two runs can be missed; completedOn still marks Completed"
            )
            log.warning("job history export refused: %s", exc)

    # -- 3. jobs feed -----------------------------------------------------------------------
    def read_jobs_feed(self) -> None:
        position = self.ledger.get_position(JOBS_POSITION)
        for page in self._feed(self.st.export_jobs, position, JOBS_POSITION):
            candidates = [job for job in page.data if job.active]
            known_bookings = self.ledger.booking_ids_known(j.booking_id for j in candidates if j.booking_id is not None)
            known_jobs = set(self.ledger.jobs_for(j.id for j in candidates))
            ours = [j for j in candidates if j.booking_id in known_bookings or j.id in known_jobs]
            with self.ledger.transaction() as tx:
                self._store_jobs(ours, tx)
                if page.continue_from:
                    self.ledger.set_position(JOBS_POSITION, page.continue_from, conn=tx)

    # -- 4. jobs by id --------------------------------------------------------------------------
    def read_jobs(self, job_ids: Iterable[int], *, check_dates: bool = False) -> set[int]:
        """Jobs by id (batches of 50) into ``st_jobs``. ``check_dates``: a job whose
        ``createdOn`` or ``completedOn`` differs from the stored one has its history read
        again after step 5. → the ids ServiceTitan returned."""
        ids = list(dict.fromkeys(int(i) for i in job_ids))
        if not ids:
            return set()
        before = self.ledger.jobs_for(ids) if check_dates else {}
        jobs = self.st.get_jobs(ids)
        with self.ledger.transaction() as tx:
            self._store_jobs(jobs, tx)
        for job in jobs:
            old = before.get(job.id)
            if old is None:
                continue
            if _moved(old.created_on, iso_utc(job.created_on)) or _moved(old.completed_on, iso_utc(job.completed_on)):
                self._dates_moved.add(job.id)
        return {job.id for job in jobs}

    # -- 5. history stored -----------------------------------------------------------------------
    def store_history(self) -> None:
        rows = self._history_rows
        if rows:
            known = self.ledger.jobs_for(rows)
            with self.ledger.transaction() as tx:
                for job_id, row in rows.items():
                    if job_id in known and row.active:
                        self.ledger.replace_job_history(job_id, _history_events(row), conn=tx)
                if self._history_token:
                    self.ledger.set_position(HISTORY_POSITION, self._history_token, conn=tx)
        elif self._history_token:
            self.ledger.set_position(HISTORY_POSITION, self._history_token)
        for job_id in sorted(self._dates_moved):
            # ServiceTitan's dates for this job changed under us: what we hold of its history is stale.
            try:
                history = self.st.get_job_history(job_id)
            except AuthError:
                self.report.history_available = False
                continue
            self.ledger.replace_job_history(job_id, _history_events(history))
            self.report.history_rows_read += 1

    def finish(self) -> ReadReport:
        """The report, with the requests this run's reads made (when the client counts them);
        the time it ended is kept (``READ_AT``: how fresh the mirror is)."""
        self.report.requests = self._requests_made() - self._requests_at_start
        self.ledger.put(READ_AT, utc_now())
        return self.report

    def _requests_made(self) -> int:
        return int(getattr(self.st, "requests_made", 0) or 0)

    # -- plumbing -----------------------------------------------------------------------------
    def _feed(self, read, position: str | None, name: str):
        """Pages of an export feed from ``position`` (a date ``FEED_START_BACK`` ago when there is
        none); a token ServiceTitan refuses restarts it from that date."""
        start = position or _feed_start()
        try:
            yield from read(start)
        except ServiceTitanApiError as exc:
            if exc.status != 400 or position is None:
                raise
            self.report.notes.append(
                f"ServiceTitan refused the stored position of {name}; it was read again from {_feed_start()}"
            )
            log.warning("%s: stored position refused (%s); restarting from a date", name, exc)
            self.report.full = True
            self.report.full_reason = self.report.full_reason or f"the stored position of {name} was refused"
            yield from read(_feed_start())

    def _store_jobs(self, jobs: list[Job], tx) -> None:
        if not jobs:
            return
        stored = self.ledger.jobs_for(j.id for j in jobs)
        read_at = utc_now()
        rows = []
        for job in jobs:
            old = stored.get(job.id)
            modified = iso_utc(job.modified_on)
            if old is not None and old.modified_on and modified and modified < old.modified_on:
                continue  # an older copy (a repeated export row): what we hold is newer
            if job.job_status == CANCELED:
                canceled_on = old.canceled_on if old is not None and old.canceled_on else modified
            else:
                canceled_on = None
            rows.append(
                JobRow(
                    job_id=job.id,
                    booking_id=job.booking_id,
                    status=job.job_status,
                    created_on=iso_utc(job.created_on),
                    completed_on=iso_utc(job.completed_on),
                    canceled_on=canceled_on,
                    total=job.total,
                    invoice_id=job.invoice_id,
                    modified_on=modified,
                    read_at=read_at,
                )
            )
            if job.job_status and (old is None or old.status != job.job_status):
                self.ledger.observe_job_status(job.id, job.job_status, modified or read_at, conn=tx)
        self.ledger.upsert_jobs(rows, conn=tx)
        self.report.jobs_read += len(rows)


def _history_events(row: JobHistory) -> list[tuple[str, str, str]]:
    events = []
    for entry in row.history:
        status = event_status(entry.event_type)
        at = iso_utc(entry.date)
        if status is None or at is None:
            continue
        key = f"history:{entry.id}" if entry.id is not None else f"history:{status}:{at}"
        events.append((key, status, at))
    return events


def _moved(stored: str | None, now: str | None) -> bool:
    """A date ServiceTitan had and now says otherwise (a first completion is not a move)."""
    return stored is not None and now is not None and stored != now


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _feed_start() -> str:
    return (_now() - FEED_START_BACK).date().isoformat()

