"""What passes between the request handler, the worker pool and whoever watches them.

``Delivery`` is one lead of one accepted request, waiting for a worker; it is recorded in the
ledger (``Ledger.admit_delivery``) before it is answered 202 and rebuilt from that record
after a restart (``Delivery.from_record``). Its ``lanes`` — the user's id, referral code and
e-mail — are what the pool keeps in order: two deliveries sharing one never run at once.
``DeliveryEvent`` is what an observer (the CLI) is told: a request answered, or a queued
delivery processed; ``report`` logs it (the token is never in it: messages are redacted)
and tells the observer, whose failure never breaks serving. ``ServeStats`` counts both
sides under one lock; its ``as_counts()`` is what the serve run records in the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from stsync.leads import Lead
from stsync.logs import get_logger, redact
from stsync.storage.states import DeliveryOutcome

if TYPE_CHECKING:
    from stsync.storage.ledger import DeliveryRecord

log = get_logger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One lead of one accepted request, waiting for a worker."""

    key: str
    event: str
    lead: Lead
    external_id: str | None
    received_at: float

    @property
    def lanes(self) -> frozenset[str]:
        """The names of the user this delivery is about; deliveries sharing one run in order."""
        return lanes_of(self.lead)

    @classmethod
    def from_record(cls, record: DeliveryRecord) -> Delivery:
        """The delivery a ledger record keeps (``record.lead`` must be set)."""
        assert record.lead is not None and record.event is not None
        known = {f.name for f in fields(Lead)}
        lead = Lead(**{name: value for name, value in record.lead.items() if name in known})
        return cls(key=record.key, event=record.event, lead=lead, external_id=record.external_id, received_at=time.time())


def lanes_of(lead: Lead) -> frozenset[str]:
    names = set()
    if lead.rf_user_id is not None:
        names.add(f"id={lead.rf_user_id}")
    if lead.referral_code:
        names.add(f"code={lead.referral_code.strip()}")
    if lead.email:
        names.add(f"email={lead.email.strip().casefold()}")
    return frozenset(names)


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
    client: str | None = None  # the sender's address (a trusted proxy's X-Forwarded-For applied)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Observer = Callable[[DeliveryEvent], None]


def report(event: DeliveryEvent, observer: Observer | None) -> None:
    """Log ``event`` and tell the observer; rendering must never break serving."""
    level = logging.WARNING if event.outcome in (DeliveryOutcome.REJECTED, DeliveryOutcome.FAILED) else logging.INFO
    sender = f" (from {event.client})" if event.client else ""
    shown = (event.stage, event.status or "-", event.event or "-", event.key or "-", redact(event.message), sender)
    log.log(level, "serve %s %s %s %s: %s%s", *shown)
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
    resumed: int = 0  # recorded by an earlier serve and processed by this one
    processed: int = 0
    failed: int = 0
    left_waiting: int = 0  # still without an outcome when this run stopped: the next start processes them
    outcomes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_received(self, *, duplicate: bool) -> None:
        with self._lock:
            self.received += 1
            self.duplicates += int(duplicate)

    def count_resumed(self, n: int) -> None:
        with self._lock:
            self.resumed += n

    def count_left_waiting(self, n: int) -> None:
        with self._lock:
            self.left_waiting = n

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
                "resumed": self.resumed,
                "processed": self.processed,
                "failed": self.failed,
                "left_waiting": self.left_waiting,
                **{f"outcome_{name}": n for name, n in sorted(self.outcomes.items())},
            }
