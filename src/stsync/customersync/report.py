"""What a sync-customers run did (or, in a dry run, would do): ``SyncReport``.

Counts are customers, except ``return_fields_written``, which counts custom-field values
written. Failures and dry-run samples are kept up to a bound, whatever the tenant's size.

Besides the counts, the JSON lists:

- ``shared_customers``: every customer whose e-mail belongs to another customer's referrer, with that
  customer (``shares_referrer_of``): it carries that referrer's link and code;
- ``needs_fix_customers``: every customer ServiceTitan refused to update because of the customer's own
  custom field (``CustomFieldRefused``: the field, its value, why), whether refused in this
  run (also counted ``failed``) or left alone since (counted ``needs_fix``);
- ``unknown_customers``: customers whose referrer is in doubt after the grace period (the next run
  searches first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stsync.customersync.customer import NEEDS_FIX, Outcome
from stsync.errors import CustomFieldRefused
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
    shared: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    return_fields_written: int = 0
    failed: int = 0
    unknown: int = 0  # the referrer in doubt after the grace period
    failures: list[dict[str, Any]] = field(default_factory=list)  # the first FAILURES_KEPT
    # customer id → its entry; every one met (a customer can come twice: retries, then the feed)
    shared_customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    needs_fix_customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    unknown_customers: dict[int, dict[str, Any]] = field(default_factory=dict)
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
        elif outcome.kind == NEEDS_FIX:
            pass  # counted by customer (``needs_fix``): the retries phase and the feed may both bring it
        else:
            setattr(self, outcome.kind, getattr(self, outcome.kind) + 1)
        if outcome.kind == ReferrerState.FAILED and len(self.failures) < FAILURES_KEPT:
            self.failures.append({"customer_id": outcome.customer_id, "email": outcome.email, "error": outcome.error})
        if outcome.kind == ReferrerState.SHARED and outcome.shared_with is not None:
            self.shared_customers[outcome.customer_id] = {
                "customer_id": outcome.customer_id,
                "email": outcome.email,
                "shares_referrer_of": outcome.shared_with,
            }
        error = outcome.error or {}
        known = self.needs_fix_customers.get(outcome.customer_id)
        if (
            outcome.kind in (ReferrerState.FAILED, NEEDS_FIX)
            and error.get("type") == CustomFieldRefused.__name__
            and not (known is not None and known["refused_in_this_run"])
        ):
            self.needs_fix_customers[outcome.customer_id] = {
                "customer_id": outcome.customer_id,
                "email": outcome.email,
                "fields": error.get("fields") or [],
                "message": error.get("message"),
                "hint": error.get("hint"),
                "refused_in_this_run": outcome.kind == ReferrerState.FAILED,
            }
        if outcome.kind == ReferrerState.UNKNOWN:
            self.unknown_customers[outcome.customer_id] = {
                "customer_id": outcome.customer_id,
                "email": outcome.email,
                "message": error.get("message"),
                "waiting_for": error.get("waiting_for"),
            }
        if outcome.sample is not None and len(self.sample) < SAMPLE_SIZE:
            self.sample.append(outcome.sample)

    @property
    def needs_fix(self) -> int:
        """Customers left alone: ServiceTitan refused their own custom field before, and they
        did not change since (those refused in this run are counted ``failed``)."""
        return sum(1 for item in self.needs_fix_customers.values() if not item["refused_in_this_run"])

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
            "shared": self.shared,
            "skipped": self.skipped,
            "skipped_by_reason": dict(sorted(self.skipped_by_reason.items())),
            "return_fields_written": self.return_fields_written,
            "failed": self.failed,
            "needs_fix": self.needs_fix,
            "unknown": self.unknown,
        }

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.mode,
            "full": self.full,
            "dry_run": self.dry_run,
            "complete": self.complete,
            **self.counts,
            "failures": list(self.failures),
            "shared_customers": list(self.shared_customers.values()),
            "needs_fix_customers": list(self.needs_fix_customers.values()),
            "unknown_customers": list(self.unknown_customers.values()),
            "run_id": self.run_id,
        }
        if self.dry_run:
            data["sample"] = list(self.sample)
        return data
