"""`sync-customers`: ServiceTitan customers become campaign referrers, with return fields.

The seed's "Syncing Your Existing ServiceTitan Customers as Referrers" — Map Fields
(``[customer_sync.fields]``), Map Return Fields (``[customer_sync.return_fields]``), Confirm
(``--dry-run``), One-Time (``--once``) or Ongoing (``--ongoing``, which cron runs) — bounded
only by the two APIs' rate limits.

A run, in three phases:

1. **Contacts.** The contacts export feed, from its stored position, into the ledger's
   ``contacts`` table (each page and the position in one transaction). A customer the ledger
   already knows whose contacts changed (an e-mail added, changed, removed) is handled again
   right there: the customer feed alone would not bring it back.
2. **Retries.** Customers whose last attempt failed or was cut short (ledger rows ``pending``
   or ``failed``, or carrying an error) are read by id and handled again.
3. **Customers.** The customer export feed, page by page, joined with ``contacts_for(ids)``:
   memory holds a page or two whatever the tenant's size. A page's customers are handled by
   ``[limits] workers`` threads sharing the clients' rate limiters (Referral Factory's
   per-minute limit is the floor). So that the workers never wait, the next page is fetched
   and planned while the current one is being worked on; the page's skips and the feed
   position are committed together, in page order, once every customer of the page has
   its outcome in the ledger.

One customer:

- mapped (``mapping.referrer_request_for``), or skipped with a counted reason;
- no referrer yet → under a ``KeyLock`` on the e-mail the ledger is read again, an intent
  (``pending``) is recorded, then ``POST /users``. A 422 "already exists", or an answer lost,
  → the user is found by e-mail and adopted. After a crash (a ``pending`` row) the search
  comes first. An e-mail another customer's referrer already holds → skipped
  (``already_referrer``): one Referral Factory user per e-mail, one customer per user.
- a referrer whose mapped data changed (the fingerprint) → ``PUT /users/{id}``, never a
  second user;
- return fields: written only when the customer's values differ, read-modify-write on a
  fresh GET so every other custom field survives. The write moves the customer to the
  feed's tail; when the feed brings it back it is unchanged, not work.

Positions: ``--ongoing`` continues from the stored position (its first run is a full pass).
``--once`` and ``--full`` start a pass from the beginning — or resume the one a killed run
left unfinished (kv ``sync.customers.pass`` is set while such a pass is under way).
``--dry-run`` reads only: nothing is sent to Referral Factory, nothing written to
ServiceTitan or to the ledger (contacts are joined in a scratch ledger that is thrown away).
"""

from __future__ import annotations

from contextlib import nullcontext

import ctypes
import functools
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from stsync.errors import (
    AnswerLost,
    ApiError,
    DuplicateEmail,
    InvalidRecord,
    ReferralFactoryApiError,
    ServiceTitanApiError,
    StsyncError,
    UsageError,
)
from stsync.logs import get_logger
from stsync.storage.states import REFERRER_RETRY_STATES, ReferrerState, RunJob
from stsync.vocabulary import RUN_MODE_FOR, RunMode, SyncMode

if TYPE_CHECKING:
    from stsync.mapping.referrers import ReferrerRequest, Skip
    from stsync.referralfactory.models import User
    from stsync.connection import Connection
    from stsync.servicetitan.models import Customer, CustomerContact, CustomFieldType
    from stsync.storage.ledger import ContactRow, Ledger

log = get_logger(__name__)

# Creates of one referrer whose answer was lost (and proved not applied) before giving up.
MAX_CREATE_ATTEMPTS = 3

CUSTOMERS_FEED = "customers"
CONTACTS_FEED = "contacts"
# Set while a pass that began at the feed's start is unfinished: --once / --full resume it.
PASS_KEY = "sync.customers.pass"

UNCHANGED = "unchanged"  # an outcome only: the customer's referrer needed nothing
ALREADY_REFERRER = "already_referrer"
SAMPLE_SIZE = 10
PLAN_CHUNK = 50  # customers planned before the workers get them (the first page starts sooner)
FAILURES_KEPT = 20
# Where a customer's failure happened: a return-field failure is retried once per run (in
# the retries phase) and not again when the write brings the customer back into the feed.
STAGE_REFERRER = "referrer"
STAGE_RETURN_FIELDS = "return_fields"


class Progress(Protocol):
    """What a run reports to (the CLI passes its progress bar)."""

    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...


@dataclass
class SyncReport:
    """What a run did (or, with ``dry_run``, would do). Counts are customers, except
    ``return_fields_written``, which counts custom-field values written."""

    mode: str
    full: bool = False
    dry_run: bool = False
    examined: int = 0
    created: int = 0
    adopted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    return_fields_written: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first FAILURES_KEPT
    sample: list[dict[str, Any]] = field(default_factory=list)  # dry run: what would be sent
    complete: bool = False  # the feed was read to its end (False when --limit stopped the run)
    run_id: int | None = None

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_reason.values())

    @property
    def counts(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "created": self.created,
            "adopted": self.adopted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "return_fields_written": self.return_fields_written,
            "failed": self.failed,
        }

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.mode,
            "full": self.full,
            "dry_run": self.dry_run,
            "complete": self.complete,
            **self.counts,
            "failures": list(self.failures),
            "run_id": self.run_id,
        }
        if self.dry_run:
            data["sample"] = list(self.sample)
        return data


def resolve_mode(mode: str | None, config_mode: str) -> RunMode:
    """``--once`` / ``--ongoing`` win; otherwise ``[customer_sync] mode``."""
    if mode is None:
        return RUN_MODE_FOR[SyncMode(config_mode)]
    if mode not in tuple(RunMode):
        raise UsageError(f"mode must be {' or '.join(RunMode)}, not {mode!r}")
    return RunMode(mode)


def sync_customers(
    conn: "Connection",
    *,
    mode: RunMode | str | None = None,
    full: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
    command: str = "sync-customers",
) -> SyncReport:
    """Sync ServiceTitan customers into the campaign as referrers (see the module docstring).

    One run per connection at a time (``LockHeld``, exit 7); a dry run takes no lock, since
    it changes nothing. ``limit`` caps the customers read from the customer feed in this run;
    the next run carries on from there. Per-customer failures are counted and recorded (the
    caller exits 5); a run-level failure (authentication, configuration, a remote down past
    the retry budget) stops the run — what was done stays recorded — and is raised.
    """
    run_mode = resolve_mode(mode, conn.config.customer_sync.mode)
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    conn.require("tenant_id", "client_id", "campaign_id")
    if dry_run:
        from stsync.storage.ledger import Ledger

        # Contacts are joined on disk, not in memory, even for a preview: a scratch ledger.
        with tempfile.TemporaryDirectory(prefix="stsync-sync-dry-run-") as scratch:
            staging = Ledger.open(Path(scratch) / "contacts.sqlite3")
            try:
                return _CustomerSync(conn, run_mode, full, True, limit, progress, staging, command).run()
            finally:
                staging.close()
    with conn.run_lock(RunJob.SYNC, command=command):
        return _CustomerSync(conn, run_mode, full, False, limit, progress, conn.ledger, command).run()


@dataclass
class _Plan:
    """One customer, what the mapping made of it, and what the ledger knew before."""

    customer: "Customer"
    decision: "ReferrerRequest | Skip"
    record: Any  # ledger ReferrerRecord | None

    def emails(self) -> set[str]:
        """The e-mails this customer's handling may touch: the new one and the recorded one."""
        found = set()
        email = getattr(self.decision, "email", None)
        if email:
            found.add(email.strip().casefold())
        if self.record is not None and self.record.email:
            found.add(self.record.email.strip().casefold())
        return found


@dataclass
class _Outcome:
    customer_id: int
    kind: str  # ReferrerState created | adopted | updated | skipped | failed, or UNCHANGED
    reason: str | None = None
    email: str | None = None
    fields_written: int = 0
    error: dict[str, Any] | None = None
    sample: dict[str, Any] | None = None
    record_skip: bool = False  # a `skipped` row to commit with the page
    modified_on: Any = None  # the customer row's modifiedOn (ServiceTitan's clock)


@dataclass
class _Batch:
    """Customers handed to the workers, and the feed position to commit once they are done."""

    plans: list[_Plan]
    futures: list[Future]
    position: str | None = None

    @property
    def ids(self) -> set[int]:
        return {int(plan.customer.id) for plan in self.plans}


class _Prefetch:
    """A feed's pages, each fetched (in a thread of its own) while the one before is being
    handled, so no one waits for the feed. Yields ``(page, writes)``: ``writes`` is the count
    of this run's return-field writes when the page was fetched."""

    def __init__(self, pages: Iterator[Any], writes_so_far: Callable[[], int]) -> None:
        self._pages = pages
        self._writes_so_far = writes_so_far
        self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-feed")
        self._upcoming: Future = self._fetcher.submit(self._fetch)

    def _fetch(self) -> tuple[Any, int]:
        writes = self._writes_so_far()
        return next(self._pages, None), writes

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        while True:
            page, writes = self._upcoming.result()
            if page is None:
                return
            self._upcoming = self._fetcher.submit(self._fetch)
            yield page, writes

    def close(self) -> None:
        self._fetcher.shutdown(wait=True, cancel_futures=True)


class _StageFailure(Exception):
    """A per-customer failure, tagged with the stage it happened in (see STAGE_*)."""

    def __init__(self, error: StsyncError, stage: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.stage = stage


class _CustomerSync:
    def __init__(
        self,
        conn: "Connection",
        mode: RunMode,
        full: bool,
        dry_run: bool,
        limit: int | None,
        progress: Progress | None,
        staging: "Ledger",
        command: str,
    ) -> None:
        settings = conn.config.customer_sync
        self.conn = conn
        self.ledger = conn.ledger
        self.staging = staging  # where contacts are joined: the ledger, or a scratch one
        self.st = conn.servicetitan
        self.campaign_id = conn.campaign_id
        self.fields = settings.fields
        self.return_fields = dict(settings.return_fields)
        self.include_inactive = settings.include_inactive
        self.mode = mode
        self.full = full
        self.dry_run = dry_run
        self.limit = limit
        self.progress = progress
        self.command = command
        self.workers = max(1, int(conn.config.limits.workers))
        self.report = SyncReport(mode=mode, full=full, dry_run=dry_run)
        self.types: list["CustomFieldType"] = []
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._types_ready: Future | None = None
        self._read_from_feed = 0
        # ServiceTitan's modifiedOn of this run's first return-field write. A customer the feed
        # brings back unchanged with a modifiedOn at or after it is the echo of this run's own
        # write (or an edit made during the run that needs nothing): not counted twice.
        self._first_write_at: Any = None
        self._writes = 0  # return-field writes made by this run
        self._write_lock = threading.Lock()

    @property
    def rf(self):
        # Built on first use: a dry run, or a run with nothing to create, never needs it.
        return self.conn.referral_factory

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> SyncReport:
        report = self.report
        recording = (
            nullcontext()
            if self.dry_run
            else self.ledger.recorded_run(RunJob.SYNC, self.command, counts=lambda: report.counts, failed=lambda: bool(report.failed))
        )
        with recording as run_id:
            report.run_id = run_id
            customers_start, resuming = self._customers_start()
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sync") as pool:
                self._pool = pool
                # The custom-field types and the customer feed's first page are fetched while
                # the contacts are read (the types are waited for before any customer).
                self._types_ready = pool.submit(self._resolve_return_field_types)
                first_pages = _Prefetch(self.st.export_customers(customers_start), self._writes_so_far)
                try:
                    self._read_contacts(resuming)
                    self._retry_unfinished()
                    self._read_customers(customers_start, first_pages)
                    self._types_ready.result()  # a bad return field is reported even with no customer
                finally:
                    self._stop.set()
                    first_pages.close()
        return report

    def _resolve_return_field_types(self) -> None:
        """Custom-field names → typeIds, once per run, checked before anything is created."""
        if not self.return_fields:
            return
        from stsync.mapping.return_fields import return_field_update

        self.types = self.st.list_custom_field_types()
        # Writing every return field to a customer with no custom fields: raises ConfigError
        # (exit 3) for a name ServiceTitan does not have or a field that is not Text.
        return_field_update(SimpleNamespace(custom_fields=[]), {name: "-" for name in self.return_fields}, self.types)

    def _customers_start(self) -> tuple[str | None, bool]:
        """Where the customer feed starts, and whether an unfinished pass is being resumed."""
        from stsync.storage.ledger import utc_now

        stored = self.ledger.get_position(CUSTOMERS_FEED)
        if self.mode == RunMode.ONGOING and not self.full:
            return stored, False
        if self.ledger.get(PASS_KEY):
            return stored, True
        if not self.dry_run:
            # Position first, then the flag: a crash in between leaves a fresh start, never
            # a flag pointing at an old position.
            with self.ledger.transaction() as tx:
                self.ledger.set_position(CUSTOMERS_FEED, None, conn=tx)
            self.ledger.put(PASS_KEY, utc_now())
        return None, False

    # -- phase 1: contacts ----------------------------------------------------------------
    def _read_contacts(self, resuming: bool) -> None:
        if self.dry_run or (self.full and not resuming):
            start = None  # the scratch ledger starts empty; --full re-reads everything
        else:
            start = self.ledger.get_position(CONTACTS_FEED)
        pages = _Prefetch(self.st.export_customer_contacts(start), self._writes_so_far)
        try:
            for page, _ in pages:
                rows = [_contact_row(c) for c in _latest_by_id(page.data) if c.customer_id is not None]
                self._recheck_customers_whose_contacts_changed(rows)
                with self.staging.transaction() as tx:
                    if rows:
                        self.staging.upsert_contacts(rows, conn=tx)
                    if not self.dry_run and page.continue_from:
                        self.ledger.set_position(CONTACTS_FEED, page.continue_from, conn=tx)
        finally:
            pages.close()

    def _recheck_customers_whose_contacts_changed(self, rows: Sequence[Any]) -> None:
        """Known customers whose contacts this page changes are handled again now, with the
        page's contacts laid over the stored ones. Before the page is committed: a crash
        here re-reads the page, and the change is still a change."""
        by_customer: dict[int, list[Any]] = {}
        for row in rows:
            by_customer.setdefault(row.customer_id, []).append(row)
        if not by_customer:
            return
        stored = self.ledger.contacts_for(list(by_customer))
        changed = [cid for cid, fresh in by_customer.items() if _contacts_differ(stored.get(cid, []), fresh)]
        known = [cid for cid in changed if self.ledger.get_referrer(cid) is not None]
        if not known:
            return
        joined = self.staging.contacts_for(known)
        contacts = {cid: _overlay(joined.get(cid, []), by_customer[cid]) for cid in known}
        for start in range(0, len(known), self.st.page_size):
            batch = known[start : start + self.st.page_size]
            self._commit(self._handle_batch(self.st.get_customers(batch), contacts), None)

    # -- phase 2: retries ------------------------------------------------------------------
    def _retry_unfinished(self) -> None:
        ids = [r.customer_id for r in self.ledger.referrers_to_retry()]
        for start in range(0, len(ids), self.st.page_size):
            batch = ids[start : start + self.st.page_size]
            customers = self.st.get_customers(batch)
            contacts = self.staging.contacts_for([c.id for c in customers])
            self._commit(self._handle_batch(customers, contacts, retrying=True), None)

    # -- phase 3: customers ----------------------------------------------------------------
    def _read_customers(self, start: str | None, first_pages: "_Prefetch") -> None:
        position = start
        pages = first_pages
        try:
            while True:
                position, writes_at_last_fetch, stopped = self._read_pages(pages, position)
                if stopped:
                    return
                if self._writes == writes_at_last_fetch:
                    break
                # Return-field writes made after the feed's last page was fetched moved those
                # customers past its end: read them now (they come back unchanged), so the
                # next run starts with nothing to do.
                pages.close()
                pages = _Prefetch(self.st.export_customers(position), self._writes_so_far)
        finally:
            pages.close()
        self.report.complete = True
        if not self.dry_run:
            self.ledger.put(PASS_KEY, "")

    def _read_pages(self, pages: "_Prefetch", position: str | None) -> tuple[str | None, int, bool]:
        """Handle the feed's pages to its end (or to ``--limit``). One page is planned and
        handed to the workers while the one before is still being worked on, so they never
        drain at a page boundary; positions are committed in page order, each once its page
        is done. Returns the position, the write count when the last page was fetched, and
        whether ``--limit`` stopped the run."""
        in_flight: deque[_Batch] = deque()
        writes_at_last_fetch = self._writes
        try:
            for page, writes_at_fetch in pages:
                customers = _latest_by_id(page.data)
                room = None if self.limit is None else self.limit - self._read_from_feed
                cut = room is not None and len(customers) > room
                if cut:
                    customers = customers[:room]
                self._read_from_feed += len(customers)
                # A customer still being handled in the page before (changed again since) waits
                # for it: under two different e-mails, the KeyLocks would not keep them apart.
                # A dry run has no KeyLocks at all: its pages go one at a time.
                if in_flight and (self.dry_run or not in_flight[-1].ids.isdisjoint(int(c.id) for c in customers)):
                    while in_flight:
                        self._finish_and_commit(in_flight.popleft())
                contacts = self.staging.contacts_for([c.id for c in customers])
                # A page cut short by --limit keeps the old position: the next run reads it again.
                in_flight.append(self._start_batch(customers, contacts, position=None if cut else page.continue_from))
                while len(in_flight) > 1:
                    self._finish_and_commit(in_flight.popleft())
                if cut or (self.limit is not None and self._read_from_feed >= self.limit and page.has_more):
                    while in_flight:
                        self._finish_and_commit(in_flight.popleft())
                    return position, writes_at_fetch, True
                position = page.continue_from or position
                writes_at_last_fetch = writes_at_fetch
            while in_flight:
                self._finish_and_commit(in_flight.popleft())
        finally:
            self._stop_if_abandoned(in_flight)
        return position, writes_at_last_fetch, False

    def _finish_and_commit(self, batch: _Batch) -> None:
        self._commit(self._finish_batch(batch), batch.position)
        _release_free_heap()

    def _stop_if_abandoned(self, in_flight: deque[_Batch]) -> None:
        """Leaving with batches still running (a failure): stop the workers at their next
        customer; their finished customers are recorded, the page positions are not."""
        if in_flight:
            self._stop.set()
            for batch in in_flight:
                for future in batch.futures:
                    future.cancel()

    def _writes_so_far(self) -> int:
        return self._writes

    def _commit(self, outcomes: Iterable[_Outcome], position: str | None) -> None:
        """A page's skips and the feed position, in one transaction."""
        if self.dry_run:
            return
        skips = [o for o in outcomes if o.record_skip]
        if not skips and not position:
            return
        with self.ledger.transaction() as tx:
            for skip in skips:
                self.ledger.upsert_referrer(
                    skip.customer_id, conn=tx, state=ReferrerState.SKIPPED, skip_reason=skip.reason, email=skip.email, error=None
                )
            if position:
                self.ledger.set_position(CUSTOMERS_FEED, position, conn=tx)

    # -- a batch of customers, concurrently ------------------------------------------------
    def _handle_batch(
        self, customers: Sequence["Customer"], contacts: dict[int, list[Any]], *, retrying: bool = False
    ) -> list[_Outcome]:
        return self._finish_batch(self._start_batch(customers, contacts, retrying=retrying))

    def _start_batch(
        self,
        customers: Sequence["Customer"],
        contacts: dict[int, list[Any]],
        *,
        retrying: bool = False,
        position: str | None = None,
    ) -> _Batch:
        """Plan the customers (main thread) and hand them to the workers as they are planned,
        a chunk at a time; returns once all are handed over. Customers sharing an e-mail in
        one chunk are handled in order by one worker; across chunks (and pages) the e-mail's
        KeyLock and the ledger read under it keep them apart. A dry run takes no lock: it
        hands the page over in one chunk."""
        assert self._pool is not None and self._types_ready is not None
        self._types_ready.result()  # an unknown return field fails the run before any customer
        plans: list[_Plan] = []
        futures: list[Future] = []
        ordered = _latest_by_id(customers)
        chunk = len(ordered) if self.dry_run else PLAN_CHUNK
        for start in range(0, len(ordered), max(1, chunk)):
            planned = [self._plan(c, contacts.get(int(c.id), [])) for c in ordered[start : start + chunk]]
            futures += [self._pool.submit(self._handle_group, group, retrying) for group in _groups_sharing_an_email(planned)]
            plans += planned
        return _Batch(plans, futures, position)

    def _finish_batch(self, batch: _Batch) -> list[_Outcome]:
        """Wait for a batch's customers; count their outcomes. A run-level failure (auth, a
        budget exhausted, a bug) stops every worker at its next customer and is raised; what
        they finished is recorded."""
        done, pending = wait(batch.futures, return_when=FIRST_EXCEPTION)
        failure = next((f.exception() for f in done if f.exception() is not None), None)
        if failure is not None:
            self._stop.set()
            for future in pending:
                future.cancel()
            wait(pending)
            raise failure
        by_customer = {o.customer_id: o for f in batch.futures for o in f.result()}
        outcomes = [by_customer[p.customer.id] for p in batch.plans if p.customer.id in by_customer]
        for outcome in outcomes:
            self._count(outcome)
        return outcomes

    def _plan(self, customer: "Customer", contacts: list[Any]) -> _Plan:
        from stsync.mapping.referrers import referrer_request_for

        decision = referrer_request_for(
            customer, contacts, self.fields, campaign_id=self.campaign_id, include_inactive=self.include_inactive
        )
        return _Plan(customer, decision, self.ledger.get_referrer(int(customer.id)))

    def _handle_group(self, group: list[_Plan], retrying: bool) -> list[_Outcome]:
        outcomes = []
        for plan in group:
            if self._stop.is_set():
                break
            outcomes.append(self._handle(plan, retrying))
            if self.progress is not None:
                self.progress.advance()
        return outcomes

    def _count(self, outcome: _Outcome) -> None:
        report = self.report
        if (
            outcome.kind == UNCHANGED
            and self._first_write_at is not None
            and outcome.modified_on is not None
            and outcome.modified_on >= self._first_write_at
        ):
            return
        report.examined += 1
        report.return_fields_written += outcome.fields_written
        if outcome.kind == ReferrerState.SKIPPED:
            reason = outcome.reason or ReferrerState.SKIPPED.value
            report.skipped_by_reason[reason] = report.skipped_by_reason.get(reason, 0) + 1
        else:
            setattr(report, outcome.kind, getattr(report, outcome.kind) + 1)
        if outcome.kind == ReferrerState.FAILED and len(report.failures) < FAILURES_KEPT:
            report.failures.append({"customer_id": outcome.customer_id, "email": outcome.email, "error": outcome.error})
        if outcome.sample is not None and len(report.sample) < SAMPLE_SIZE:
            report.sample.append(outcome.sample)

    # -- one customer ----------------------------------------------------------------------
    def _handle(self, plan: _Plan, retrying: bool) -> _Outcome:
        from stsync.mapping.referrers import Skip

        try:
            if isinstance(plan.decision, Skip):
                return self._skipped(plan, plan.decision.reason)
            return self._as_referrer(plan, plan.decision, retrying)
        except _StageFailure as failure:
            return self._failed(plan, failure.error, failure.stage)
        except (ApiError, InvalidRecord) as exc:
            return self._failed(plan, exc, STAGE_REFERRER)
        except AnswerLost as exc:
            # A create whose answer was lost and whose user the search does not find (yet):
            # recorded as failed; the next run searches first, then creates.
            return self._failed(plan, exc, STAGE_REFERRER)

    def _skipped(self, plan: _Plan, reason: str, *, record: Any = None) -> _Outcome:
        record = record if record is not None else plan.record
        email = getattr(plan.decision, "email", None)
        # A customer that has a referrer keeps it (stsync never deletes a Referral Factory
        # user); otherwise the skip and its reason are recorded, once.
        has_referrer = record is not None and record.rf_user_id is not None
        unchanged = record is not None and record.state == ReferrerState.SKIPPED and record.skip_reason == reason
        return _Outcome(
            int(plan.customer.id),
            ReferrerState.SKIPPED,
            reason=reason,
            email=email,
            record_skip=not (self.dry_run or has_referrer or unchanged),
        )

    def _failed(self, plan: _Plan, exc: StsyncError, stage: str) -> _Outcome:
        customer_id = int(plan.customer.id)
        error = _error_dict(exc, stage)
        email = getattr(plan.decision, "email", None)
        log.warning("customer %s (%s) failed: %s", customer_id, email, exc.message)
        if not self.dry_run:
            record = self.ledger.get_referrer(customer_id)
            if record is not None and record.rf_user_id is not None:
                # The referrer exists: keep its state, note what went wrong.
                self.ledger.upsert_referrer(customer_id, error=error)
            else:
                self.ledger.upsert_referrer(customer_id, state=ReferrerState.FAILED, email=email, error=error)
        return _Outcome(customer_id, ReferrerState.FAILED, email=email, error=error)

    def _as_referrer(self, plan: _Plan, request: "ReferrerRequest", retrying: bool) -> _Outcome:
        record = plan.record
        if record is not None and record.rf_user_id is not None:
            return self._existing(plan, request, record, retrying)
        if self.dry_run:
            return self._would_create(plan, request)
        from stsync.storage.locks import KeyLock

        with KeyLock(self.conn.paths, f"referrer:{self.campaign_id}:{request.email.strip().casefold()}"):
            # Another process may have got here first: read the ledger again under the lock.
            record = self.ledger.get_referrer(int(plan.customer.id))
            if record is not None and record.rf_user_id is not None:
                return self._existing(plan, request, record, retrying)
            holder = self._holder_of(request.email, int(plan.customer.id))
            if holder is not None:
                return self._skipped(plan, ALREADY_REFERRER, record=record)
            user, kind = self._create_or_adopt(plan, request, record)
            result = {
                "state": kind,
                "rf_user_id": user.id,
                "code": user.code,
                "url": user.url,
                "email": request.email,
                "fingerprint": request.fingerprint,
                "skip_reason": None,
                "error": None,
            }
            written, values = 0, None
            try:
                written, values = self._write_return_fields(plan.customer, user.code, user.url)
            finally:
                # The user exists: its record lands whatever happens to the return fields, in
                # the same commit as them when they were written (one fsync, not two).
                self._record(int(plan.customer.id), result, values)
        return _Outcome(int(plan.customer.id), kind, email=request.email, fields_written=written)

    def _holder_of(self, email: str, customer_id: int) -> Any:
        """The ledger row of *another* customer whose referrer has this e-mail, if any (in a
        dry run, also a customer this run would have enrolled with it)."""
        holder = self.ledger.referrer_by_email(email)
        if holder is not None and holder.customer_id != customer_id and holder.rf_user_id is not None:
            return holder
        if self.dry_run:
            would = self.staging.referrer_by_email(email)
            if would is not None and would.customer_id != customer_id:
                return would
        return None

    def _create_or_adopt(self, plan: _Plan, request: "ReferrerRequest", record: Any) -> tuple["User", str]:
        """The campaign user for this customer: found (after a crash, or known to the ledger)
        or created (intent recorded first). The caller records the result."""
        customer_id = int(plan.customer.id)
        user: User | None = None
        kind = ReferrerState.ADOPTED
        if record is not None and record.state in REFERRER_RETRY_STATES:
            # A previous attempt may have created the user before its answer was lost or
            # recorded: look before writing again.
            user = self.rf.find_user_by_email(self.campaign_id, request.email)
        if user is None:
            user = self._user_known_to_ledger(request.email)
        if user is None:
            self.ledger.upsert_referrer(
                customer_id,
                state=ReferrerState.PENDING,
                email=request.email,
                fingerprint=request.fingerprint,
                skip_reason=None,
                error=None,
            )
            user, kind = self._create_or_find(customer_id, request)
        return user, kind

    def _create_or_find(self, customer_id: int, request: "ReferrerRequest") -> tuple["User", str]:
        """POST /users; a lost answer is looked up by e-mail before the next try (the API
        contract: search before retrying a create), so a 503 costs a retry, not a failure."""
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            try:
                return self.rf.create_user(request.body), ReferrerState.CREATED
            except DuplicateEmail as exc:
                log.info("customer %s: %s is already in the campaign; adopting that user", customer_id, request.email)
                user = self.rf.find_user_by_email(self.campaign_id, request.email)
                if user is None:
                    raise ReferralFactoryApiError(
                        f"Referral Factory says {request.email} already exists in campaign {self.campaign_id}, "
                        "but searching the campaign for it finds nobody",
                        status=exc.status,
                        title=exc.title,
                        errors=exc.errors,
                        method=exc.method,
                        path=exc.path,
                        hint="the next run searches again; if it persists, look the e-mail up in Referral Factory",
                    ) from None
                return user, ReferrerState.ADOPTED
            except AnswerLost:
                user = self.rf.find_user_by_email(self.campaign_id, request.email)
                if user is not None:
                    return user, ReferrerState.CREATED
                if attempt == MAX_CREATE_ATTEMPTS:
                    raise
                log.info("customer %s: the create was lost and not applied; trying again", customer_id)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _user_known_to_ledger(self, email: str) -> "User | None":
        """A campaign user the ledger already knows by this e-mail (a pushed lead or
        referrer), read back by id: adopted without a create that would only fail."""
        for push in self.ledger.pushes_by_email(email):
            if push.rf_user_id is None:
                continue
            try:
                user = self.rf.get_user(int(push.rf_user_id))
            except ReferralFactoryApiError as exc:
                if exc.status == 404:
                    continue
                raise
            if user.campaign_id == self.campaign_id and (user.email or "").strip().casefold() == email.strip().casefold():
                return user
        return None

    def _existing(self, plan: _Plan, request: "ReferrerRequest", record: Any, retrying: bool) -> _Outcome:
        customer_id = int(plan.customer.id)
        code, url = record.code, record.url
        kind = UNCHANGED
        sample = None
        changes: dict[str, Any] | None = None
        if record.fingerprint != request.fingerprint:
            kind = ReferrerState.UPDATED
            body = _update_body(request)
            if self.dry_run:
                sample = _sample("update", plan.customer, request.email, referrer=body)
            else:
                user = self.rf.update_user(int(record.rf_user_id), body)
                code, url = user.code or code, user.url or url
                changes = {
                    "state": ReferrerState.UPDATED,
                    "email": request.email,
                    "fingerprint": request.fingerprint,
                    "code": code,
                    "url": url,
                    "error": None,
                }
        # A return-field write that failed is retried once per run (the retries phase), not
        # each time the feed brings the customer back.
        failed_here = (record.error or {}).get("stage") == STAGE_RETURN_FIELDS
        written, values = 0, None
        try:
            if retrying or not failed_here:
                written, values = self._write_return_fields(plan.customer, code, url, sample=sample)
                if self.dry_run and written and sample is None:
                    sample = _sample(
                        "write_return_fields", plan.customer, request.email, return_fields=self._return_values(code, url)
                    )
                if changes is None and record.error is not None:
                    changes = {"error": None}
        finally:
            if not self.dry_run and (changes or values):
                self._record(customer_id, changes, values)
        return _Outcome(
            customer_id,
            kind,
            email=request.email,
            fields_written=written,
            sample=sample,
            modified_on=plan.customer.modified_on,
        )

    def _would_create(self, plan: _Plan, request: "ReferrerRequest") -> _Outcome:
        customer_id = int(plan.customer.id)
        if self._holder_of(request.email, customer_id) is not None:
            return self._skipped(plan, ALREADY_REFERRER)
        # The scratch ledger remembers it, so a later customer with this e-mail is counted
        # as it would be: already a referrer.
        self.staging.upsert_referrer(customer_id, state=ReferrerState.PENDING, email=request.email)
        placeholders = {name: f"<{value} of the new referrer>" for name, value in self.return_fields.items()}
        sample = _sample("create", plan.customer, request.email, referrer=request.body, return_fields=placeholders)
        return _Outcome(customer_id, ReferrerState.CREATED, email=request.email, fields_written=len(placeholders), sample=sample)

    # -- return fields ---------------------------------------------------------------------
    def _return_values(self, code: str | None, url: str | None) -> dict[str, str]:
        from stsync.mapping.return_fields import return_values_for

        return return_values_for(self.return_fields, referral_link=url, referral_code=code)

    def _write_return_fields(
        self,
        customer: "Customer",
        code: str | None,
        url: str | None,
        *,
        sample: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, str] | None]:
        """Write the referrer's link and code onto the customer when they differ. Returns the
        number of values written, and the values the ledger should record (None when it has
        them already); the caller records them. Raises ``_StageFailure`` (the referrer's own
        state is kept)."""
        from stsync.mapping.return_fields import return_field_update

        values = self._return_values(code, url)
        if not values:
            return 0, None
        customer_id = int(customer.id)
        try:
            if return_field_update(customer, values, self.types) is None:
                return 0, self._unrecorded(customer_id, values)
            if self.dry_run:
                changed = _changed_values(customer, values, self.types)
                if sample is not None:
                    sample["return_fields"] = changed
                return len(changed), None
            # The feed's row may be stale: read-modify-write on the customer as it is now.
            fresh = self.st.get_customer(customer_id)
            body = return_field_update(fresh, values, self.types)
            if body is None:
                return 0, self._unrecorded(customer_id, values)
            changed = _changed_values(fresh, values, self.types)
            saved = self.st.update_customer(customer_id, body)
            self._note_own_write(saved.modified_on)
            if return_field_update(saved, values, self.types) is not None:
                raise ServiceTitanApiError(
                    f"ServiceTitan accepted the custom fields of customer {customer_id} but does not show "
                    f"the values written ({', '.join(values)})",
                    status=200,
                    title="custom fields not kept",
                    method="PATCH",
                    path=f"customers/{customer_id}",
                    hint="check the custom fields' type (Text) in ServiceTitan; the next run tries again",
                )
            return len(changed), values
        except (ApiError, InvalidRecord) as exc:
            raise _StageFailure(exc, STAGE_RETURN_FIELDS) from exc

    def _note_own_write(self, modified_on: Any) -> None:
        with self._write_lock:
            self._writes += 1
            if modified_on is None:
                return
            if self._first_write_at is None or modified_on < self._first_write_at:
                self._first_write_at = modified_on

    def _unrecorded(self, customer_id: int, values: dict[str, str]) -> dict[str, str] | None:
        """The customer already shows these values: the ledger should say so too (a crash may
        have come between a write and its record). None when it does."""
        if self.dry_run or self.ledger.get_return_fields(customer_id) == values:
            return None
        return values

    def _record(self, customer_id: int, referrer: dict[str, Any] | None, return_values: dict[str, str] | None) -> None:
        """A customer's referrer columns and return fields, in one commit."""
        with self.ledger.transaction() as tx:
            if referrer:
                self.ledger.upsert_referrer(customer_id, conn=tx, **referrer)
            for name, value in (return_values or {}).items():
                self.ledger.set_return_field(customer_id, name, value, conn=tx)


# -- helpers ----------------------------------------------------------------------------------


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None


def _release_free_heap() -> None:
    """Give the memory a page of customers used back to the OS. Ten threads allocate and
    free pages of customers in turn; glibc keeps what they free in per-thread arenas, so a
    50,000-customer run's RSS would creep up ~30 % though what it holds stays one or two
    pages. Cheap (about a millisecond per page); a no-op where there is no malloc_trim."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _latest_by_id(rows: Iterable[Any]) -> list[Any]:
    """Rows deduplicated by id, the last one winning (``includeRecentChanges`` may repeat a
    row), in the order of each id's last appearance."""
    latest: dict[int, Any] = {}
    for row in rows:
        latest.pop(int(row.id), None)
        latest[int(row.id)] = row
    return list(latest.values())


def _contact_row(contact: "CustomerContact") -> "ContactRow":
    from stsync.storage.ledger import ContactRow

    modified = contact.modified_on.isoformat() if contact.modified_on is not None else None
    return ContactRow(
        contact_id=int(contact.id),
        customer_id=int(contact.customer_id),  # type: ignore[arg-type]
        type=contact.type,
        value=contact.value,
        active=contact.active,
        modified_on=modified,
    )


def _contacts_differ(stored: Iterable["ContactRow"], fresh: Iterable["ContactRow"]) -> bool:
    def state(row: "ContactRow") -> tuple:
        return (row.type, row.value, bool(row.active))

    known = {row.contact_id: state(row) for row in stored}
    return any(known.get(row.contact_id) != state(row) for row in fresh)


def _overlay(stored: Iterable["ContactRow"], fresh: Iterable["ContactRow"]) -> list["ContactRow"]:
    merged = {row.contact_id: row for row in stored}
    merged.update({row.contact_id: row for row in fresh})
    return sorted(merged.values(), key=lambda row: row.contact_id)


def _groups_sharing_an_email(plans: Sequence[_Plan]) -> list[list[_Plan]]:
    """Plans that share an e-mail (new or recorded) go in one group, in page order, handled
    one after the other by one worker: the second sees what the first did."""
    parent = list(range(len(plans)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, plan in enumerate(plans):
        for email in plan.emails():
            if email in owner:
                parent[root(index)] = root(owner[email])
            else:
                owner[email] = index
    groups: dict[int, list[_Plan]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault(root(index), []).append(plan)
    return list(groups.values())


def _update_body(request: "ReferrerRequest") -> dict[str, Any]:
    """``PUT /users/{id}`` takes first_name, email and meta[] (api/referral-factory.md §5)."""
    return {key: request.body[key] for key in ("first_name", "email", "meta") if key in request.body}


def _changed_values(customer: Any, values: dict[str, str], types: Sequence[Any]) -> dict[str, str]:
    from stsync.mapping.return_fields import resolve_custom_field_type

    current: dict[int, str | None] = {}
    for custom in getattr(customer, "custom_fields", None) or []:
        current.setdefault(int(custom.type_id), custom.value)
    return {
        name: value for name, value in values.items() if current.get(int(resolve_custom_field_type(name, types).id)) != value
    }


def _sample(action: str, customer: Any, email: str | None, **parts: Any) -> dict[str, Any]:
    return {"action": action, "customer_id": int(customer.id), "customer_name": customer.name, "email": email, **parts}


def _error_dict(exc: StsyncError, stage: str) -> dict[str, Any]:
    to_dict = getattr(exc, "to_dict", None)
    detail = to_dict() if callable(to_dict) else {"type": type(exc).__name__, "message": exc.message}
    if exc.hint and "hint" not in detail:
        detail["hint"] = exc.hint
    return {"stage": stage, **detail}

