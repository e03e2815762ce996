"""history: the ledger's push attempts, newest first (what `stsync history` shows).

Every attempt push-lead (or serve) made is there: the lead's e-mail, the externalId, and
the booking id or ServiceTitan's exact error. An attempt still marked ``intent`` is one
whose answer was never recorded (a run in progress, or one that was killed): the next push
of that lead settles it by looking the booking up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stsync.errors import UsageError, error_summary
from stsync.storage.states import RunJob

if TYPE_CHECKING:
    from stsync.connection import Connection

MAX_LIMIT = 10_000


@dataclass(frozen=True)
class HistoryEntry:
    attempt_id: int
    started_at: str | None
    finished_at: str | None
    email: str | None
    external_id: str | None
    outcome: str
    booking_id: int | None
    error: dict[str, Any] | None
    run_id: int | None

    @property
    def error_text(self) -> str:
        return error_summary(self.error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.attempt_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "email": self.email,
            "external_id": self.external_id,
            "outcome": self.outcome,
            "booking_id": self.booking_id,
            "error": self.error,
            "run_id": self.run_id,
        }


@dataclass
class HistoryReport:
    entries: list[HistoryEntry] = field(default_factory=list)
    email: str | None = None
    failed_only: bool = False
    limit: int = 50
    last_run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "filters": {"email": self.email, "failed": self.failed_only, "limit": self.limit},
            "count": len(self.entries),
            "attempts": [entry.to_dict() for entry in self.entries],
            "last_push_run": self.last_run,
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
    attempts = ledger.push_attempts(email=email, failed_only=failed_only, limit=limit)
    entries = [
        HistoryEntry(
            attempt_id=a.id,
            started_at=a.started_at,
            finished_at=a.finished_at,
            email=a.email,
            external_id=a.external_id,
            outcome=a.outcome,
            booking_id=a.booking_id,
            error=a.error,
            run_id=a.run_id,
        )
        for a in attempts
    ]
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
