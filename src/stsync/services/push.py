"""push-lead: referred leads (and referrers) become ServiceTitan bookings, exactly once.

One lead's story, under a lock on its externalId (``KeyLock``: no other thread or process
can create the same booking meanwhile):

1. **the ledger** — already booked, and no create of it in doubt? Then nothing is sent:
   ``already_booked``.
2. **ServiceTitan** — does the provider have a booking with this externalId? It may, because a
   run crashed between its POST and its record, because an answer was lost, or because
   Referral Factory's own integration made it. Found → ``already_booked`` (or ``created``,
   when it is this run's own POST whose answer was lost), and every create in doubt is
   settled by it. A batch of ``push-lead --new`` asks its ``tracking.index.BookingIndex``
   (the provider's bookings, read once per run and then only what changed, refreshed when
   older than a second: no request per lead); a single lead, a file, ``serve`` — and, in a
   batch, a lead with a create in doubt — ask ServiceTitan one by one (``GET
   …/bookings?externalId=``).
3. **in doubt, not found** — a create that may have been applied (an intent a killed run
   left, an attempt ``unknown``) and a lookup that does not find it: nothing is created
   unless the lookup is *trusted* — made at least ``[limits] lookup_grace_seconds`` after
   the doubt began, by another run than the one that lost the answer. Otherwise the lead
   stays ``unknown`` ("unknown — will be checked again"). See ``stsync.lookup_grace``.
4. **intent** recorded, **POST**, **result** recorded. When the answer to the POST is lost
   (timeout, reset, 5xx: ``AnswerLost``), the booking is looked up at once (the index, read
   again, then by externalId); not found, it is ``unknown``: never POSTed again by this run.
   A batch (``push_leads``) looks its unknown leads up again once its other leads are done,
   with backoff, until the grace period ends (``Rechecks``): found → ``created``; still
   absent → left to the next run.

Why the index cannot duplicate a booking stsync made elsewhere (another run, ``serve``, a
crashed run): every creator holds the externalId's lock from its look-up to its ledger record,
so under the lock the ledger already says "booked", or holds the create in doubt that sends
this lead to the one-by-one look-up. For creators outside stsync see ``tracking.index``.

Every attempt lands in the ledger with the lead's e-mail, the externalId and the booking id
or ServiceTitan's exact error, so ``history`` and ``diagnose --email`` can tell it.

What a command pushes to is checked once, first (``push_target``): the kind's mapping
section, "Nothing to action" (nothing is sent, and the command says why), or the seed's
"Setup Required" (``SetupRequired``, before anything is read or sent). A run that would create
bookings reads the campaign once more (``ready_to_create``): paused, draft or unknown, it stops
with exit 3 and its fix before any lead is sent.

Which failures are the lead's and which the run's is ``errors.stops_run``. The lead's own
(a lead the mapping cannot send, a 400 from ServiceTitan) become a ``failed`` result and a
batch goes on; a lost answer is an ``unknown`` result. Run-level failures — credentials, a
wrong booking provider (``AuthError``), the mapping (``ConfigError``), a remote down past the
retry budget (``TemporaryError``) — stop the run: every lead after them would fail the same
way. A batch runs on a ``WorkPool`` (``[limits] workers`` threads sharing the clients' rate
limiters): the first run-level failure in input order is raised, the leads done before it
stay recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.checks.live import launched_campaign
from stsync.errors import (
    AnswerLost,
    AuthError,
    InvalidRecord,
    ServiceTitanApiError,
    SetupRequired,
    StsyncError,
    TemporaryError,
    error_summary,
    stops_run,
)
from stsync.leads import Lead
from stsync.logs import get_logger, log_context
from stsync.lookup_grace import GracePeriod, Rechecks, parse_stamp, stamp
from stsync.mapping.booking import booking_request_for, external_id_for
from stsync.mapping.validation import booking_mapping_problems, missing_required
from stsync.progress import NO_PROGRESS, Progress
from stsync.services.lead_sources import iter_new_leads, new_leads
from stsync.storage.ledger import utc_now
from stsync.storage.locks import KeyLock
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome, PushState, RunJob
from stsync.tracking.index import BookingIndex
from stsync.tracking.reads import booking_row
from stsync.vocabulary import Action, Kind
from stsync.workpool import WorkPool, finished

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import Campaign
    from stsync.servicetitan.models import Booking
    from stsync.storage.config import BookingSettings
    from stsync.storage.ledger import AttemptRecord, PushRecord

log = get_logger(__name__)

# What one push_lead can end in (never intent or lost: those stay in the ledger), in the
# order the counts are shown.
OUTCOMES: tuple[AttemptOutcome, ...] = (
    AttemptOutcome.CREATED,
    AttemptOutcome.ALREADY_BOOKED,
    AttemptOutcome.SKIPPED,
    AttemptOutcome.FAILED,
    AttemptOutcome.UNKNOWN,
)

ACTION_LABEL = {Kind.LEAD: "When lead joins campaign", Kind.REFERRER: "Referrers"}

@dataclass(frozen=True)
class PushResult:
    """What happened to one lead. ``body`` is the request a dry run would have sent."""

    lead: Lead
    kind: str
    outcome: AttemptOutcome
    external_id: str | None = None
    booking_id: int | None = None
    status: str | None = None
    error: dict[str, Any] | None = None
    message: str | None = None
    body: dict[str, Any] | None = None
    dry_run: bool = False
    # The failure itself, so a command pushing a single lead can raise it with its hint.
    exception: StsyncError | None = field(default=None, compare=False, repr=False)
    # outcome unknown: since when the create is in doubt (its looks again count from then).
    in_doubt_since: datetime | None = field(default=None, compare=False)

    @property
    def failed(self) -> bool:
        return self.outcome == AttemptOutcome.FAILED

    @property
    def unknown(self) -> bool:
        return self.outcome == AttemptOutcome.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lead": self.lead.describe(),
            "email": self.lead.email,
            "kind": self.kind,
            "external_id": self.external_id,
            "booking_id": self.booking_id,
            "status": self.status,
            "outcome": self.outcome,
            "error": self.error,
        }
        if self.message:
            data["message"] = self.message
        if self.dry_run:
            data["dry_run"] = True
            data["body"] = self.body
        return data


@dataclass
class PushReport:
    """A batch (or a single lead): results in input order, the run that recorded them.

    ``notice`` is set when nothing was sent on purpose (the action is "Nothing to action").
    """

    kind: str
    results: list[PushResult] = field(default_factory=list)
    run_id: int | None = None
    dry_run: bool = False
    notice: str | None = None
    notice_hint: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {outcome: 0 for outcome in OUTCOMES}
        for result in self.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        counts["total"] = len(self.results)
        return counts

    @property
    def failed(self) -> list[PushResult]:
        return [r for r in self.results if r.failed]

    @property
    def unknown(self) -> list[PushResult]:
        """Leads whose booking is in doubt after the grace period: the next run decides."""
        return [r for r in self.results if r.unknown]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "results": [r.to_dict() for r in self.results],
            "counts": self.counts,
        }
        if self.notice:
            data["notice"] = self.notice
        return data


# -- what a command pushes to ------------------------------------------------------------------


@dataclass(frozen=True)
class PushTarget:
    """Where leads of one kind go, checked once per command (``push_target``): the kind's
    mapping section and, when its action is "Nothing to action", why nothing is sent."""

    kind: Kind
    section: BookingSettings
    notice: str | None = None
    notice_hint: str | None = None
    # Read and found launched by ``ready_to_create``: once per run that creates bookings.
    campaign: Campaign | None = None


def ready_to_create(conn: Connection, target: PushTarget) -> PushTarget:
    """``target`` with its campaign read and found launched, once per run that would create
    bookings: a paused, draft or unknown campaign is ``checks.live``'s ``ConfigError`` (exit 3,
    with its fix) before anything is read or sent."""
    if target.campaign is not None:
        return target
    return replace(target, campaign=launched_campaign(conn))


def push_target(conn: Connection, kind: Kind) -> PushTarget:
    """The kind's section, checked: with the action "nothing", a target carrying the notice
    (message, hint) and nothing else checked — a section that sends nothing need not be
    complete; otherwise every required target must be mapped (the seed's "Setup Required":
    ``SetupRequired``) and every mapped one valid (the first ``ConfigError`` of
    ``booking_mapping_problems``, e.g. a fixed External Id)."""
    section = conn.config.booking_section(kind)
    name = section.section_name
    if section.action == Action.NOTHING:
        who = "referred leads" if kind == Kind.LEAD else "referrers"
        return PushTarget(
            kind,
            section,
            notice=(
                f'"{ACTION_LABEL[kind]}" is set to "Nothing to action" ({name}.action = "{Action.NOTHING}"): '
                f"{who} are not sent to ServiceTitan, so no booking was created"
            ),
            notice_hint=f"to create bookings, run `stsync map action {name} create-booking`",
        )
    missing = missing_required(section)
    if missing:
        raise SetupRequired(name, missing)
    problems = booking_mapping_problems(section)
    if problems:
        # Every lead would fail the same way (a fixed External Id would even book the first
        # and call every later one "already booked"): stop before reading any.
        raise problems[0]
    return PushTarget(kind, section)


# -- one lead ---------------------------------------------------------------------------------


def push_lead(
    conn: Connection,
    lead: Lead,
    target: PushTarget,
    *,
    run_id: int | None = None,
    dry_run: bool = False,
    index: BookingIndex | None = None,
) -> PushResult:
    """Send one lead to ServiceTitan as a booking, at most once per externalId.

    ``index``: the batch's view of the provider's bookings (``push_new``); without it the
    booking is looked up by externalId.

    Returns the result for record-level outcomes (created, already booked, skipped, failed);
    raises for run-level failures (``AuthError``, ``ConfigError``, ``TemporaryError``) after
    recording the attempt. A dry run builds the body and sends and records nothing.
    """
    kind, section = target.kind, target.section
    if target.notice is not None:
        return PushResult(lead=lead, kind=kind, outcome=AttemptOutcome.SKIPPED, message=target.notice)
    external_id: str | None = None
    try:
        external_id = external_id_for(lead, section)
        body = booking_request_for(lead, section)
    except InvalidRecord as exc:
        if external_id:
            known = _known_push(conn, external_id)
            if known is not None and known.state == PushState.BOOKED:
                # Booked before its data (or the mapping) changed: there is nothing to send.
                return _already_booked_in_ledger(conn, lead, kind, external_id, known, run_id, dry_run=dry_run)
            if not dry_run:
                _record_invalid(conn, lead, kind, external_id, exc, run_id)
        return _failed(lead, kind, external_id, exc, exc.to_dict())
    if dry_run:
        # What a real run would do first: the ledger's word on this External Id.
        known = _known_push(conn, external_id)
        if known is not None and known.state == PushState.BOOKED:
            return _already_booked_in_ledger(conn, lead, kind, external_id, known, run_id, dry_run=True)
        return PushResult(
            lead=lead, kind=kind, outcome=AttemptOutcome.SKIPPED, external_id=external_id, body=body, dry_run=True,
            message="dry run: nothing sent",
        )

    conn.paths.ensure_state()
    # One externalId at a time across threads and processes: check → create → record.
    with log_context(external_id=external_id), KeyLock(conn.paths, f"booking:{external_id}"):
        return _push_locked(conn, lead, kind, external_id, body, run_id, index)


def _push_locked(
    conn: Connection,
    lead: Lead,
    kind: str,
    external_id: str,
    body: dict,
    run_id: int | None,
    index: BookingIndex | None,
) -> PushResult:
    ledger = conn.ledger
    name = body.get("name") if isinstance(body.get("name"), str) else lead.first_name

    def record_intent() -> int:
        return ledger.record_push_intent(
            external_id, kind=kind, email=lead.email, name=name, rf_user_id=lead.rf_user_id,
            referral_code=lead.referral_code, run_id=run_id,
        )

    # Creates that may have been applied: intents left open by a crash between POST and
    # record, and answers lost with the booking not found yet (``unknown``). We hold the key
    # lock, so no live run is in the middle of this externalId: the lookup below settles them.
    doubts = ledger.attempts_in_doubt(external_id)

    known = ledger.get_push(external_id)
    if known is not None and known.state == PushState.BOOKED:
        refusal = _booked_for_another(lead, external_id, known)
        if refusal is not None:
            return _failed(lead, kind, external_id, refusal, refusal.to_dict())
        if not doubts:
            return _already_booked_in_ledger(conn, lead, kind, external_id, known, run_id)

    bp = conn.booking_provider
    try:
        existing = _existing_booking(conn, external_id, index, one_by_one=bool(doubts))
    except StsyncError as exc:
        attempt = record_intent()
        ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=exc.to_dict())
        if stops_run(exc):
            raise
        return _failed(lead, kind, external_id, exc, exc.to_dict())

    if existing is not None:
        mine = _doubted_in_this_run(doubts, run_id)
        with ledger.transaction():  # nothing is sent: the settlement is recorded in one commit
            for doubt in doubts:
                # That POST went through, though its answer never came or was never recorded.
                ledger.record_push_result(doubt.id, outcome=AttemptOutcome.CREATED, booking_id=existing.booking_id)
            if not mine:
                attempt = record_intent()
                ledger.record_push_result(attempt, outcome=AttemptOutcome.ALREADY_BOOKED, booking_id=existing.booking_id)
            if existing.status:
                ledger.update_tracking(external_id, booking_status=existing.status)
        if mine:
            return PushResult(
                lead=lead, kind=kind, outcome=AttemptOutcome.CREATED, external_id=external_id,
                booking_id=existing.booking_id, status=existing.status,
                message="created (found by its externalId after the answer was lost)",
            )
        return PushResult(
            lead=lead, kind=kind, outcome=AttemptOutcome.ALREADY_BOOKED, external_id=external_id,
            booking_id=existing.booking_id, status=existing.status,
            message="already booked in ServiceTitan (found by externalId)",
        )

    if doubts:
        grace = grace_period(conn)
        since = max(_doubt_since(doubt) for doubt in doubts)
        if not grace.trusts(since) or _doubted_in_this_run(doubts, run_id):
            # Not found yet, and not absent for long enough to believe it (or this run lost
            # the answer: never twice in one breath). The ledger keeps it unknown.
            error = doubts[-1].error
            for doubt in doubts:
                if doubt.outcome == AttemptOutcome.INTENT:
                    error = _unknown_error(
                        "the run stopped before ServiceTitan's answer was recorded, and the booking is not listed by "
                        "its externalId yet", _doubt_since(doubt), grace,
                    )
                    ledger.record_push_result(doubt.id, outcome=AttemptOutcome.UNKNOWN, error=error)
            return _unknown(lead, kind, external_id, since, error)
        for doubt in doubts:
            # A lookup made the grace period after the doubt began: that create was not applied.
            ledger.record_push_result(doubt.id, outcome=AttemptOutcome.LOST, error={
                "type": "CreateNotApplied",
                "message": f"no booking was made: a lookup by externalId {_age(grace, _doubt_since(doubt))} after the "
                "create did not find it",
                "hint": "this run creates it",
                "in_doubt_since": stamp(_doubt_since(doubt)),
            })

    attempt = record_intent()
    try:
        booking = _with_booking_provider_check(conn, lambda: conn.servicetitan.create_booking(bp, body))
    except AnswerLost as lost:
        log.warning("booking %s: %s; looking it up by externalId", external_id, lost)
        lost_at = grace_period(conn).now()
        try:
            booking = _look_up_created(conn, external_id, index)
        except StsyncError as exc:
            ledger.record_push_result(attempt, outcome=AttemptOutcome.UNKNOWN, error=_unknown_error(
                f"{lost.message}; looking the booking up failed too ({exc.message})", lost_at, grace_period(conn),
            ))
            if stops_run(exc):
                raise
            return _unknown(lead, kind, external_id, lost_at, None)
        if booking is None:
            error = _unknown_error(lost.message, lost_at, grace_period(conn))
            ledger.record_push_result(attempt, outcome=AttemptOutcome.UNKNOWN, error=error)
            return _unknown(lead, kind, external_id, lost_at, error)
        # Our POST was committed even though its answer never came: that is our creation.
    except StsyncError as exc:
        # After a TemporaryError whether the POST went through is unknown: "unknown" keeps it
        # in doubt for the next run to settle by a lookup.
        if isinstance(exc, TemporaryError):
            ledger.record_push_result(attempt, outcome=AttemptOutcome.UNKNOWN, error=_unknown_error(
                exc.message, grace_period(conn).now(), grace_period(conn),
            ))
        else:
            ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=exc.to_dict())
        if stops_run(exc):
            raise
        return _failed(lead, kind, external_id, exc, exc.to_dict())
    # One commit: the result, the status, the mirror row. Not waited onto the disk: the intent
    # was; were this lost to a power cut, the next run finds the booking by that open intent.
    with ledger.transaction(durable=False):
        ledger.record_push_result(attempt, outcome=AttemptOutcome.CREATED, booking_id=booking.id)
        _note_status(conn, external_id, booking)
        _remember(conn, booking)
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.CREATED, external_id=external_id, booking_id=booking.id,
        status=booking.status,
        message="created",
    )


def grace_period(conn: Connection) -> GracePeriod:
    """``[limits] lookup_grace_seconds`` as a ``GracePeriod`` (``stsync.lookup_grace``)."""
    return GracePeriod(conn.config.limits.lookup_grace_seconds)


def _doubt_since(doubt: AttemptRecord) -> datetime:
    """When a create in doubt began to be: the recorded loss, else (a killed run's intent)
    the intent's time — its POST was sent just after."""
    recorded = parse_stamp((doubt.error or {}).get("in_doubt_since")) if doubt.error else None
    return recorded or parse_stamp(doubt.started_at) or parse_stamp(doubt.finished_at) or datetime.now(UTC)


def _doubted_in_this_run(doubts: Sequence[AttemptRecord], run_id: int | None) -> bool:
    return run_id is not None and any(doubt.run_id == run_id for doubt in doubts)


def _unknown_error(cause: str, since: datetime, grace: GracePeriod) -> dict[str, Any]:
    return {
        "type": "CreateInDoubt",
        "message": f"{UNKNOWN_LABEL}: {cause}",
        "hint": (
            "the next run looks the booking up by its externalId first, and creates it only if a lookup made "
            f"{grace.seconds:g} s or more after the answer was lost still does not find it"
        ),
        "exit_code": TemporaryError.exit_code,
        "in_doubt_since": stamp(since),
    }


def _unknown(lead: Lead, kind: str, external_id: str, since: datetime, error: dict | None) -> PushResult:
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.UNKNOWN, external_id=external_id, error=error,
        message=UNKNOWN_LABEL + " (ServiceTitan lost the answer to the booking and does not list it yet)",
        in_doubt_since=since,
    )


def _age(grace: GracePeriod, since: datetime) -> str:
    return f"{max(0.0, (grace.now() - since).total_seconds()):.0f} s"


def _already_booked_in_ledger(
    conn: Connection, lead: Lead, kind: str, external_id: str, known: PushRecord, run_id: int | None,
    *, dry_run: bool = False,
) -> PushResult:
    """The ledger says this External Id is booked: nothing is sent. Another lead's booking
    (another e-mail) is refused instead, with both e-mails and nothing recorded; a dry run
    records nothing either."""
    refusal = _booked_for_another(lead, external_id, known)
    if refusal is not None:
        return _failed(lead, kind, external_id, refusal, refusal.to_dict())
    if dry_run:
        return PushResult(
            lead=lead, kind=kind, outcome=AttemptOutcome.ALREADY_BOOKED, external_id=external_id,
            booking_id=known.booking_id, status=known.booking_status, dry_run=True,
            message="already booked (recorded in the ledger): nothing would be sent",
        )
    ledger = conn.ledger
    with ledger.transaction():
        attempt = ledger.record_push_intent(
            external_id, kind=kind, email=lead.email, name=lead.first_name, rf_user_id=lead.rf_user_id,
            referral_code=lead.referral_code, run_id=run_id,
        )
        ledger.record_push_result(attempt, outcome=AttemptOutcome.ALREADY_BOOKED, booking_id=known.booking_id)
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.ALREADY_BOOKED, external_id=external_id,
        booking_id=known.booking_id, status=known.booking_status,
        message="already booked (recorded in the ledger)",
    )


def _booked_for_another(lead: Lead, external_id: str, known: PushRecord) -> InvalidRecord | None:
    """The refusal when the External Id is booked for another e-mail than this lead's: two
    leads cannot share a booking, and recording this one would hand the booking to it."""
    theirs, ours = (known.email or "").strip(), (lead.email or "").strip()
    if not theirs or not ours or theirs.casefold() == ours.casefold():
        return None
    booking = f" (booking #{known.booking_id})" if known.booking_id is not None else ""
    return InvalidRecord(
        f"External Id {external_id} is already booked{booking} for {theirs}, not for {ours}: "
        "two leads cannot share an External Id, so nothing was sent or recorded",
        record=external_id,
        field="external_id",
        hint=f"check the referral code given for {ours} (each lead has its own: "
        f"`stsync diagnose --email {theirs}` shows whose it is)",
    )


def _known_push(conn: Connection, external_id: str) -> PushRecord | None:
    """The ledger's record of this External Id. A dry run asks without creating a ledger."""
    return conn.ledger.get_push(external_id) if conn.has_ledger else None


@dataclass(frozen=True)
class _Existing:
    booking_id: int
    status: str | None


def _existing_booking(
    conn: Connection, external_id: str, index: BookingIndex | None, *, one_by_one: bool
) -> _Existing | None:
    """The provider's booking with this externalId, if any: from the index (refreshed when
    stale), and one by one when there is no index or ``one_by_one`` (a create in doubt)."""
    if index is not None:
        row = index.find(external_id)
        if row is not None:
            return _Existing(row.booking_id, row.status)
        if not one_by_one:
            return None
    found = find_booking(conn, external_id)
    if found is None:
        return None
    _remember(conn, found)
    return _Existing(found.id, found.status)


def _look_up_created(conn: Connection, external_id: str, index: BookingIndex | None) -> Booking | None:
    """Right after a lost answer: the booking, if that POST made it — from the provider's list
    by modifiedOn read now (it may show a booking the ?externalId= filter does not list yet,
    api/servicetitan.md §11), then by externalId."""
    if index is not None:
        index.refresh()
        row = index.find(external_id, refresh=False)
        if row is not None:
            return conn.servicetitan.get_booking(conn.booking_provider, row.booking_id)
    return find_booking(conn, external_id)


def _remember(conn: Connection, booking: Booking) -> None:
    """A booking stsync created or found goes into the ledger's mirror of the provider's
    bookings at once (what ``qualify`` and the next batch's index read)."""
    conn.ledger.upsert_bookings([booking_row(booking, utc_now())])


def find_booking(conn: Connection, external_id: str) -> Booking | None:
    """The provider's booking with this externalId (the oldest, should there be several)."""
    bp = conn.booking_provider
    found = _with_booking_provider_check(conn, lambda: conn.servicetitan.find_bookings_by_external_id(bp, external_id))
    if not found:
        return None
    if len(found) > 1:
        log.warning(
            "%d ServiceTitan bookings have externalId %s (ids %s): another integration (Referral Factory's own?) "
            "also creates bookings for this campaign",
            len(found), external_id, ", ".join(str(b.id) for b in found),
        )
    return min(found, key=lambda b: b.id)


def _with_booking_provider_check(conn: Connection, call):
    """Run a call on the provider's bookings; a 404/403 there is reported as the guide's
    "Booking Provider Value is incorrect" when the provider check confirms it."""
    try:
        return call()
    except ServiceTitanApiError as exc:
        if exc.status == 404:
            conn.servicetitan.check_booking_provider(conn.booking_provider)  # raises AuthError if wrong
        raise
    except AuthError:
        conn.servicetitan.check_booking_provider(conn.booking_provider)
        raise


def _note_status(conn: Connection, external_id: str, booking: Booking) -> None:
    if booking.status:
        conn.ledger.update_tracking(external_id, booking_status=booking.status)


def _record_invalid(conn: Connection, lead: Lead, kind: str, external_id: str, exc: InvalidRecord, run_id: int | None) -> None:
    """A lead that cannot be sent is still an attempt: ``diagnose --email`` shows why."""
    ledger = conn.ledger
    attempt = ledger.record_push_intent(
        external_id, kind=kind, email=lead.email, name=lead.first_name, rf_user_id=lead.rf_user_id,
        referral_code=lead.referral_code, run_id=run_id,
    )
    ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=exc.to_dict())


def _failed(lead: Lead, kind: str, external_id: str | None, exc: StsyncError, error: dict) -> PushResult:
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.FAILED, external_id=external_id, error=error,
        message=error_summary(error), exception=exc,
    )






# -- batches ----------------------------------------------------------------------------------


def push_leads(
    conn: Connection,
    leads: Iterable[Lead],
    target: PushTarget,
    *,
    progress: Progress = NO_PROGRESS,
    dry_run: bool = False,
    command: str = "push-lead",
    rejected: Sequence[InvalidRecord] = (),
    index: BookingIndex | None = None,
    refused: Sequence[tuple[Lead, InvalidRecord]] = (),
) -> PushReport:
    """Push several leads concurrently (``[limits] workers`` threads sharing the clients'
    rate limiters), in one recorded run. A failed lead does not stop the others; a run-level
    failure stops the run (the leads already done stay recorded) and is raised. Leads left
    ``unknown`` (an answer lost, the booking not listed yet) are looked up again once the
    others are done, until the grace period ends (``_look_again``).

    ``leads`` may be a stream (``push_new`` passes Referral Factory's pages as they come):
    each lead is handed to a worker as soon as it is read, so pushing starts with the first
    page. ``rejected`` are input records that could not even be read as leads (from
    ``leads_from_input``), ``refused`` leads that are not this push's (``lead_sources.own_leads``:
    another campaign, the other kind): both are reported as failed, first, and nothing of
    theirs is sent or recorded."""
    report = PushReport(kind=target.kind, dry_run=dry_run)
    if target.notice is not None:
        report.notice, report.notice_hint = target.notice, target.notice_hint
        return report
    unreadable = [_rejected_result(exc, target.kind) for exc in rejected]
    unreadable += [_failed(lead, target.kind, None, exc, exc.to_dict()) for lead, exc in refused]
    known_total = len(leads) if isinstance(leads, Sized) else None
    progress.set_total(known_total)
    if dry_run:
        report.results = unreadable
        for lead in leads:
            report.results.append(push_lead(conn, lead, target, dry_run=True))
            progress.advance()
        return report

    workers = max(1, int(getattr(conn.config.limits, "workers", 8) or 1))
    if known_total is not None:
        workers = min(workers, max(1, known_total))
    with conn.ledger.recorded_run(
        RunJob.PUSH, command, counts=lambda: report.counts, failed=lambda: bool(report.failed or report.unknown)
    ) as report.run_id:
        if leads:
            target = ready_to_create(conn, target)
        futures: list = []
        results: list[PushResult] = []
        try:
            with WorkPool(workers, name="push") as pool:
                for lead in leads:
                    if pool.stopping:
                        break  # a run-level failure: reading on would only fill the report with skips
                    futures.append(pool.submit(push_lead, conn, lead, target, run_id=report.run_id, index=index))
                if known_total is None:
                    progress.set_total(len(futures))
                pool.wait(futures, on_done=lambda _: progress.advance())
                results = finished(futures)
                _look_again(conn, target, results, pool, report.run_id, index)
        finally:
            # A stopped run still records what it did before stopping (input order).
            report.results = unreadable + (results or finished(futures))
    return report


def _look_again(
    conn: Connection,
    target: PushTarget,
    results: list[PushResult],
    pool: WorkPool,
    run_id: int | None,
    index: BookingIndex | None,
) -> None:
    """The batch's unknown leads, looked up again with backoff until the grace period ends
    (``Rechecks``; never POSTed again by this run). Each found one becomes ``created`` in
    ``results``; the others stay ``unknown`` for the next run."""
    rechecks: Rechecks[int] = Rechecks(grace_period(conn), stop=pool.stop_event)
    for position, result in enumerate(results):
        if result.unknown and result.in_doubt_since is not None:
            rechecks.add(position, result.in_doubt_since)
    if not len(rechecks):
        return
    log.info("push: %d booking(s) in doubt after a lost answer; looking them up again", len(rechecks))

    def check(positions: Sequence[int]) -> list[bool]:
        futures = [pool.submit(push_lead, conn, results[i].lead, target, run_id=run_id, index=index) for i in positions]
        for position, again in zip(positions, pool.wait(futures), strict=True):
            if again is not None:
                since = results[position].in_doubt_since
                results[position] = again if not again.unknown else replace(again, in_doubt_since=since)
        return [results[i].unknown for i in positions]

    rechecks.run(check)


def _rejected_result(exc: InvalidRecord, kind: str) -> PushResult:
    lead = Lead(referral_code=exc.record)
    return _failed(lead, kind, None, exc, exc.to_dict())


def push_new(
    conn: Connection,
    target: PushTarget,
    *,
    progress: Progress = NO_PROGRESS,
    dry_run: bool = False,
    command: str = "push-lead --new",
) -> PushReport:
    """Every lead of the campaign without a booking yet (``lead_sources.iter_new_leads``),
    under the connection's push lock (a dry run takes none), checked against the provider's
    bookings with one ``BookingIndex`` for the whole run."""
    if target.notice is not None:
        report = PushReport(kind=target.kind, dry_run=dry_run)
        report.notice, report.notice_hint = target.notice, target.notice_hint
        return report
    if dry_run:
        return push_leads(conn, new_leads(conn, target, record=False), target, progress=progress, dry_run=True)
    with conn.run_lock(RunJob.PUSH, command=command):
        # A paused campaign stops the run here, before its leads are searched.
        target = ready_to_create(conn, target)
        index = BookingIndex(conn)
        # The provider's bookings are read while Referral Factory's first page is: both are
        # needed before the first create.
        warming = _start(index.ensure_fresh)
        try:
            leads = iter_new_leads(conn, target)
            return push_leads(conn, leads, target, progress=progress, command=command, index=index)
        finally:
            warming.join()


def _start(work) -> threading.Thread:
    """``work`` in a thread of its own. Its failure is not lost: a worker needing the index
    calls ``ensure_fresh`` again and meets it (e.g. a wrong booking provider) itself."""

    def run() -> None:
        try:
            work()
        except Exception as exc:  # raised again, where it matters, by the next caller
            log.debug("reading the provider's bookings ahead failed: %s", exc)

    thread = threading.Thread(target=run, name="push-index", daemon=True)
    thread.start()
    return thread
