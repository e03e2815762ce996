"""What a sync-customers run did (or, in a dry run, would do): ``SyncReport``.

Counts are customers, except ``return_fields_written``, which counts custom-field values
written. Failures and dry-run samples are kept up to a bound, whatever the tenant's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stsync.customersync.customer import Outcome
from stsync.storage.states import ReferrerState
from stsync.vocabulary import RunMode

SAMPLE_SIZE = 10
FAILURES_KEPT = 20


@dataclass
class SyncReport:
    mode: RunMode
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

    def add(self, outcome: Outcome) -> None:
        """Count one customer's outcome."""
        self.examined += 1
        self.return_fields_written += outcome.fields_written
        if outcome.kind == ReferrerState.SKIPPED:
            reason = outcome.reason or ReferrerState.SKIPPED.value
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        else:
            setattr(self, outcome.kind, getattr(self, outcome.kind) + 1)
        if outcome.kind == ReferrerState.FAILED and len(self.failures) < FAILURES_KEPT:
            self.failures.append({"customer_id": outcome.customer_id, "email": outcome.email, "error": outcome.error})
        if outcome.sample is not None and len(self.sample) < SAMPLE_SIZE:
            self.sample.append(outcome.sample)

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
