"""push-lead: referred leads (and referrers) become ServiceTitan bookings, exactly once.

One lead's story, under a lock on its externalId (``KeyLock``: no other thread or process
can create the same booking meanwhile):

1. **the ledger** — already booked? Then nothing is sent: ``already_booked``.
2. **ServiceTitan** — ``GET …/bookings?externalId=``: the booking may exist because a run
   crashed between its POST and its record (an unfinished intent, closed here), or because
   Referral Factory's own integration made it. Found → ``already_booked``.
3. **intent** recorded, **POST**, **result** recorded. When the answer to the POST is lost
   (timeout, reset, 5xx: ``AnswerLost``), the booking is looked up by externalId before the
   POST is ever repeated.

Every attempt lands in the ledger with the lead's e-mail, the externalId and the booking id
or ServiceTitan's exact error, so ``history`` and ``diagnose --email`` can tell it.

Record-level failures (a lead the mapping cannot send, a 400 from ServiceTitan) become a
``failed`` result and a batch goes on. Run-level failures — credentials, a wrong booking
provider (``AuthError``), the mapping (``ConfigError``), a remote down past the retry budget
(``TemporaryError``) — stop the run: every lead after them would fail the same way.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from stsync.errors import (
    AnswerLost,
    ApiError,
    AuthError,
    InvalidRecord,
    ReferralFactoryApiError,
    ServiceTitanApiError,
    SetupRequired,
    StsyncError,
    TemporaryError,
    UsageError,
)
from stsync.logs import get_logger
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.storage.states import AttemptOutcome, PushState, RunJob
from stsync.vocabulary import Action, Kind

if TYPE_CHECKING:
    from stsync.servicetitan.models import Booking
    from stsync.services.leads import Lead
    from stsync.connection import Connection

log = get_logger(__name__)

# What one push_lead can end in (never intent or lost: those stay in the ledger), in the
# order the counts are shown.
OUTCOMES: tuple[AttemptOutcome, ...] = (
    AttemptOutcome.CREATED,
    AttemptOutcome.ALREADY_BOOKED,
    AttemptOutcome.SKIPPED,
    AttemptOutcome.FAILED,
)

# The Referral Factory user type `--new` searches.
USER_TYPE_FOR_KIND = {Kind.LEAD: PERSON_INVITED, Kind.REFERRER: PERSON_REFERRING}
ACTION_LABEL = {Kind.LEAD: "When lead joins campaign", Kind.REFERRER: "Referrers"}

# A lost answer is looked up, then the POST repeated; a booking whose answer is lost this
# many times in a row is left for the next run (the lookup then finds it, or it is created).
MAX_CREATE_ATTEMPTS = 5


class Progress(Protocol):
    """What a batch reports to (the CLI passes its progress bar)."""

    def advance(self, n: int = 1) -> None: ...

    def set_total(self, total: int | None) -> None: ...


@dataclass(frozen=True)
class PushResult:
    """What happened to one lead. ``body`` is the request a dry run would have sent."""

    lead: "Lead"
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

    @property
    def failed(self) -> bool:
        return self.outcome == AttemptOutcome.FAILED

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
        counts = {outcome: 0 for outcome in OUTCOMES}
        for result in self.results:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        counts["total"] = len(self.results)
        return counts

    @property
    def failed(self) -> list[PushResult]:
        return [r for r in self.results if r.failed]

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


# -- the mapping section ----------------------------------------------------------------------


def nothing_to_action(conn: "Connection", kind: Kind) -> tuple[str, str] | None:
    """(message, hint) when the section's action is "nothing"; None when it creates bookings."""
    section = conn.config.booking_section(kind)
    if section.action != Action.NOTHING:
        return None
    name = section.section_name
    who = "referred leads" if kind == Kind.LEAD else "referrers"
    message = (
        f'"{ACTION_LABEL[kind]}" is set to "Nothing to action" ({name}.action = "{Action.NOTHING}"): '
        f"{who} are not sent to ServiceTitan, so no booking was created"
    )
    hint = f"to create bookings, run `stsync map action {name} create-booking`"
    return message, hint


def check_mapping(conn: "Connection", kind: Kind) -> None:
    """The seed's "Setup Required": every required target of the section must be mapped."""
    from stsync.mapping.validation import missing_required

    section = conn.config.booking_section(kind)
    missing = missing_required(section)
    if missing:
        raise SetupRequired(section.section_name, missing)


# -- one lead ---------------------------------------------------------------------------------


def push_lead(
    conn: "Connection",
    lead: "Lead",
    *,
    kind: Kind = Kind.LEAD,
    run_id: int | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Send one lead to ServiceTitan as a booking, at most once per externalId.

    Returns the result for record-level outcomes (created, already booked, skipped, failed);
    raises for run-level failures (``AuthError``, ``ConfigError``, ``TemporaryError``) after
    recording the attempt. A dry run builds the body and sends and records nothing.
    """
    from stsync.mapping.booking import booking_request_for, external_id_for

    nothing = nothing_to_action(conn, kind)
    if nothing is not None:
        return PushResult(lead=lead, kind=kind, outcome=AttemptOutcome.SKIPPED, message=nothing[0])
    section = conn.config.booking_section(kind)
    external_id: str | None = None
    try:
        external_id = external_id_for(lead, section)
        body = booking_request_for(lead, section)
    except InvalidRecord as exc:
        if not dry_run and external_id:
            known = conn.ledger.get_push(external_id)
            if known is not None and known.state == PushState.BOOKED:
                # Booked before its data (or the mapping) changed: there is nothing to send.
                return _already_booked_in_ledger(conn, lead, kind, external_id, known, run_id)
            _record_invalid(conn, lead, kind, external_id, exc, run_id)
        return _failed(lead, kind, external_id, exc, {"type": "InvalidRecord", "message": exc.message, "field": exc.field})
    if dry_run:
        return PushResult(
            lead=lead, kind=kind, outcome=AttemptOutcome.SKIPPED, external_id=external_id, body=body, dry_run=True,
            message="dry run: nothing sent",
        )

    from stsync.storage.locks import KeyLock

    conn.paths.ensure_state()
    # One externalId at a time across threads and processes: check → create → record.
    with KeyLock(conn.paths, f"booking:{external_id}"):
        return _push_locked(conn, lead, kind, external_id, body, run_id)


def _push_locked(
    conn: "Connection", lead: "Lead", kind: str, external_id: str, body: dict, run_id: int | None
) -> PushResult:
    ledger = conn.ledger
    identity = dict(
        kind=kind,
        email=lead.email,
        name=body.get("name") if isinstance(body.get("name"), str) else lead.first_name,
        rf_user_id=lead.rf_user_id,
        referral_code=lead.referral_code,
        run_id=run_id,
    )
    # Intents left open by a crash between POST and record. We hold the key lock, so no live
    # run is in the middle of this externalId: each of them is settled by the lookup below.
    stale_intents = ledger.unfinished_intents(external_id=external_id)

    known = ledger.get_push(external_id)
    if known is not None and known.state == PushState.BOOKED and not stale_intents:
        return _already_booked_in_ledger(conn, lead, kind, external_id, known, run_id)

    bp = conn.booking_provider
    try:
        existing = find_booking(conn, external_id)
    except (ServiceTitanApiError, TemporaryError) as exc:
        attempt = ledger.record_push_intent(external_id, **identity)
        ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=_error_dict(exc))
        if isinstance(exc, TemporaryError):
            raise
        return _failed(lead, kind, external_id, exc, _error_dict(exc))
    except AuthError as exc:
        attempt = ledger.record_push_intent(external_id, **identity)
        ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=_error_dict(exc))
        raise

    for stale in stale_intents:
        if existing is not None:
            # That crashed run's POST went through: the booking is its creation.
            ledger.record_push_result(stale.id, outcome=AttemptOutcome.CREATED, booking_id=existing.id)
        else:
            ledger.record_push_result(
                stale.id, outcome=AttemptOutcome.LOST,
                error={"message": "the run stopped before ServiceTitan's answer was recorded; no booking was found"},
            )

    if existing is not None:
        attempt = ledger.record_push_intent(external_id, **identity)
        ledger.record_push_result(attempt, outcome=AttemptOutcome.ALREADY_BOOKED, booking_id=existing.id)
        _note_status(conn, external_id, existing)
        return PushResult(
            lead=lead, kind=kind, outcome=AttemptOutcome.ALREADY_BOOKED, external_id=external_id,
            booking_id=existing.id, status=existing.status,
            message="already booked in ServiceTitan (found by externalId)",
        )

    attempt = ledger.record_push_intent(external_id, **identity)
    try:
        booking = _create_once(conn, bp, external_id, body)
    except AnswerLost as exc:
        ledger.record_push_result(attempt, outcome=AttemptOutcome.LOST, error=_error_dict(exc))
        raise TemporaryError(
            f"ServiceTitan's answer to the booking for {lead.describe()} was lost {MAX_CREATE_ATTEMPTS} times "
            "and the booking was not found by its externalId",
            hint="retry later: the next run looks the booking up before sending it again",
        ) from exc
    except TemporaryError as exc:
        # Whether the POST went through is unknown (e.g. the look-up after a lost answer
        # failed too): "lost" leaves the push's state as it is for the next run to settle.
        ledger.record_push_result(attempt, outcome=AttemptOutcome.LOST, error=_error_dict(exc))
        raise
    except ServiceTitanApiError as exc:
        ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=_error_dict(exc))
        return _failed(lead, kind, external_id, exc, _error_dict(exc))
    except StsyncError as exc:
        ledger.record_push_result(attempt, outcome=AttemptOutcome.FAILED, error=_error_dict(exc))
        raise
    ledger.record_push_result(attempt, outcome=AttemptOutcome.CREATED, booking_id=booking.id)
    _note_status(conn, external_id, booking)
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.CREATED, external_id=external_id, booking_id=booking.id,
        status=booking.status,
        message="created",
    )


def _already_booked_in_ledger(
    conn: "Connection", lead: "Lead", kind: str, external_id: str, known: Any, run_id: int | None
) -> PushResult:
    ledger = conn.ledger
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


def _create_once(conn: "Connection", bp: int, external_id: str, body: dict) -> "Booking":
    """POST the booking; after a lost answer, look it up before any new POST."""
    lost: AnswerLost | None = None
    for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
        try:
            return _with_booking_provider_check(conn, lambda: conn.servicetitan.create_booking(bp, body))
        except AnswerLost as exc:
            lost = exc
            log.warning("booking %s: %s; looking it up by externalId", external_id, exc)
        found = find_booking(conn, external_id)
        if found is not None:
            # Our POST was committed even though its answer never came: that is our creation.
            return found
        if attempt < MAX_CREATE_ATTEMPTS:
            _pause_before_retry(attempt)
    assert lost is not None
    raise lost


def _pause_before_retry(attempt: int) -> None:
    # Full jitter, so workers hit by the same outage do not come back in step.
    time.sleep(min(5.0, 0.2 * 2 ** (attempt - 1)) * random.random())


def find_booking(conn: "Connection", external_id: str) -> "Booking | None":
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


def _with_booking_provider_check(conn: "Connection", call):
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


def _note_status(conn: "Connection", external_id: str, booking: "Booking") -> None:
    if booking.status:
        conn.ledger.update_tracking(external_id, booking_status=booking.status)


def _record_invalid(conn: "Connection", lead: "Lead", kind: str, external_id: str, exc: InvalidRecord, run_id: int | None) -> None:
    """A lead that cannot be sent is still an attempt: ``diagnose --email`` shows why."""
    ledger = conn.ledger
    attempt = ledger.record_push_intent(
        external_id, kind=kind, email=lead.email, name=lead.first_name, rf_user_id=lead.rf_user_id,
        referral_code=lead.referral_code, run_id=run_id,
    )
    ledger.record_push_result(
        attempt, outcome=AttemptOutcome.FAILED, error={"type": "InvalidRecord", "message": exc.message, "field": exc.field}
    )


def _failed(lead: "Lead", kind: str, external_id: str | None, exc: StsyncError, error: dict) -> PushResult:
    return PushResult(
        lead=lead, kind=kind, outcome=AttemptOutcome.FAILED, external_id=external_id, error=error,
        message=error_summary(error), exception=exc,
    )


def _error_dict(exc: StsyncError) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return exc.to_dict()
    error: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message}
    if exc.hint:
        error["hint"] = exc.hint
    return error


def error_summary(error: dict[str, Any] | None) -> str:
    """ServiceTitan's exact words for a human: title, then each field's messages."""
    if not error:
        return ""
    if error.get("service") and error.get("status") is not None:
        title = error.get("title") or error.get("message") or "no title"
        text = f"HTTP {error['status']}: {title}"
        fields = error.get("errors") or {}
        if fields:
            text += " — " + "; ".join(f"{name}: {' '.join(messages)}" for name, messages in fields.items())
        return text
    return str(error.get("message") or error)


# -- batches ----------------------------------------------------------------------------------


def push_leads(
    conn: "Connection",
    leads: Sequence["Lead"],
    *,
    kind: Kind = Kind.LEAD,
    progress: Progress | None = None,
    dry_run: bool = False,
    command: str = "push-lead",
    rejected: Sequence[InvalidRecord] = (),
) -> PushReport:
    """Push several leads concurrently (``[limits] workers`` threads sharing the clients'
    rate limiters), in one recorded run. A failed lead does not stop the others; a run-level
    failure stops the run (the leads already done stay recorded) and is raised.

    ``rejected`` are input records that could not even be read as leads (from
    ``leads_from_input``): they are reported as failed, first."""
    report = PushReport(kind=kind, dry_run=dry_run)
    nothing = nothing_to_action(conn, kind)
    if nothing is not None:
        report.notice, report.notice_hint = nothing
        return report
    check_mapping(conn, kind)
    unreadable = [_rejected_result(exc, kind) for exc in rejected]
    if progress is not None:
        progress.set_total(len(leads))
    if dry_run:
        report.results = unreadable
        for lead in leads:
            report.results.append(push_lead(conn, lead, kind=kind, dry_run=True))
            if progress is not None:
                progress.advance()
        return report

    done: list[PushResult | None] = [None] * len(leads)
    with conn.ledger.recorded_run(
        RunJob.PUSH, command, counts=lambda: report.counts, failed=lambda: bool(report.failed)
    ) as report.run_id:
        try:
            _run_concurrently(conn, leads, kind, report.run_id, progress, done)
        finally:
            # A stopped run still records what it did before stopping.
            report.results = unreadable + [r for r in done if r is not None]
    return report


def _run_concurrently(
    conn: "Connection",
    leads: Sequence["Lead"],
    kind: str,
    run_id: int,
    progress: Progress | None,
    results: list[PushResult | None],
) -> None:
    """Fill ``results`` (one slot per lead, input order); a lead not tried stays None."""
    stop = threading.Event()
    fatal: list[BaseException] = []
    workers = max(1, int(getattr(conn.config.limits, "workers", 8) or 1))

    def push_one(index: int) -> None:
        if stop.is_set():
            return  # the run is stopping: leave this lead for the next run
        try:
            results[index] = push_lead(conn, leads[index], kind=kind, run_id=run_id)  # type: ignore[arg-type]
        except BaseException:
            stop.set()  # at once, so that no worker starts another lead meanwhile
            raise

    executor = ThreadPoolExecutor(max_workers=min(workers, max(1, len(leads))), thread_name_prefix="push")
    try:
        pending: set[Future] = {executor.submit(push_one, i) for i in range(len(leads))}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is not None:
                    if not fatal:
                        log.error("push run %s stops: %s", run_id, exc)
                    fatal.append(exc)
                    stop.set()
                elif progress is not None:
                    progress.advance()
    except BaseException:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
    if fatal:
        # The first run-level failure is the one to report (a bug outranks it).
        bugs = [e for e in fatal if not isinstance(e, StsyncError)]
        raise (bugs or fatal)[0]


def _rejected_result(exc: InvalidRecord, kind: str) -> PushResult:
    from stsync.services.leads import Lead

    lead = Lead(referral_code=exc.record)
    error = {"type": "InvalidRecord", "message": exc.message, "field": exc.field}
    return _failed(lead, kind, None, exc, error)


# -- where leads come from --------------------------------------------------------------------


def leads_from_input(obj: Any) -> tuple[list["Lead"], list[InvalidRecord]]:
    """Leads from parsed JSON input (``--file``). In a list, a record that is not a valid
    lead (no e-mail) is set aside so the others still go; alone, it is raised."""
    from stsync.services.leads import lead_from_json_object, leads_from_json

    if not isinstance(obj, list) or not obj:
        return leads_from_json(obj), []
    leads: list[Lead] = []
    rejected: list[InvalidRecord] = []
    for position, item in enumerate(obj, start=1):
        try:
            leads.append(lead_from_json_object(item, position=position))
        except InvalidRecord as exc:
            rejected.append(exc)
    return leads, rejected



def fetch_lead(conn: "Connection", *, code: str | None = None, rf_user_id: int | None = None) -> "Lead":
    """A lead read from Referral Factory by code or user id, with its campaign and referrer."""
    from stsync.services.leads import lead_from_user

    if (code is None) == (rf_user_id is None):
        raise UsageError("give exactly one of --code or --rf-user-id")
    rf = conn.referral_factory
    campaign_id = conn.campaign_id
    if code is not None:
        user = rf.find_user_by_code(campaign_id, code)
        if user is None:
            raise UsageError(
                f"campaign {campaign_id} has no Referral Factory user with referral code {code!r}",
                hint="check the code (it is the last part of the lead's referral link)",
            )
    else:
        try:
            user = rf.get_user(int(rf_user_id))  # type: ignore[arg-type]
        except ReferralFactoryApiError as exc:
            if exc.status == 404:
                raise UsageError(
                    f"Referral Factory has no user with id {rf_user_id}",
                    hint="check the id (Referral Factory → campaign → Participants), or push by --code",
                ) from None
            raise
        if user.campaign_id is not None and user.campaign_id != campaign_id:
            raise UsageError(
                f"Referral Factory user {rf_user_id} belongs to campaign {user.campaign_id}, "
                f"not to this connection's campaign {campaign_id}",
                hint="use --config for the connection of that campaign",
            )
    campaign = rf.get_campaign(user.campaign_id if user.campaign_id is not None else campaign_id)
    referrer = None
    if user.referrer_id is not None:
        try:
            referrer = rf.get_user(user.referrer_id)
        except ReferralFactoryApiError as exc:
            if exc.status != 404:
                raise
            log.warning("the referrer (user %s) of %s no longer exists", user.referrer_id, user.id)
    return lead_from_user(user, campaign=campaign, referrer=referrer)


def complete_leads(conn: "Connection", leads: Sequence["Lead"], *, kind: Kind = Kind.LEAD) -> list["Lead"]:
    """Fill the campaign name of leads read from a file when the mapping needs it.

    Referral Factory's user object carries ``campaign_id`` but not the campaign's name, and
    the default mapping sends the name as the booking's Source.
    """
    from stsync.mapping.booking import lead_fields_read

    if "campaign_name" not in lead_fields_read(conn.config.booking_section(kind)):
        return list(leads)
    if all(lead.campaign_name for lead in leads):
        return list(leads)
    names: dict[int, str | None] = {}
    completed = []
    for lead in leads:
        if not lead.campaign_name:
            campaign_id = lead.campaign_id if lead.campaign_id is not None else conn.campaign_id
            if campaign_id not in names:
                names[campaign_id] = conn.referral_factory.get_campaign(campaign_id).name
            lead = replace(lead, campaign_name=names[campaign_id], campaign_id=campaign_id)
        completed.append(lead)
    return completed


def new_leads(conn: "Connection", *, kind: Kind = Kind.LEAD) -> list["Lead"]:
    """The campaign's users of this kind (``POST /users/search``, paged) with no booking in the ledger."""
    from stsync.mapping.booking import external_id_for, lead_fields_read
    from stsync.services.leads import lead_from_user

    rf = conn.referral_factory
    campaign_id = conn.campaign_id
    user_type = USER_TYPE_FOR_KIND[kind]
    section = conn.config.booking_section(kind)
    campaign = rf.get_campaign(campaign_id)
    wants_referrer = any(source.startswith("referrer_") for source in lead_fields_read(section))
    referrers: dict[int, Any] = {}
    ledger = conn.ledger
    leads: list[Lead] = []
    seen: set[str] = set()
    for user in rf.search_users([("campaign_id", campaign_id), ("type", user_type)]):
        if user.type != user_type:
            continue  # the search filter is re-checked, as for campaign_id
        referrer = None
        if wants_referrer and user.referrer_id is not None:
            if user.referrer_id not in referrers:
                try:
                    referrers[user.referrer_id] = rf.get_user(user.referrer_id)
                except ReferralFactoryApiError as exc:
                    if exc.status != 404:
                        raise
                    referrers[user.referrer_id] = None
            referrer = referrers[user.referrer_id]
        lead = lead_from_user(user, campaign=campaign, referrer=referrer)
        try:
            external_id = external_id_for(lead, section)
        except InvalidRecord:
            leads.append(lead)  # push_lead reports what is missing
            continue
        if external_id in seen:
            continue  # a page boundary moved under us: the same user twice
        seen.add(external_id)
        known = ledger.get_push(external_id)
        if known is not None and known.state == PushState.BOOKED:
            continue
        leads.append(lead)
    return leads


def push_new(
    conn: "Connection",
    *,
    kind: Kind = Kind.LEAD,
    progress: Progress | None = None,
    dry_run: bool = False,
    command: str = "push-lead --new",
) -> PushReport:
    """Every lead of the campaign without a booking yet, under the connection's push lock."""
    nothing = nothing_to_action(conn, kind)
    if nothing is not None:
        report = PushReport(kind=kind, dry_run=dry_run)
        report.notice, report.notice_hint = nothing
        return report
    check_mapping(conn, kind)
    if dry_run:
        return push_leads(conn, new_leads(conn, kind=kind), kind=kind, progress=progress, dry_run=True)
    with conn.run_lock(RunJob.PUSH, command=command):
        leads = new_leads(conn, kind=kind)
        return push_leads(conn, leads, kind=kind, progress=progress, command=command)
