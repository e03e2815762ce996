"""The sync-customers pipeline: every ServiceTitan customer handled once per pass, page by
page, at the pace of the two APIs' rate limits, resumable after a kill at any point.

What happens to one customer is ``customersync.customer``; this module decides which
customers are handled, in what order, on which thread, and what is committed when. A run,
in three phases:

1. **Contacts.** The contacts export feed, from its stored position, into the ledger's
   ``contacts`` table (each page and the position in one transaction). A customer the ledger
   already knows whose contacts changed (an e-mail added, changed, removed) is handled again
   right there: the customer feed alone would not bring it back.
2. **Retries.** Customers whose last attempt failed, was cut short or is in doubt (ledger
   rows ``pending``, ``unknown`` or ``failed``, or carrying an error) are read by id and
   handled again (``retrying``). A customer ServiceTitan refused because of its own custom
   field is left alone until it changes (``needs_fix``), unless ``--retry-failed``.
3. **Customers.** The customer export feed, page by page, joined with ``contacts_for(ids)``:
   memory holds a page or two whatever the tenant's size. A page's customers are handled by
   ``[limits] workers`` threads (a ``WorkPool``) sharing the clients' rate limiters
   (Referral Factory's per-minute limit is the floor). So that the workers never wait, the
   next page is fetched and planned while the current one is being worked on; the page's
   skips and the feed position are committed together, in page order, once every customer
   of the page has its outcome in the ledger. Customers sharing an e-mail within a chunk
   are handled one after the other by one worker; a customer still in flight in the page
   before makes the next page wait for it.

4. **Looks again.** Customers whose referrer create is in doubt (an answer lost, the user
   not found by search yet — or waiting for such a user of their e-mail) are handled again
   once the rest is done, with backoff, until the grace period ends (``stsync.lookup_grace``;
   never a second create in this run): found → counted as what they became; still absent →
   ``unknown``, for the next run.

A run-level failure (``errors.stops_run``) stops the pool at once (``WorkPool``: the first
failure in page order is raised): the customers finished are recorded, the positions of
pages not finished are not, so the next run reads them again.

Return-field writes move customers to the feed's tail. The run reads the feed on until the
writes made after its last page was fetched are read back too (they come back unchanged and
are not counted twice: a customer unchanged with a ``modifiedOn`` at or after the run's first
write is its echo), so the next ongoing run starts with nothing to do.

Positions: ``--ongoing`` continues from the stored position (its first run is a full pass).
``--once`` and ``--full`` start a pass from the beginning — or resume the one a killed run
left unfinished (kv ``sync.customers.pass`` is set while such a pass is under way).
``--limit`` caps the customers read from the customer feed; a page it cuts short keeps the
old position. ``--dry-run`` reads only: nothing is sent to Referral Factory, nothing written
to ServiceTitan or to the ledger (contacts are joined in the scratch ledger it is given).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stsync.customersync.customer import UNCHANGED, CustomerHandler, Outcome, Plan, record_skip, return_field_types
from stsync.customersync.feeds import Prefetch, contact_row, contacts_differ, latest_by_id, overlay
from stsync.customersync.report import SyncReport
from stsync.errors import UsageError
from stsync.logs import get_logger
from stsync.lookup_grace import GracePeriod, Rechecks
from stsync.progress import NO_PROGRESS, Progress
from stsync.storage.ledger import Ledger, utc_now
from stsync.storage.states import ReferrerState, RunJob
from stsync.vocabulary import RUN_MODE_FOR, RunMode, SyncMode
from stsync.workpool import WorkPool

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.servicetitan.models import Customer

_log = get_logger(__name__)

CUSTOMERS_FEED = "customers"
CONTACTS_FEED = "contacts"
# Set while a pass that began at the feed's start is unfinished: --once / --full resume it.
PASS_KEY = "sync.customers.pass"
PLAN_CHUNK = 50  # customers planned before the workers get them (the first page starts sooner)


@dataclass(frozen=True)
class SyncOptions:
    """What a sync-customers run is asked to do. ``mode`` None: ``[customer_sync] mode``
    decides. ``limit``: read at most this many customers from the customer feed (the next
    run carries on). ``retry_failed``: also try the customers whose own custom field
    ServiceTitan refused, though they did not change. ``command`` names the run in the
    ledger and the lock."""

    mode: RunMode | None = None
    full: bool = False
    dry_run: bool = False
    limit: int | None = None
    retry_failed: bool = False
    command: str = "sync-customers"

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in tuple(RunMode):
            raise UsageError(f"mode must be {' or '.join(RunMode)}, not {self.mode!r}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, not {self.limit}")

    def run_mode(self, config_mode: str) -> RunMode:
        """``--once`` / ``--ongoing`` win; otherwise ``[customer_sync] mode``."""
        return RunMode(self.mode) if self.mode is not None else RUN_MODE_FOR[SyncMode(config_mode)]


@dataclass
class _Batch:
    """Customers handed to the workers, and the feed position to commit once they are done."""

    plans: list[Plan]
    futures: list[Future]
    position: str | None = None

    @property
    def ids(self) -> set[int]:
        return {plan.customer_id for plan in self.plans}


class CustomerSync:
    """One run (see the module docstring): ``CustomerSync(...).run()``. The caller holds the
    connection's run lock (none for a dry run). ``staging`` is where contacts are joined:
    the ledger, or for a dry run a scratch ledger."""

    def __init__(
        self, conn: Connection, options: SyncOptions, *, staging: Ledger, progress: Progress = NO_PROGRESS
    ) -> None:
        self.conn = conn
        self.ledger = conn.ledger
        self.staging = staging
        self.st = conn.servicetitan
        self.return_fields = dict(conn.config.customer_sync.return_fields)
        self.mode = options.run_mode(conn.config.customer_sync.mode)
        self.full = options.full
        self.dry_run = options.dry_run
        self.limit = options.limit
        self.retry_failed = options.retry_failed
        self.command = options.command
        self.progress = progress
        self.workers = max(1, int(conn.config.limits.workers))
        self.report = SyncReport(mode=self.mode, full=self.full, dry_run=self.dry_run)
        self._pool: WorkPool | None = None
        self._types_ready: Future | None = None
        self._customers: CustomerHandler | None = None
        self._read_from_feed = 0
        # ServiceTitan's modifiedOn of this run's first return-field write. A customer the feed
        # brings back unchanged with a modifiedOn at or after it is the echo of this run's own
        # write (or an edit made during the run that needs nothing): not counted twice.
        self._first_write_at: Any = None
        self._writes = 0  # return-field writes made by this run
        self._write_lock = threading.Lock()
        # Customers whose referrer is in doubt, looked at again in phase 4 (counted then).
        self._in_doubt: dict[int, tuple[Plan, Outcome]] = {}

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> SyncReport:
        report = self.report
        recording = (
            nullcontext()
            if self.dry_run
            else self.ledger.recorded_run(
                RunJob.SYNC, self.command, counts=lambda: report.counts, failed=lambda: bool(report.failed or report.unknown)
            )
        )
        with recording as run_id:
            report.run_id = run_id
            customers_start, resuming = self._customers_start()
            with WorkPool(self.workers, name="sync") as pool:
                self._pool = pool
                # The custom-field types and the customer feed's first page are fetched while
                # the contacts are read (the types are waited for before any customer).
                self._types_ready = pool.submit(return_field_types, self.st, self.return_fields)
                first_pages = Prefetch(self.st.export_customers(customers_start), self._writes_so_far)
                try:
                    self._read_contacts(resuming)
                    self._retry_unfinished()
                    self._read_customers(customers_start, first_pages)
                    self._customer_handler()  # a bad return field is reported even with no customer
                    self._look_again()
                finally:
                    pool.stop()
                    first_pages.close()
                    for _, outcome in self._in_doubt.values():  # a stopped run: still in doubt
                        report.add(outcome)
                    self._in_doubt.clear()
        return report

    def _customer_handler(self) -> CustomerHandler:
        """The one-customer handler, once the return fields' types are known. An unknown
        return field fails the run here, before any customer."""
        if self._customers is None:
            assert self._types_ready is not None
            types = self._types_ready.result()
            self._customers = CustomerHandler(
                self.conn,
                types=types or (),
                dry_run=self.dry_run,
                staging=self.staging,
                on_write=self._note_own_write,
                run_id=self.report.run_id,
                retry_failed=self.retry_failed,
                grace=self._grace(),
            )
        return self._customers

    def _grace(self) -> GracePeriod:
        return GracePeriod(self.conn.config.limits.lookup_grace_seconds)

    def _customers_start(self) -> tuple[str | None, bool]:
        """Where the customer feed starts, and whether an unfinished pass is being resumed."""
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
        pages = Prefetch(self.st.export_customer_contacts(start), self._writes_so_far)
        try:
            for page, _ in pages:
                rows = [row for contact in latest_by_id(page.data) if (row := contact_row(contact)) is not None]
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
        changed = [cid for cid, fresh in by_customer.items() if contacts_differ(stored.get(cid, []), fresh)]
        known = [cid for cid in changed if self.ledger.get_referrer(cid) is not None]
        if not known:
            return
        joined = self.staging.contacts_for(known)
        contacts = {cid: overlay(joined.get(cid, []), by_customer[cid]) for cid in known}
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
    def _read_customers(self, start: str | None, first_pages: Prefetch) -> None:
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
                pages = Prefetch(self.st.export_customers(position), self._writes_so_far)
        finally:
            pages.close()
        self.report.complete = True
        if not self.dry_run:
            self.ledger.put(PASS_KEY, "")

    def _read_pages(self, pages: Prefetch, position: str | None) -> tuple[str | None, int, bool]:
        """Handle the feed's pages to its end (or to ``--limit``). One page is planned and
        handed to the workers while the one before is still being worked on, so they never
        drain at a page boundary; positions are committed in page order, each once its page
        is done. Returns the position, the write count when the last page was fetched, and
        whether ``--limit`` stopped the run."""
        in_flight: deque[_Batch] = deque()
        writes_at_last_fetch = self._writes
        try:
            for page, writes_at_fetch in pages:
                customers = latest_by_id(page.data)
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
            if in_flight:
                # Leaving with batches still running (a failure): the workers stop at their
                # next customer; what they finished is recorded, the page positions are not.
                assert self._pool is not None
                self._pool.stop()
        return position, writes_at_last_fetch, False

    def _finish_and_commit(self, batch: _Batch) -> None:
        self._commit(self._finish_batch(batch), batch.position)
        _release_free_heap()

    def _commit(self, outcomes: Iterable[Outcome], position: str | None) -> None:
        """A page's skips and the feed position, in one transaction."""
        if self.dry_run:
            return
        skips = [o for o in outcomes if o.record_skip]
        if not skips and not position:
            return
        with self.ledger.transaction() as tx:
            for skip in skips:
                record_skip(self.ledger, skip, conn=tx)
            if position:
                self.ledger.set_position(CUSTOMERS_FEED, position, conn=tx)

    # -- a batch of customers, concurrently ------------------------------------------------
    def _handle_batch(
        self, customers: Sequence[Customer], contacts: dict[int, list[Any]], *, retrying: bool = False
    ) -> list[Outcome]:
        return self._finish_batch(self._start_batch(customers, contacts, retrying=retrying))

    def _start_batch(
        self,
        customers: Sequence[Customer],
        contacts: dict[int, list[Any]],
        *,
        retrying: bool = False,
        position: str | None = None,
    ) -> _Batch:
        """Plan the customers (this thread) and hand them to the workers as they are planned,
        a chunk at a time; returns once all are handed over. Customers sharing an e-mail in
        one chunk are handled in order by one worker; across chunks (and pages) the e-mail's
        KeyLock and the ledger read under it keep them apart. A dry run takes no lock: it
        hands the page over in one chunk."""
        assert self._pool is not None
        handler = self._customer_handler()
        plans: list[Plan] = []
        futures: list[Future] = []
        ordered = latest_by_id(customers)
        chunk = len(ordered) if self.dry_run else PLAN_CHUNK
        for start in range(0, len(ordered), max(1, chunk)):
            planned = [handler.plan(c, contacts.get(int(c.id), [])) for c in ordered[start : start + chunk]]
            futures += [self._pool.submit(self._handle_group, group, retrying) for group in _groups_sharing_an_email(planned)]
            plans += planned
        return _Batch(plans, futures, position)

    def _finish_batch(self, batch: _Batch) -> list[Outcome]:
        """Wait for a batch's customers; count their outcomes. A run-level failure stops the
        pool and is raised (``WorkPool.wait``); what the workers finished is recorded."""
        assert self._pool is not None
        groups = self._pool.wait(batch.futures)
        by_customer = {o.customer_id: o for outcomes in groups if outcomes for o in outcomes}
        outcomes = []
        for plan in batch.plans:
            if plan.customer_id in by_customer:
                outcomes.append(by_customer[plan.customer_id])
                self._count(by_customer[plan.customer_id], plan)
        return outcomes

    def _handle_group(self, group: list[Plan], retrying: bool) -> list[Outcome]:
        assert self._pool is not None and self._customers is not None
        outcomes = []
        for plan in group:
            if self._pool.stopping:
                break
            outcomes.append(self._customers.handle(plan, retrying=retrying))
            self.progress.advance()
        return outcomes

    def _count(self, outcome: Outcome, plan: Plan | None = None) -> None:
        if outcome.kind == ReferrerState.UNKNOWN and plan is not None and outcome.in_doubt_since is not None:
            # Counted once phase 4 has looked again (``_look_again``).
            self._in_doubt[outcome.customer_id] = (plan, outcome)
            return
        if (
            (outcome.kind == UNCHANGED or (outcome.kind == ReferrerState.SHARED and not outcome.fields_written))
            and self._first_write_at is not None
            and outcome.modified_on is not None
            and outcome.modified_on >= self._first_write_at
        ):
            return  # the echo of this run's own write
        self.report.add(outcome)

    # -- phase 4: looks again -------------------------------------------------------------
    def _look_again(self) -> None:
        """Customers in doubt, handled again with backoff until the grace period ends (the
        handler never sends a create this run lost the answer to); each counted once, as
        what it became — or ``unknown``."""
        if not self._in_doubt:
            return
        assert self._pool is not None
        log_count = len(self._in_doubt)
        rechecks: Rechecks[int] = Rechecks(self._grace(), stop=self._pool.stop_event)
        for customer_id, (_, outcome) in self._in_doubt.items():
            assert outcome.in_doubt_since is not None
            rechecks.add(customer_id, outcome.in_doubt_since)
        handler = self._customer_handler()
        _log.info("sync: %d customer(s) in doubt after a lost answer; looking again", log_count)

        def check(customer_ids: Sequence[int]) -> list[bool]:
            plans = [handler.replan(self._in_doubt[cid][0]) for cid in customer_ids]
            futures = [self._pool.submit(self._handle_again, group) for group in _groups_sharing_an_email(plans)]  # type: ignore[union-attr]
            for outcomes in self._pool.wait(futures):  # type: ignore[union-attr]
                for outcome in outcomes or []:
                    plan = self._in_doubt[outcome.customer_id][0]
                    self._in_doubt[outcome.customer_id] = (plan, outcome)
            return [self._in_doubt[cid][1].kind == ReferrerState.UNKNOWN for cid in customer_ids]

        rechecks.run(check)
        for _, outcome in self._in_doubt.values():
            self._count(outcome)
        self._in_doubt.clear()

    def _handle_again(self, group: list[Plan]) -> list[Outcome]:
        assert self._customers is not None
        return [self._customers.handle(plan) for plan in group]

    # -- this run's own writes -------------------------------------------------------------
    def _note_own_write(self, modified_on: Any) -> None:
        with self._write_lock:
            self._writes += 1
            if modified_on is None:
                return
            if self._first_write_at is None or modified_on < self._first_write_at:
                self._first_write_at = modified_on

    def _writes_so_far(self) -> int:
        return self._writes


# -- helpers ----------------------------------------------------------------------------------


def _groups_sharing_an_email(plans: Sequence[Plan]) -> list[list[Plan]]:
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
    groups: dict[int, list[Plan]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault(root(index), []).append(plan)
    return list(groups.values())


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
