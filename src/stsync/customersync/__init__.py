"""sync-customers' engine: ServiceTitan customers become Referral Factory referrers.

- ``customer``: what happens to ONE customer (plan → skip / create or adopt / update /
  write return fields), exactly once and recorded; no feed, no thread.
- ``pipeline``: the run (``SyncOptions`` → ``CustomerSync``): contacts, retries and the
  customer feed, pages fetched ahead, batches on a ``WorkPool``, page-wise commits,
  resumable positions.
- ``feeds``: the export feeds' pages fetched ahead, rows deduplicated, contacts as ledger rows.
- ``report``: ``SyncReport``, what a run did.

The use case (lock, dry-run scratch ledger) is ``services.sync.sync_customers``.
"""
