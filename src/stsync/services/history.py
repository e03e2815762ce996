"""history: the ledger's push attempts, newest first (what `stsync history` shows).

Every attempt push-lead (or serve) made is there: the lead's e-mail, the externalId, and
the booking id or ServiceTitan's exact error. An attempt still marked ``intent`` is one
whose answer was never recorded (a run in progress, or one that was killed): the next push
of that lead settles it by looking the booking up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stsync.errors import UsageError
from stsync.storage.ledger import AttemptRecord
from stsync.storage.states import RunJob

if TYPE_CHECKING:
    from stsync.connection import Connection

MAX_LIMIT = 10_000


@dataclass
class HistoryReport:
    entries: list[AttemptRecord] = field(default_factory=list)  # newest first
    email: str | None = None
    failed_only: bool = False
    limit: int = 50
    last_run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "filters": {"email": self.email, "failed": self.failed_only, "limit": self.limit},
            "count": len(self.entries),
            "attempts": [_attempt_dict(entry) for entry in self.entries],
            "last_push_run": self.last_run,
        }


def _attempt_dict(attempt: AttemptRecord) -> dict[str, Any]:
    """One attempt as ``history --json`` prints it."""
    return {
        "id": attempt.id,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "email": attempt.email,
        "external_id": attempt.external_id,
        "outcome": attempt.outcome,
        "booking_id": attempt.booking_id,
        "error": attempt.error,
        "run_id": attempt.run_id,
    }


def push_history(
    conn: Connection, *, email: str | None = None, failed_only: bool = False, limit: int = 50
) -> HistoryReport:
    """The push attempts recorded for this connection, newest first, optionally filtered."""
    if limit < 1 or limit > MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, not {limit}")
    email = email.strip() if email else None
    if email is not None and not email:
        email = None
    ledger = conn.ledger
    entries = ledger.push_attempts(email=email, failed_only=failed_only, limit=limit)
    run = ledger.last_run(RunJob.PUSH)
    last_run = None
    if run is not None:
        last_run = {
            "id": run.id,
            "command": run.command,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "outcome": run.outcome,
            "counts": run.counts,
            "error": run.error,
        }
    return HistoryReport(entries=entries, email=email, failed_only=failed_only, limit=limit, last_run=last_run)
