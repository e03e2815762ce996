"""Which externalIds the booking provider already has: ``push-lead --new``'s answer to "does
this lead have a booking?" without one request per lead.

``BookingIndex(conn)`` is the ledger's ``st_bookings`` (every booking of the provider, by
externalId), brought up to date by ``tracking.reads`` — the whole list the first time, then
only what changed since the watermark (usually one request) — and refreshed again whenever it
is older than ``max_age`` (``INDEX_MAX_AGE``, 1 s) when a lead is about to be created — from
just before the newest ``modifiedOn`` the previous read saw (``IN_RUN_OVERLAP``), so a re-read
costs what changed in the last seconds, not the whole run's bookings again. One refresh serves
every worker: the first worker to find it stale reads, the others wait for that read and use
it. So that they rarely have to wait, a worker that finds the index past ``EARLY_REFRESH`` of
``max_age`` — still fresh — refreshes it while the others go on with it (if no refresh is
under way already): a refresh is a request or two, a few hundred rows parsed and stored,
and with every worker waiting for it once a second it cost a push a tenth of its creates.

What it guarantees, with ``services.push``'s per-externalId lock and ledger:

- a booking made by **stsync** (another run, ``serve``, ``push-lead --code``, a crashed run)
  is never made twice: the creator holds the externalId's lock from its look-up to its
  ledger record, so by the time a worker holds that lock the ledger says "booked" (or holds
  an unsettled intent, which is looked up one by one before anything is sent);
- a booking made **outside stsync** (Referral Factory's own integration, a second machine
  with its own ledger) is seen if it was committed before the index's last refresh began —
  at most ``max_age`` plus one request before our create. ServiceTitan has no conditional
  create and says nothing of ``externalId`` uniqueness (api/servicetitan.md §10 item 6, §11),
  so no client can close that window to zero: the per-lead look-up used before had one too
  (between its GET and its POST, and longer where a new booking is not listed by
  ``?externalId=`` at once — §11). ``max_age`` keeps it to about a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from stsync.errors import StsyncError
from stsync.logs import get_logger
from stsync.storage.ledger import utc_now
from stsync.tracking.reads import ServiceTitanReads, booking_row

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.servicetitan.models import Booking
    from stsync.storage.ledger import BookingRow

log = get_logger(__name__)

INDEX_MAX_AGE = 1.0  # seconds
# Past this fraction of max_age a worker refreshes the index ahead, without holding the others.
EARLY_REFRESH = 0.7
# Re-reads within one run start this much before the newest modifiedOn the previous read saw
# (the run's own bookings come back in that overlap; ServiceTitan writes committed later than
# the modifiedOn they carry are caught). The first read starts from the stored watermark.
IN_RUN_OVERLAP = timedelta(seconds=1)


class BookingIndex:
    def __init__(
        self, conn: Connection, *, max_age: float = INDEX_MAX_AGE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.conn = conn
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._read_started: float | None = None
        self._newest: datetime | None = None
        self.refreshes = 0

    def refresh(self) -> None:
        """Read what changed (everything the first time) into the ledger, now."""
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        started = self._clock()
        reads = ServiceTitanReads(self.conn)
        reads.read_bookings(full=False, since=self._newest - IN_RUN_OVERLAP if self._newest is not None else None)
        if reads.newest_booking is not None and (self._newest is None or reads.newest_booking > self._newest):
            self._newest = reads.newest_booking
        self._read_started = started
        self.refreshes += 1

    def ensure_fresh(self) -> None:
        """Refresh unless the last refresh began less than ``max_age`` ago; past
        ``EARLY_REFRESH`` of it, refresh ahead unless another worker already does."""
        if self._fresh():
            if self._fresh(self.max_age * EARLY_REFRESH) or not self._lock.acquire(blocking=False):
                return
            try:
                if not self._fresh(self.max_age * EARLY_REFRESH):  # nobody refreshed meanwhile
                    self._refresh_ahead()
            finally:
                self._lock.release()
            return
        with self._lock:
            if not self._fresh():  # another worker may have refreshed while we waited
                self._refresh_locked()

    def _refresh_ahead(self) -> None:
        try:
            self._refresh_locked()
        except StsyncError as exc:
            # The index is still fresh enough: this lead goes on with it, and the worker that
            # finds it stale reads again and meets the failure itself (e.g. a wrong provider).
            log.debug("refreshing the booking index ahead failed: %s", exc)

    def _fresh(self, max_age: float | None = None) -> bool:
        limit = self.max_age if max_age is None else max_age
        return self._read_started is not None and self._clock() - self._read_started <= limit

    def find(self, external_id: str, *, refresh: bool = True) -> BookingRow | None:
        """The provider's booking with this externalId (the oldest, should there be several)."""
        if refresh:
            self.ensure_fresh()
        rows = self.conn.ledger.bookings_with_external_id(external_id)
        return rows[0] if rows else None

    def add(self, booking: Booking) -> None:
        """A booking stsync just created or found: known at once, without a read."""
        self.conn.ledger.upsert_bookings([booking_row(booking, utc_now())])

