"""history: everything the ledger knows, newest first (what `stsync history` shows), and the
acknowledgement of a failed record (`history --ack ID`).

Four kinds of record (``vocabulary.HistoryKind``), each with its own id, the one ``--ack`` takes:

- ``push`` (``p<attempt id>``): every booking attempt push-lead or serve made — the lead's
  e-mail, the External Id, the booking id or ServiceTitan's exact error. An attempt still
  ``intent`` is one whose answer was never recorded (a run in progress, or one that was
  killed): the next push of that lead settles it by looking the booking up.
- ``qualify`` (``q<qualification id>``): each qualification or unqualification sent to Referral
  Factory, its reason, and its error when it failed.
- ``sync`` (``s<customer id>``): each ServiceTitan customer's customer-sync outcome (its latest:
  created, adopted, updated, skipped and why, failed), the referrer it became.
- ``webhook`` (``w<row>``): each webhook delivery serve received — the event, what it named,
  what became of it.

``history(conn, kinds=…, email=…, failed_only=…, limit=…)`` merges the kinds by time, newest
first, ``limit`` in all. A failed record a person has seen can be acknowledged
(``acknowledge(conn, "p123")``): it stays in the history, marked, and ``diagnose`` stops
failing on it — until it fails again. Only a failed record can be acknowledged (a push that
was booked since needs none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stsync.errors import UsageError, error_summary
from stsync.storage.ledger import Acknowledgement, AttemptRecord, DeliveryRecord, ReferrerRecord
from stsync.storage.states import (
    AttemptOutcome,
    DeliveryOutcome,
    PushState,
    QualificationState,
    ReferrerState,
    RunJob,
)
from stsync.vocabulary import HistoryKind

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.storage.ledger import Ledger

MAX_LIMIT = 10_000
FAILED_ATTEMPTS = (AttemptOutcome.FAILED, AttemptOutcome.LOST)
# The letter of each kind's ids: p123, q45, s20017, w7.
ID_LETTER = {HistoryKind.PUSH: "p", HistoryKind.QUALIFY: "q", HistoryKind.SYNC: "s", HistoryKind.WEBHOOK: "w"}
KIND_OF_LETTER = {letter: kind for kind, letter in ID_LETTER.items()}
JOB_OF_KIND = {HistoryKind.PUSH: RunJob.PUSH, HistoryKind.QUALIFY: RunJob.QUALIFY, HistoryKind.SYNC: RunJob.SYNC}


@dataclass(frozen=True)
class HistoryEntry:
    """One record of any kind, in the columns every kind shares; ``details`` holds the kind's own."""

    kind: HistoryKind
    id: str  # what `history --ack` takes: p123, q45, s20017, w7
    at: str | None  # UTC ISO-8601
    email: str | None
    key: str | None  # the record: its External Id (push, qualify, webhook) or customer id (sync)
    outcome: str
    failed: bool
    error: dict[str, Any] | None = None
    acknowledged_at: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def error_text(self) -> str:
        return error_summary(self.error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "id": self.id,
            "at": self.at,
            "email": self.email,
            "key": self.key,
            "outcome": self.outcome,
            "failed": self.failed,
            "error": self.error,
            "acknowledged_at": self.acknowledged_at,
            **self.details,
        }


@dataclass
class HistoryReport:
    kinds: tuple[HistoryKind, ...]
    entries: list[HistoryEntry] = field(default_factory=list)  # newest first
    email: str | None = None
    failed_only: bool = False
    limit: int = 50
    last_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job → its last run

    def to_dict(self) -> dict[str, Any]:
        """``entries``: every record listed, each with its kind. ``attempts`` and
        ``last_push_run``: the push attempts among them and the last push run, in the shape
        scripts read before history had kinds."""
        return {
            "filters": {
                "kind": [kind.value for kind in self.kinds],
                "email": self.email,
                "failed": self.failed_only,
                "limit": self.limit,
            },
            "count": len(self.entries),
            "entries": [entry.to_dict() for entry in self.entries],
            "last_runs": self.last_runs,
            "attempts": [_attempt_dict(entry) for entry in self.entries if entry.kind == HistoryKind.PUSH],
            "last_push_run": self.last_runs.get(RunJob.PUSH),
        }


def _attempt_dict(entry: HistoryEntry) -> dict[str, Any]:
    """A push entry as ``history --json`` printed attempts before kinds."""
    details = entry.details
    return {
        "id": int(entry.id[1:]),
        "started_at": details["started_at"],
        "finished_at": details["finished_at"],
        "email": entry.email,
        "external_id": entry.key,
        "outcome": entry.outcome,
        "booking_id": details["booking_id"],
        "error": entry.error,
        "run_id": details["run_id"],
    }


def history(
    conn: Connection,
    *,
    kinds: Iterable[HistoryKind | str] = tuple(HistoryKind),
    email: str | None = None,
    failed_only: bool = False,
    limit: int = 50,
) -> HistoryReport:
    """The records of ``kinds`` for this connection, newest first, ``limit`` in all."""
    if limit < 1 or limit > MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, not {limit}")
    chosen = tuple(dict.fromkeys(HistoryKind(kind) for kind in kinds)) or tuple(HistoryKind)
    email = (email or "").strip() or None
    report = HistoryReport(kinds=chosen, email=email, failed_only=failed_only, limit=limit)
    if not conn.has_ledger:
        return report  # nothing ran yet: history creates no ledger
    ledger = conn.ledger
    readers = {
        HistoryKind.PUSH: _pushes,
        HistoryKind.QUALIFY: _qualifications,
        HistoryKind.SYNC: _customer_syncs,
        HistoryKind.WEBHOOK: _deliveries,
    }
    entries: list[HistoryEntry] = []
    for kind in chosen:
        entries.extend(readers[kind](ledger, email=email, failed_only=failed_only, limit=limit))
    # Newest first across kinds (the ledger's times are UTC ISO-8601 and sort as text).
    entries.sort(key=lambda entry: entry.at or "", reverse=True)
    report.entries = entries[:limit]
    for kind in chosen:
        job = JOB_OF_KIND.get(kind)
        if job is None:
            continue
        run = ledger.last_run(job)
        if run is not None:
            report.last_runs[job] = {
                "id": run.id, "command": run.command, "started_at": run.started_at, "finished_at": run.finished_at,
                "outcome": run.outcome, "counts": run.counts, "error": run.error,
            }  # fmt: skip
    return report


def _pushes(ledger: Ledger, *, email: str | None, failed_only: bool, limit: int) -> list[HistoryEntry]:
    acknowledged = ledger.acknowledgements(HistoryKind.PUSH)
    attempts = ledger.push_attempts(email=email, failed_only=failed_only, limit=limit)
    return [_push_entry(attempt, acknowledged) for attempt in attempts]


def _push_entry(attempt: AttemptRecord, acknowledged: dict[str, Acknowledgement]) -> HistoryEntry:
    failed = attempt.outcome in FAILED_ATTEMPTS
    return HistoryEntry(
        kind=HistoryKind.PUSH,
        id=f"{ID_LETTER[HistoryKind.PUSH]}{attempt.id}",
        at=attempt.started_at,
        email=attempt.email,
        key=attempt.external_id,
        outcome=attempt.outcome,
        failed=failed,
        error=attempt.error,
        acknowledged_at=_acknowledged(acknowledged.get(attempt.external_id), attempt.finished_at or attempt.started_at)
        if failed
        else None,
        details={
            "external_id": attempt.external_id, "booking_id": attempt.booking_id, "run_id": attempt.run_id,
            "started_at": attempt.started_at, "finished_at": attempt.finished_at,
        },  # fmt: skip
    )


def _qualifications(ledger: Ledger, *, email: str | None, failed_only: bool, limit: int) -> list[HistoryEntry]:
    acknowledged = ledger.acknowledgements(HistoryKind.QUALIFY)
    entries = []
    for record, push_email in ledger.qualification_entries(email=email, failed_only=failed_only, limit=limit):
        failed = record.state == QualificationState.FAILED
        entries.append(
            HistoryEntry(
                kind=HistoryKind.QUALIFY,
                id=f"{ID_LETTER[HistoryKind.QUALIFY]}{record.id}",
                at=record.at,
                email=push_email,
                key=record.external_id,
                outcome=f"{record.action} {record.state}",
                failed=failed,
                error=record.error,
                acknowledged_at=_acknowledged(acknowledged.get(str(record.id)), record.at) if failed else None,
                details={
                    "external_id": record.external_id, "action": record.action, "state": record.state,
                    "rule": record.rule, "reason": record.reason,
                },  # fmt: skip
            )
        )
    return entries


def _customer_syncs(ledger: Ledger, *, email: str | None, failed_only: bool, limit: int) -> list[HistoryEntry]:
    acknowledged = ledger.acknowledgements(HistoryKind.SYNC)
    entries = []
    for record in ledger.referrer_entries(email=email, failed_only=failed_only, limit=limit):
        failed = _sync_failed(record)
        entries.append(
            HistoryEntry(
                kind=HistoryKind.SYNC,
                id=f"{ID_LETTER[HistoryKind.SYNC]}{record.customer_id}",
                at=record.updated_at,
                email=record.email,
                key=str(record.customer_id),
                outcome=record.state,
                failed=failed,
                error=record.error,
                acknowledged_at=_acknowledged(acknowledged.get(str(record.customer_id)), record.updated_at)
                if failed
                else None,
                details={
                    "customer_id": record.customer_id, "rf_user_id": record.rf_user_id, "code": record.code,
                    "skip_reason": record.skip_reason, "return_fields": ledger.get_return_fields(record.customer_id),
                },  # fmt: skip
            )
        )
    return entries


def _sync_failed(record: ReferrerRecord) -> bool:
    """Failed for good (what --ack takes): not skipped, and not in doubt (``unknown``: the next
    run settles it) nor cut short (``pending``)."""
    settling = (ReferrerState.SKIPPED, ReferrerState.UNKNOWN, ReferrerState.PENDING)
    return record.state == ReferrerState.FAILED or (record.error is not None and record.state not in settling)


def _deliveries(ledger: Ledger, *, email: str | None, failed_only: bool, limit: int) -> list[HistoryEntry]:
    acknowledged = ledger.acknowledgements(HistoryKind.WEBHOOK)
    return [
        delivery_entry(number, delivery, acknowledged.get(delivery.key))
        for number, delivery in ledger.delivery_entries(email=email, failed_only=failed_only, limit=limit)
    ]


def delivery_entry(number: int, delivery: DeliveryRecord, acknowledgement: Acknowledgement | None = None) -> HistoryEntry:
    """One webhook delivery as a history entry (also what ``diagnose --email`` tells)."""
    failed = delivery.outcome == DeliveryOutcome.FAILED
    return HistoryEntry(
        kind=HistoryKind.WEBHOOK,
        id=f"{ID_LETTER[HistoryKind.WEBHOOK]}{number}",
        at=delivery.received_at,
        email=_email_of(delivery),
        key=delivery.external_id,
        outcome=delivery.outcome or "waiting",
        failed=failed,
        error=delivery.error,
        acknowledged_at=_acknowledged(acknowledgement, delivery.received_at) if failed else None,
        details={"delivery_key": delivery.key, "event": delivery.event, "external_id": delivery.external_id},
    )


def _email_of(delivery: DeliveryRecord) -> str | None:
    """The e-mail a delivery is about: its lead's, else the one its key names."""
    lead = delivery.lead if isinstance(delivery.lead, dict) else {}
    email = lead.get("email")
    return email if isinstance(email, str) and email else _email_of_key(delivery.key)


def _email_of_key(key: str) -> str | None:
    """The e-mail a delivery key names (``event:email=…:stamp``), when it names one."""
    found = re.search(r":email=([^:]+):", key)
    return found.group(1) if found else None


def _acknowledged(acknowledgement: Acknowledgement | None, failed_at: str | None) -> str | None:
    """When the failure was acknowledged — None if never, or if it failed again since."""
    if acknowledgement is None:
        return None
    if failed_at and failed_at > acknowledgement.acknowledged_at:
        return None
    return acknowledgement.acknowledged_at


# == acknowledging ================================================================================


@dataclass(frozen=True)
class AckResult:
    """What ``history --ack`` acknowledged: the id given, the record, and when."""

    id: str
    kind: HistoryKind
    record: str  # the key the acknowledgement is kept under
    what: str  # the record in words, for the confirmation
    email: str | None
    acknowledged_at: str
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind.value, "record": self.record, "what": self.what, "email": self.email,
            "acknowledged_at": self.acknowledged_at, "note": self.note,
        }  # fmt: skip


def parse_id(text: str) -> tuple[HistoryKind, int]:
    """``p123`` / ``push:123`` (any case) → (kind, number); ``UsageError`` otherwise."""
    raw = text.strip().casefold()
    found = re.fullmatch(r"([pqsw])(\d+)", raw) or re.fullmatch(r"(push|qualify|sync|webhook):(\d+)", raw)
    if found is None:
        raise UsageError(
            f"{text!r} is not a history id",
            hint="ids are shown by `stsync history`: p<n> (push), q<n> (qualify), s<customer id> (sync), w<n> (webhook)",
        )
    prefix, number = found.group(1), int(found.group(2))
    kind = KIND_OF_LETTER[prefix] if len(prefix) == 1 else HistoryKind(prefix)
    return kind, number


def acknowledge(conn: Connection, ident: str, *, note: str | None = None) -> AckResult:
    """Acknowledge the failed record ``ident`` (see the module docstring)."""
    kind, number = parse_id(ident)
    shown = f"{ID_LETTER[kind]}{number}"
    ledger = conn.ledger if conn.has_ledger else None
    record, what, email = _failed_record(ledger, kind, number, shown)
    assert ledger is not None  # _failed_record found the record in it
    acknowledgement = ledger.acknowledge(kind, record, note=(note or "").strip() or None)
    return AckResult(
        id=shown, kind=kind, record=record, what=what, email=email,
        acknowledged_at=acknowledgement.acknowledged_at, note=acknowledgement.note,
    )  # fmt: skip


def _failed_record(ledger: Ledger | None, kind: HistoryKind, number: int, shown: str) -> tuple[str, str, str | None]:
    """(the key the acknowledgement is kept under, the record in words, its e-mail) of a failed
    record; ``UsageError`` for one that does not exist or did not fail."""
    listing = f"`stsync history --kind {kind.value} --failed` lists them"
    missing = UsageError(f"no {kind.value} record {shown} in the ledger", hint=listing)
    if ledger is None:
        raise missing
    if kind == HistoryKind.PUSH:
        attempt = ledger.get_attempt(number)
        if attempt is None:
            raise missing
        _refuse_unless(attempt.outcome in FAILED_ATTEMPTS, shown, attempt.outcome, listing)
        push = ledger.get_push(attempt.external_id)
        if push is not None and push.state == PushState.BOOKED:
            raise UsageError(
                f"{shown} failed, but External Id {attempt.external_id} was booked since (booking #{push.booking_id}): "
                "nothing to acknowledge",
                hint=listing,
            )
        return attempt.external_id, f"the push of {attempt.email or '?'} (External Id {attempt.external_id})", attempt.email
    if kind == HistoryKind.QUALIFY:
        qualification = ledger.get_qualification(number)
        if qualification is None:
            raise missing
        _refuse_unless(qualification.state == QualificationState.FAILED, shown, qualification.state, listing)
        push = ledger.get_push(qualification.external_id)
        email = push.email if push is not None else None
        return str(number), f"the {qualification.action} of External Id {qualification.external_id}", email
    if kind == HistoryKind.SYNC:
        referrer = ledger.get_referrer(number)
        if referrer is None:
            raise missing
        _refuse_unless(_sync_failed(referrer), shown, referrer.state, listing)
        return str(number), f"the customer sync of ServiceTitan customer {number}", referrer.email
    delivery = ledger.delivery_by_number(number)
    if delivery is None:
        raise missing
    _refuse_unless(delivery.outcome == DeliveryOutcome.FAILED, shown, delivery.outcome or "waiting", listing)
    what = f"the webhook delivery {delivery.key}" + (f" ({delivery.event})" if delivery.event else "")
    return delivery.key, what, _email_of(delivery)


def _refuse_unless(failed: bool, shown: str, outcome: str, listing: str) -> None:
    if not failed:
        raise UsageError(f"{shown} did not fail ({outcome}): there is nothing to acknowledge", hint=listing)
