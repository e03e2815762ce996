"""What passes between the request handler, the worker and whoever watches them.

``Delivery`` is one lead of one accepted request, waiting for the worker. ``DeliveryEvent``
is what an observer (the CLI) is told: a request answered, or a queued delivery processed;
``report`` logs it (the token is never in it: messages are redacted) and tells the observer,
whose failure never breaks serving. ``ServeStats`` counts both sides under one lock; its
``as_counts()`` is what the serve run records in the ledger.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from stsync.logs import get_logger, redact
from stsync.storage.states import DeliveryOutcome

if TYPE_CHECKING:
    from stsync.leads import Lead

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One lead of one accepted request, waiting for the worker."""

    key: str
    event: str
    lead: Lead
    external_id: str | None
    received_at: float


@dataclass(frozen=True)
class DeliveryEvent:
    """A request answered (stage "received") or a queued delivery processed ("processed")."""

    stage: str  # "received" | "processed"
    status: int | None
    event: str | None
    key: str | None
    who: str | None
    outcome: str  # storage.states.DeliveryOutcome
    message: str
    booking_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Observer = Callable[[DeliveryEvent], None]


def report(event: DeliveryEvent, observer: Observer | None) -> None:
    """Log ``event`` and tell the observer; rendering must never break serving."""
    level = logging.WARNING if event.outcome in (DeliveryOutcome.REJECTED, DeliveryOutcome.FAILED) else logging.INFO
    shown = (event.stage, event.status or "-", event.event or "-", event.key or "-", redact(event.message))
    log.log(level, "serve %s %s %s %s: %s", *shown)
    if observer is not None:
        try:
            observer(event)
        except Exception:
            log.exception("serve: the observer failed")


@dataclass
class ServeStats:
    """Counts of one serve run; every update goes through a method (request threads and the
    worker update it concurrently)."""

    received: int = 0
    rejected: int = 0
    duplicates: int = 0
    processed: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_received(self, *, duplicate: bool) -> None:
        with self._lock:
            self.received += 1
            self.duplicates += int(duplicate)

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def count_processed(self, outcome: str) -> None:
        with self._lock:
            self.processed += 1
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.failed += int(outcome == DeliveryOutcome.FAILED)

    def as_counts(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": self.received,
                "rejected": self.rejected,
                "duplicates": self.duplicates,
                "processed": self.processed,
                "failed": self.failed,
                **{f"outcome_{name}": n for name, n in sorted(self.outcomes.items())},
            }
