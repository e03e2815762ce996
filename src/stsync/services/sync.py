"""`sync-customers`: ServiceTitan customers become campaign referrers, with return fields.

The seed's "Syncing Your Existing ServiceTitan Customers as Referrers" — Map Fields
(``[customer_sync.fields]``), Map Return Fields (``[customer_sync.return_fields]``), Confirm
(``--dry-run``), One-Time (``--once``) or Ongoing (``--ongoing``, which cron runs) — bounded
only by the two APIs' rate limits. The engine is ``stsync.customersync``: the pipeline
(phases, feeds, batches, resumable positions) and one customer's handling.

This use case adds what a run needs around it: the connection's identity, one run per
connection at a time (``LockHeld``, exit 7), a launched campaign (a paused, draft or unknown
one is exit 3 with its fix, before any customer is read), and for a dry run — which takes no lock, since
it changes nothing — a scratch ledger to join the contacts in, thrown away afterwards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from stsync.checks.live import launched_campaign
from stsync.customersync.pipeline import CustomerSync, SyncOptions
from stsync.customersync.report import SyncReport
from stsync.progress import NO_PROGRESS, Progress
from stsync.storage.ledger import Ledger
from stsync.storage.states import RunJob

if TYPE_CHECKING:
    from stsync.connection import Connection


def sync_customers(conn: Connection, options: SyncOptions = SyncOptions(), *, progress: Progress = NO_PROGRESS) -> SyncReport:
    """Sync ServiceTitan customers into the campaign as referrers (``customersync.pipeline``).

    Per-customer failures are counted and recorded (the caller exits 5); a run-level failure
    (authentication, configuration, a remote down past the retry budget) stops the run —
    what was done stays recorded — and is raised.
    """
    conn.require("tenant_id", "client_id", "campaign_id")
    if options.dry_run:
        # Contacts are joined on disk, not in memory, even for a preview: a scratch ledger.
        with tempfile.TemporaryDirectory(prefix="stsync-sync-dry-run-") as scratch:
            staging = Ledger.open(Path(scratch) / "contacts.sqlite3")
            try:
                return CustomerSync(conn, options, staging=staging, progress=progress).run()
            finally:
                staging.close()
    with conn.run_lock(RunJob.SYNC, command=options.command):
        # Referrers can only join a launched campaign: a paused one would fail every customer
        # (and spend the Referral Factory budget doing it), so it stops the run here, once.
        launched_campaign(conn)
        return CustomerSync(conn, options, staging=conn.ledger, progress=progress).run()
