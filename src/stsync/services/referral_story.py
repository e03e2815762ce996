"""One referral's whole story (``stsync diagnose --email``), from typed records.

Support asks for the e-mail of the referral that failed to book. The story puts together what
each side knows about it (the e-mail matched case-insensitively):

- **Referral Factory** (live): the user — referred lead or referrer, code, joined when, who
  referred it, qualified or not — or why it was not looked up;
- **the ledger**: every push of it (one per externalId) with every attempt (the booking id, or
  the exact error as recorded), the booking's and job's last tracked status, the
  qualifications; the webhook deliveries about it (what ``serve`` received and what became of
  it); and the customer sync's record when it was enrolled as a referrer (its ServiceTitan
  customer, the Referral Factory user, the return fields written back) — a referrer who came
  from customer sync is told that story, never advised to be pushed as a lead;
- **ServiceTitan** (live): the booking and its job as they are now, or, for a lead stsync
  never pushed, whether some other integration booked it.

Then the story in plain sentences (``summary``) and what to do next (``next_steps``). A lead
not qualified yet is told what it waits for: the booking to become a job, or its job (as
ServiceTitan has it now, else as last tracked) to reach the rule's status. A live
side is only asked when its client is given (diagnose gives one whose key check passed);
errors on the way become sentences, never exceptions. ``ReferralStory.to_dict()`` is the
``story`` object of ``diagnose --json`` and of the support bundle. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from stsync.errors import StsyncError, error_summary
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.services.history import delivery_entry
from stsync.storage.states import (
    BOOKED_OUTCOMES,
    UNKNOWN_LABEL,
    AttemptOutcome,
    PushState,
    QualificationState,
    QualificationValue,
    ReferrerState,
)
from stsync.vocabulary import Action, HistoryKind, Kind, QualificationRule

if TYPE_CHECKING:
    from stsync.referralfactory.client import ReferralFactoryClient
    from stsync.referralfactory.models import User
    from stsync.servicetitan.client import ServiceTitanClient
    from stsync.storage.config import Config, Qualification
    from stsync.storage.ledger import Ledger, PushRecord

USER_KINDS = {PERSON_INVITED: "referred lead", PERSON_REFERRING: "referrer"}
ATTEMPTS_READ = 100
DELIVERIES_READ = 50
STRAY_ATTEMPTS_READ = 200


# == the records ================================================================================


@dataclass
class StoryReferrer:
    """Who referred the user: as Referral Factory has them, or why they could not be read."""

    id: int | None
    first_name: str | None = None
    email: str | None = None
    code: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"id": self.id, "error": self.error}
        return {"id": self.id, "first_name": self.first_name, "email": self.email, "code": self.code}


@dataclass
class StoryUser:
    """The Referral Factory user with this e-mail in the connection's campaign."""

    id: int | None
    campaign_id: int | None
    type: str | None
    type_label: str | None
    first_name: str | None
    email: str | None
    code: str | None
    url: str | None
    source: str | None
    signed_up_at: Any
    qualified: bool
    qualified_at: Any
    referrer_id: int | None
    referrer: StoryReferrer | None = None

    @classmethod
    def of(cls, user: User) -> StoryUser:
        return cls(
            id=user.id,
            campaign_id=user.campaign_id,
            type=user.type,
            type_label=USER_KINDS.get(user.type or "", user.type),
            first_name=user.first_name,
            email=user.email,
            code=user.code,
            url=user.url,
            source=user.source,
            signed_up_at=user.signed_up_at,
            qualified=user.qualified,
            qualified_at=user.qualified_at,
            referrer_id=user.referrer_id,
        )

    def to_dict(self) -> dict[str, Any]:
        shape = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "referrer"}
        shape["referrer"] = self.referrer.to_dict() if self.referrer is not None else None
        return shape


@dataclass
class AttemptStory:
    at: str | None
    outcome: str
    booking_id: int | None
    error_text: str | None
    error: dict[str, Any] | None
    run_id: int | None


@dataclass
class QualificationStory:
    at: str | None
    action: str
    state: str
    rule: str | None
    reason: str | None
    error_text: str | None
    error: dict[str, Any] | None


@dataclass
class LiveJob:
    id: int
    number: str | None
    status: str | None
    completed_on: str | None


@dataclass
class LiveBooking:
    """The booking (and its job) as ServiceTitan has them now."""

    booking_id: int
    status: str | None
    job_id: int | None
    dismissing_reason_id: int | None
    modified_on: str | None
    job: LiveJob | None = None


@dataclass
class PushStory:
    """One externalId pushed for this e-mail: the ledger's record, every attempt, and the
    booking as it is now (``servicetitan``) or why it was not looked up."""

    external_id: str
    kind: str
    email: str | None
    name: str | None
    rf_user_id: int | None
    referral_code: str | None
    state: str
    booking_id: int | None
    booking_status: str | None
    job_id: int | None
    job_status: str | None
    final: bool
    qualification: str | None
    qualified_at: str | None
    first_seen: str | None
    held_until: str | None = None  # the rule is met; qualified then, unless the job is canceled
    attempts: list[AttemptStory] = field(default_factory=list)
    qualifications: list[QualificationStory] = field(default_factory=list)
    servicetitan: LiveBooking | None = None
    servicetitan_note: str | None = None


@dataclass
class ReferrerRecordStory:
    """The customer sync's record: a ServiceTitan customer enrolled as a referrer."""

    customer_id: int
    rf_user_id: int | None
    code: str | None
    state: str
    skip_reason: str | None
    error: dict[str, Any] | None
    updated_at: str | None
    shared_with: int | None = None  # state shared: the customer whose referrer this one shares
    return_fields: dict[str, str | None] = field(default_factory=dict)  # written back to the customer


@dataclass
class DeliveryStory:
    """A webhook delivery about this e-mail, as ``history`` lists it."""

    id: str  # `history --ack` takes it
    event: str | None
    received_at: str
    outcome: str
    external_id: str | None
    error_text: str | None
    error: dict[str, Any] | None
    acknowledged_at: str | None


@dataclass
class ReferralStory:
    """Everything known about one e-mail: Referral Factory, the ledger, ServiceTitan."""

    email: str
    seen: bool = False
    referral_factory: StoryUser | None = None
    referral_factory_note: str | None = None  # not looked up (offline) or the lookup failed
    pushes: list[PushStory] = field(default_factory=list)
    referrer_record: ReferrerRecordStory | None = None
    deliveries: list[DeliveryStory] = field(default_factory=list)  # newest first
    summary: list[str] = field(default_factory=list)  # the story in plain sentences
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "seen": self.seen,
            "referral_factory": self.referral_factory.to_dict() if self.referral_factory is not None else None,
            "referral_factory_note": self.referral_factory_note,
            "pushes": [asdict(push) for push in self.pushes],
            "referrer_record": asdict(self.referrer_record) if self.referrer_record is not None else None,
            "deliveries": [asdict(delivery) for delivery in self.deliveries],
            "summary": list(self.summary),
            "next_steps": list(self.next_steps),
        }


# == the story ==================================================================================


def referral_story(
    email: str,
    *,
    config: Config | None,
    ledger: Ledger | None,
    servicetitan: ServiceTitanClient | None = None,
    referral_factory: ReferralFactoryClient | None = None,
    offline: bool = False,
) -> ReferralStory:
    """What the ledger, Referral Factory and ServiceTitan know about ``email`` (case-insensitive).

    ``servicetitan`` / ``referral_factory``: clients known to work (None: that side is not asked)."""
    email = email.strip()
    story = ReferralStory(email=email)
    user = _look_up_user(story, email, config, referral_factory, offline=offline)
    if ledger is not None:
        story.pushes = [_push_story(push, ledger, servicetitan, config) for push in _pushes_of(ledger, email)]
        record = ledger.referrer_by_email(email)
        if record is not None:
            story.referrer_record = ReferrerRecordStory(
                customer_id=record.customer_id, rf_user_id=record.rf_user_id, code=record.code, state=record.state,
                skip_reason=record.skip_reason, error=record.error, updated_at=record.updated_at,
                return_fields=ledger.get_return_fields(record.customer_id),
                shared_with=record.shared_with,
            )
        story.deliveries = _deliveries_of(ledger, email, user)
    if not story.pushes and user is not None and user.code and servicetitan is not None and config is not None:
        story.summary.extend(_booked_elsewhere(servicetitan, config, user.code))
    story.seen = bool(story.pushes or story.referral_factory or story.referrer_record or story.deliveries)
    _tell(story, config, offline=offline)
    return story


def _look_up_user(
    story: ReferralStory,
    email: str,
    config: Config | None,
    referral_factory: ReferralFactoryClient | None,
    *,
    offline: bool,
) -> User | None:
    if offline:
        story.referral_factory_note = "not looked up (--offline)"
        return None
    if referral_factory is None or config is None or config.referral_factory.campaign_id is None:
        story.referral_factory_note = "not looked up: Referral Factory cannot be reached with this connection (see the checks)"
        return None
    campaign_id = int(config.referral_factory.campaign_id)
    user = None
    try:
        user = referral_factory.find_user_by_email(campaign_id, email)
    except StsyncError as exc:
        story.referral_factory_note = f"the lookup failed: {exc}"
    if user is None:
        if story.referral_factory_note is None:
            story.referral_factory_note = f"no user with this e-mail in campaign {campaign_id}"
        return None
    story.referral_factory = StoryUser.of(user)
    if user.referrer_id:
        try:
            referrer = referral_factory.get_user(int(user.referrer_id))
        except StsyncError as exc:
            story.referral_factory.referrer = StoryReferrer(id=user.referrer_id, error=str(exc))
        else:
            story.referral_factory.referrer = StoryReferrer(
                id=referrer.id, first_name=referrer.first_name, email=referrer.email, code=referrer.code
            )
    return user


def _pushes_of(ledger: Ledger, email: str) -> list[PushRecord]:
    """The pushes recorded for the e-mail, and those of attempts that name it (one recorded
    before its push row took another e-mail)."""
    pushes = ledger.pushes_by_email(email)
    codes = {push.external_id for push in pushes}
    stray = [a for a in ledger.push_attempts(email=email, limit=STRAY_ATTEMPTS_READ) if a.external_id not in codes]
    for external_id in dict.fromkeys(a.external_id for a in stray):
        push = ledger.get_push(external_id)
        if push is not None:
            pushes.append(push)
            codes.add(external_id)
    return pushes


def _deliveries_of(ledger: Ledger, email: str, user: User | None) -> list[DeliveryStory]:
    """The webhook deliveries about the e-mail: keyed by it or by its Referral Factory user, or
    naming an External Id pushed for it."""
    acknowledged = ledger.acknowledgements(HistoryKind.WEBHOOK)
    user_ids = [user.id] if user is not None and user.id is not None else []
    stories = []
    for number, delivery in ledger.delivery_entries(email=email, rf_user_ids=user_ids, limit=DELIVERIES_READ):
        entry = delivery_entry(number, delivery, acknowledged.get(delivery.key))
        stories.append(
            DeliveryStory(
                id=entry.id, event=delivery.event, received_at=delivery.received_at, outcome=entry.outcome,
                external_id=delivery.external_id, error_text=entry.error_text or None, error=delivery.error,
                acknowledged_at=entry.acknowledged_at,
            )
        )
    return stories


def _booked_elsewhere(servicetitan: ServiceTitanClient, config: Config, code: str) -> list[str]:
    """For a lead stsync never pushed: did something else book it?"""
    bp = config.servicetitan.booking_provider
    if bp is None:
        return []
    try:
        found = servicetitan.find_bookings_by_external_id(int(bp), code)
    except StsyncError as exc:
        return [f"ServiceTitan could not be searched for externalId {code}: {exc}"]
    if not found:
        return []
    ids = ", ".join(str(b.id) for b in found)
    return [
        f"ServiceTitan has booking(s) {ids} with externalId {code}, not made by stsync on this "
        "connection (Referral Factory's own ServiceTitan integration?)"
    ]


def _push_story(push: PushRecord, ledger: Ledger, servicetitan: ServiceTitanClient | None, config: Config | None) -> PushStory:
    story = PushStory(
        external_id=push.external_id, kind=push.kind, email=push.email, name=push.name, rf_user_id=push.rf_user_id,
        referral_code=push.referral_code, state=push.state, booking_id=push.booking_id,
        booking_status=push.booking_status, job_id=push.job_id, job_status=push.job_status, final=push.final,
        qualification=push.qualification, qualified_at=push.qualified_at, first_seen=push.created_at,
        held_until=push.held_until,
        attempts=[
            AttemptStory(
                at=a.finished_at or a.started_at, outcome=a.outcome, booking_id=a.booking_id,
                error_text=error_summary(a.error) if a.error else None, error=a.error, run_id=a.run_id,
            )
            for a in ledger.push_attempts(external_id=push.external_id, limit=ATTEMPTS_READ)
        ],
        qualifications=[
            QualificationStory(
                at=q.at, action=q.action, state=q.state, rule=q.rule, reason=q.reason,
                error_text=error_summary(q.error) if q.error else None, error=q.error,
            )
            for q in ledger.qualifications_for(push.external_id)
        ],
        servicetitan_note=None if servicetitan is not None else "not looked up",
    )
    bp = config.servicetitan.booking_provider if config is not None else None
    if servicetitan is None or bp is None:
        return story
    try:
        if push.booking_id is not None:
            bookings = [servicetitan.get_booking(int(bp), int(push.booking_id))]
        else:
            bookings = servicetitan.find_bookings_by_external_id(int(bp), push.external_id)
        if not bookings:
            story.servicetitan_note = f"no booking with externalId {push.external_id} in ServiceTitan"
            return story
        booking = min(bookings, key=lambda b: b.id)
        live = LiveBooking(
            booking_id=booking.id, status=booking.status, job_id=booking.job_id,
            dismissing_reason_id=booking.dismissing_reason_id,
            modified_on=booking.modified_on.isoformat() if booking.modified_on else None,
        )
        if booking.job_id is not None:
            job = servicetitan.get_job(int(booking.job_id))
            live.job = LiveJob(
                id=job.id, number=job.job_number, status=job.job_status,
                completed_on=job.completed_on.isoformat() if job.completed_on else None,
            )
        story.servicetitan = live
    except StsyncError as exc:
        story.servicetitan_note = f"ServiceTitan could not be read: {exc}"
    return story


# == the story in sentences =====================================================================


def _tell(story: ReferralStory, config: Config | None, *, offline: bool) -> None:
    """The story in sentences, and what to do next."""
    user = story.referral_factory
    if user is not None:
        qualified = f"qualified at {user.qualified_at}" if user.qualified else "not qualified (Pending)"
        referrer = user.referrer
        by = ""
        if referrer is not None and (referrer.email or referrer.first_name):
            address = f"<{referrer.email or '?'}>"
            by = ", referred by " + " ".join(filter(None, [referrer.first_name, address]))
        elif user.referrer_id:
            by = f", referred by user {user.referrer_id}"
        story.summary.insert(
            0,
            f"Referral Factory: {user.type_label} #{user.id} (code {user.code}), joined {user.signed_up_at}{by}; {qualified}.",
        )
    elif story.referral_factory_note:
        story.summary.insert(0, f"Referral Factory: {story.referral_factory_note}.")

    for push in story.pushes:
        story.summary.extend(_push_sentences(push, config))

    if story.referrer_record is not None:
        story.summary.extend(_customer_sync_sentences(story.referrer_record))
        error = story.referrer_record.error
        if error and error.get("hint"):
            story.next_steps.append(str(error["hint"]))

    for delivery in story.deliveries:
        story.summary.append(_delivery_sentence(delivery))

    if not story.seen:
        _never_seen(story, config, offline=offline)
        return

    _delivery_steps(story)
    if story.referrer_record is not None and not story.pushes:
        # A referrer enrolled from ServiceTitan: an existing customer, whose story is the
        # customer sync's — a lead's booking ("first-time client") would be wrong for them.
        _customer_sync_steps(story, story.referrer_record)
        return

    if user is not None and not story.pushes:
        if user.type == PERSON_REFERRING and config is not None and config.referrers.action != Action.CREATE_BOOKING:
            story.summary.append("stsync never pushed it: it is a referrer, and referrers are set to Nothing to action.")
            story.next_steps.append("to book referrers too: `stsync map action referrers create-booking`")
        else:
            story.summary.append("stsync never pushed this lead.")
            if config is not None and config.leads.action != Action.CREATE_BOOKING and user.type == PERSON_INVITED:
                story.next_steps.append("leads are set to Nothing to action: `stsync map action leads create-booking`")
            story.next_steps.append(f"push it now: `stsync push-lead --code {user.code}`")
            story.next_steps.append(
                "check that `stsync push-lead --new` runs from cron (or `stsync serve` receives the webhooks)"
            )
        return

    for push in story.pushes:
        last = push.attempts[0] if push.attempts else None
        if push.state != PushState.BOOKED and last is not None and last.outcome == AttemptOutcome.UNKNOWN:
            story.next_steps.append(
                f"nothing to fix: the booking for externalId {push.external_id} is {UNKNOWN_LABEL} — the next push "
                "(cron's `stsync push-lead --new`) looks it up first and creates it only if it is still absent"
            )
        if push.state != PushState.BOOKED and last is not None and last.outcome in (AttemptOutcome.FAILED, AttemptOutcome.LOST):
            command = f"stsync push-lead --code {push.external_id}" + (" --referrer" if push.kind == Kind.REFERRER else "")
            story.next_steps.append(f"fix what the error above says, then push it again: `{command}`")
        live = push.servicetitan
        rule = config.leads.qualification if config is not None else None
        waiting = rule is not None and rule.rule != QualificationRule.NONE and push.kind == Kind.LEAD
        if push.state == PushState.BOOKED and live is not None and live.job is None and live.status != "Dismissed":
            if waiting:
                story.next_steps.append(
                    f"the booking {live.booking_id} has no job yet: qualification waits until a CSR books a job from it"
                )
        elif waiting and push.qualification is None and rule is not None and _rule_met(push, rule):
            story.next_steps.append("the rule is met: `stsync qualify` (cron runs it) qualifies the referral")


def _customer_sync_sentences(record: ReferrerRecordStory) -> list[str]:
    """The customer sync's record in words: the customer and its outcome, the Referral Factory
    user it became, what was written back to the customer, the last error."""
    state = UNKNOWN_LABEL if record.state == ReferrerState.UNKNOWN else record.state
    if record.state == ReferrerState.SHARED and record.shared_with is not None:
        state = f"shares the referrer of customer {record.shared_with}"
    sentences = [
        f"Customer sync: ServiceTitan customer {record.customer_id} → referrer ({state}"
        + (f": {record.skip_reason}" if record.skip_reason else "")
        + ")"
        + (f", at {record.updated_at}" if record.updated_at else "")
        + "."
    ]
    if record.rf_user_id is not None:
        code = f" (code {record.code})" if record.code else ""
        sentences.append(f"  it is Referral Factory referrer #{record.rf_user_id}{code}.")
    written = {name: value for name, value in record.return_fields.items() if value}
    if written:
        sentences.append(
            "  return fields written to the customer: " + "; ".join(f"{name} = {value}" for name, value in written.items())
        )
    elif record.rf_user_id is not None:
        sentences.append("  no return field written to the customer yet.")
    if record.error:
        sentences.append(f"  last error: {error_summary(record.error)}")
    return sentences


def _customer_sync_steps(story: ReferralStory, record: ReferrerRecordStory) -> None:
    story.summary.append(
        "A referrer from customer sync is an existing ServiceTitan customer: no booking is made for them "
        "(a booking is a referred lead's, a first-time client's)."
    )
    if (record.state == ReferrerState.FAILED or record.error) and not (record.error or {}).get("hint"):
        story.next_steps.append(
            "fix what the error above says; the next `stsync sync-customers` tries the customer again"
        )
    elif record.state == ReferrerState.SKIPPED:
        story.next_steps.append(
            f"the customer was skipped ({(record.skip_reason or '').replace('_', ' ')}): fix it in ServiceTitan; "
            "the next `stsync sync-customers --ongoing` picks the change up"
        )


def _delivery_sentence(delivery: DeliveryStory) -> str:
    what = f"Webhook {delivery.id} ({delivery.event or 'unknown event'}) received {delivery.received_at}: {delivery.outcome}"
    if delivery.error_text:
        what += f" — {delivery.error_text}"
    if delivery.acknowledged_at:
        what += f" (acknowledged {delivery.acknowledged_at})"
    return what + "."


def _delivery_steps(story: ReferralStory) -> None:
    failed = [d for d in story.deliveries if d.outcome == "failed" and not d.acknowledged_at]
    if not failed or any(push.state == PushState.BOOKED for push in story.pushes):
        return
    first = failed[0]
    push = f"`stsync push-lead --code {first.external_id}`" if first.external_id else "`stsync push-lead --new`"
    story.next_steps.append(
        f"the webhook delivery {first.id} failed (above): fix the cause, then push it with {push} (or let cron's "
        f"`push-lead --new` do it); `stsync history --ack {first.id}` if it never will be"
    )

def _never_seen(story: ReferralStory, config: Config | None, *, offline: bool) -> None:
    story.summary.insert(0, f"{story.email}: never seen — not in the ledger" + ("" if offline else " nor in the campaign") + ".")
    campaign = config.referral_factory.campaign_id if config is not None else None
    story.next_steps.extend(
        [
            "check the e-mail's spelling: it is matched as the lead typed it in the Referral Factory form (case aside)",
            f"check that the lead joined campaign {campaign if campaign is not None else '(not configured)'}, not another one",
            "new leads are booked by `stsync push-lead --new` (cron) or `stsync serve` (webhooks): check that one runs "
            "(`stsync history` lists every push)",
        ]
    )
    if offline:
        story.next_steps.append("run `stsync diagnose --email` without --offline to look the e-mail up in Referral Factory")
    if config is not None and config.leads.action != Action.CREATE_BOOKING:
        story.next_steps.insert(
            0, "leads are set to Nothing to action: no lead is sent; `stsync map action leads create-booking`"
        )


def _push_sentences(push: PushStory, config: Config | None) -> list[str]:
    sentences: list[str] = []
    what = Kind.LEAD if push.kind == Kind.LEAD else Kind.REFERRER
    sentences.append(
        f"Ledger: {what} pushed as externalId {push.external_id} (first seen {push.first_seen}); state {push.state}"
        + (f", booking {push.booking_id}" if push.booking_id else "")
        + "."
    )
    for attempt in reversed(push.attempts):  # oldest first reads as a story
        if attempt.outcome in BOOKED_OUTCOMES:
            text = f"booking {attempt.booking_id} ({attempt.outcome.replace('_', ' ')})"
        elif attempt.outcome == AttemptOutcome.INTENT:
            text = "sent, answer not recorded yet (a run in progress, or one that was killed)"
        elif attempt.outcome == AttemptOutcome.UNKNOWN:
            # The error's message starts with the label: "unknown — will be checked again: …".
            text = attempt.error_text or UNKNOWN_LABEL
        elif attempt.error_text:
            text = f"{attempt.outcome} — {attempt.error_text}"
        else:
            text = attempt.outcome
        sentences.append(f"  attempt {attempt.at}: {text}")
    live = push.servicetitan
    if live is not None:
        job_text = f"job {live.job.id} is {live.job.status}" if live.job is not None else "no job yet"
        sentences.append(f"ServiceTitan now: booking {live.booking_id} is {live.status}; {job_text}.")
    elif push.servicetitan_note and push.servicetitan_note != "not looked up":
        sentences.append(f"ServiceTitan: {push.servicetitan_note}.")
    elif push.booking_status or push.job_id:
        job = f"job {push.job_id} {push.job_status or ''}".strip() if push.job_id else "no job recorded"
        sentences.append(f"Last tracked: booking {push.booking_status or '?'}; {job}.")
    rule = config.leads.qualification if config is not None else None
    if push.qualification == QualificationValue.QUALIFIED:
        sentences.append(f"Qualified by stsync at {push.qualified_at}.")
    elif push.qualification == QualificationValue.UNQUALIFIED:
        sentences.append(f"Unqualified by stsync at {push.qualified_at}.")
    elif push.held_until and push.kind == Kind.LEAD and not push.final:
        days = f"{rule.hold_days}-day " if rule is not None and rule.hold_days else ""
        sentences.append(
            f"Held until {push.held_until}: the job met the rule; stsync qualifies it then unless the job is canceled "
            f"in the {days}hold."
        )
    elif rule is not None and push.kind == Kind.LEAD:
        sentences.append(_waiting_for(push, rule))
    for item in push.qualifications:
        if item.state == QualificationState.FAILED:
            sentences.append(f"  {item.action} failed at {item.at}: {item.error_text}")
    return sentences


def _job_of(push: PushStory) -> tuple[int | None, str | None]:
    """The push's job and its status: as ServiceTitan has it now, else as last tracked."""
    live = push.servicetitan
    if live is not None:
        if live.job is not None:
            return live.job.id, live.job.status
        if live.job_id is not None:
            return live.job_id, None
        return None, None
    return push.job_id, push.job_status


def _rule_met(push: PushStory, rule: Qualification) -> bool:
    job_id, status = _job_of(push)
    if job_id is None:
        return False
    return rule.rule == QualificationRule.JOB_CREATED or (rule.rule == QualificationRule.JOB_STATUS and status == rule.job_status)


def _waiting_for(push: PushStory, rule: Qualification) -> str:
    """What a lead not qualified yet waits for, in words: the booking to become a job, or its
    job to reach the rule's status — or nothing but the next ``qualify`` run."""
    if rule.rule == QualificationRule.NONE:
        return "Not qualified by stsync: the rule is Do not qualify (`stsync map qualify` sets one)."
    job_id, status = _job_of(push)
    reaches = f" and its job reaches {rule.job_status}" if rule.rule == QualificationRule.JOB_STATUS else ""
    hold = f", then a {rule.hold_days}-day hold" if rule.hold_days else ""
    if job_id is None:
        return (
            f"Not qualified yet: waiting for the booking to become a job (the rule qualifies it when it does"
            f"{reaches}{hold})."
        )
    job = f"job {job_id}" + (f" ({status})" if status else "")
    if _rule_met(push, rule):
        then = f"starts its {rule.hold_days}-day hold" if rule.hold_days else "qualifies it"
        return f"Not qualified yet, but the booking is {job} and the rule is met: the next `stsync qualify` {then}."
    if status == "Canceled":
        return f"Not qualified: the booking became {job}, which was canceled; it qualifies only if the job is reopened."
    now = f", it is {status} now" if status else ""
    return f"Not qualified yet: the booking is {job}; waiting for the job to reach {rule.job_status}{now}{hold}."
