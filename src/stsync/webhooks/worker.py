"""What one delivery does, each outcome recorded in the ledger (``DeliveryWorker.process``;
the threads that call it are ``pool.DeliveryPool``'s).

**What a delivery does.** ``lead_created`` → the booking push, kind lead; ``referrer_joined``
→ the same push, kind referrer. The push is given by the caller (``push_for``:
``services.serve.booking_push``, the connection's ``push_target`` and ``push_lead``): asked
once per delivery for the event's kind, it answers with how to push one lead, or with why
that kind is not sent ("Nothing to action") — then the delivery is ignored before anything
is read. ``lead_qualified`` → recorded on the lead's push in the ledger, so ``qualify``
never qualifies it again (and ``unqualify_on`` still applies). The referred lead of either
event, once read back, is recorded as seen (``tracking.referrals``: the report's referred
leads and their referrers) before anything else is done with it.

**Verified, not trusted.** The payload only says *who* (an id, a referral code or an
e-mail is enough): the user is read back from Referral Factory (by id, code or e-mail; the
e-mail, when given, must agree) and must belong to this connection's campaign; the booking
is made from what Referral Factory says, with its campaign and referrer. Each worker thread
keeps one ``LeadReader`` for ``READER_TTL`` seconds, so a flood of deliveries reads the
campaign (and each referrer) once per thread, not once per delivery.

**Failures.** A delivery whose processing raises is recorded as ``failed`` with its error
(the error's ``to_dict()``; an unexpected exception's type only, its detail going only to
the log): a server outlives a bad delivery. A failure that would stop a batch run
(``errors.stops_run``: credentials, the mapping, a remote down past the retry budget) is
logged as an error too, since every delivery after it fails the same way until it is fixed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from stsync.errors import InvalidRecord, NotFound, StsyncError, stops_run
from stsync.leads import LeadReader, lead_from_user
from stsync.logs import get_logger, log_context
from stsync.mapping.booking import external_id_for
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.storage.states import (
    DeliveryOutcome,
    LeadSeenBy,
    QualificationAction,
    QualificationState,
    QualificationValue,
)
from stsync.tracking.referrals import record_leads_seen
from stsync.vocabulary import Kind
from stsync.webhooks.deliveries import Delivery, DeliveryEvent, Observer, ServeStats, report
from stsync.webhooks.payload import LEAD_CREATED, REFERRER_JOINED

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.leads import Lead
    from stsync.referralfactory.models import User

log = get_logger(__name__)

# (lead, run id) → (outcome, message, booking id); raises the error of a failed record.
LeadPush = Callable[["Lead", "int | None"], "tuple[str, str, int | None]"]
# kind → the push of one lead of that kind, or the notice saying why that kind is not sent.
PushFor = Callable[[Kind], "LeadPush | str"]

KIND_FOR_EVENT = {LEAD_CREATED: Kind.LEAD, REFERRER_JOINED: Kind.REFERRER}

# How long a worker thread trusts the campaign and referrers it read (a long-running server
# still sees a renamed campaign within minutes).
READER_TTL = 300.0


class DeliveryWorker:
    """Processes deliveries (``process``, called from any number of threads)."""

    def __init__(
        self,
        conn: Connection,
        *,
        push_for: PushFor,
        stats: ServeStats,
        observer: Observer | None = None,
        run_id: int | None = None,
    ) -> None:
        self.conn = conn
        self.push_for = push_for
        self.stats = stats
        self.observer = observer
        self.run_id = run_id
        self._local = threading.local()

    def reader(self) -> LeadReader:
        """This thread's reader, renewed every ``READER_TTL`` seconds."""
        reader, born = getattr(self._local, "reader", (None, 0.0))
        if reader is None or time.monotonic() - born > READER_TTL:
            reader = LeadReader(self.conn.referral_factory, self.conn.campaign_id)
            self._local.reader = (reader, time.monotonic())
        return reader

    # -- one delivery ------------------------------------------------------------------------------
    def process(self, delivery: Delivery) -> None:
        """Process one delivery and record its outcome; never raises. Log lines meanwhile carry
        the run, the delivery and its externalId."""
        with log_context(run_id=self.run_id, delivery=delivery.key, external_id=delivery.external_id):
            self._process(delivery)

    def _process(self, delivery: Delivery) -> None:
        outcome: str = DeliveryOutcome.FAILED
        message, error, booking_id = "", None, None
        try:
            outcome, message, booking_id = self._outcome(delivery)
        except StsyncError as exc:
            error = exc.to_dict()
            message = exc.message + (f" ({exc.hint})" if exc.hint else "")
            if stops_run(exc):
                log.error("serve: %s fails every delivery until it is fixed: %s", type(exc).__name__, message)
        except Exception as exc:  # the worker must outlive any one delivery
            log.exception("serve: unexpected error processing %s", delivery.key)
            error = {"type": type(exc).__name__, "message": "unexpected error; see the log"}
            message = f"unexpected error ({type(exc).__name__}); details in stsync's log"
        if outcome == DeliveryOutcome.FAILED and error is None:
            error = {"message": message}
        try:
            self.conn.ledger.finish_delivery(delivery.key, outcome, error)
        except Exception:
            log.exception("serve: could not record the outcome of %s", delivery.key)
        self.stats.count_processed(outcome)
        report(
            DeliveryEvent(
                "processed", None, delivery.event, delivery.key, delivery.lead.describe(), outcome, message, booking_id
            ),
            self.observer,
        )

    def _outcome(self, delivery: Delivery) -> tuple[str, str, int | None]:
        """(outcome, message, booking id) for one delivery; raises for a failure."""
        kind = KIND_FOR_EVENT.get(delivery.event)  # None for lead_qualified: nothing is pushed
        push = self.push_for(kind) if kind is not None else None
        if isinstance(push, str):
            return DeliveryOutcome.IGNORED, push, None
        user = verified_user(self.conn, delivery.lead)
        expected = PERSON_REFERRING if delivery.event == REFERRER_JOINED else PERSON_INVITED
        if user.type is not None and user.type != expected:
            raise InvalidRecord(
                f"Referral Factory user {user.id} is a {user.type}, but the delivery says {delivery.event}",
                record=delivery.lead.describe(),
            )
        if push is None:
            if user.type == PERSON_INVITED:
                record_leads_seen(self.conn, [lead_from_user(user)], seen_by=LeadSeenBy.WEBHOOK)
            return record_reported_qualification(self.conn, user)
        lead = self.reader().lead(user)
        if kind == Kind.LEAD:
            record_leads_seen(self.conn, [lead], seen_by=LeadSeenBy.WEBHOOK)
        return push(lead, self.run_id)


def verified_user(conn: Connection, lead: Lead) -> User:
    """The Referral Factory user a delivery names, read back (id, then code, then e-mail).

    The e-mail in the payload must agree with the user found, and the user must belong to
    this connection's campaign: a payload only says who, Referral Factory says what.
    """
    rf = conn.referral_factory
    campaign_id = conn.campaign_id
    wanted_email = (lead.email or "").strip().casefold()

    def agrees(user: User | None) -> bool:
        if user is None:
            return False
        return not wanted_email or (user.email or "").strip().casefold() == wanted_email

    candidates: list[User | None] = []
    if lead.rf_user_id is not None:
        try:
            candidates.append(rf.get_user(lead.rf_user_id))
        except NotFound as exc:
            rf.confirm_deleted(exc, campaign_id=campaign_id)  # raises unless a deletion
    user = next((u for u in candidates if agrees(u)), None)
    if user is None and lead.referral_code:
        found = rf.find_user_by_code(campaign_id, lead.referral_code)
        user = found if agrees(found) else None
    if user is None and lead.email:
        user = rf.find_user_by_email(campaign_id, lead.email)
    if user is None:
        raise InvalidRecord(
            f"Referral Factory campaign {campaign_id} has no user matching {lead.describe()}",
            record=lead.describe(),
            hint="check that the webhook belongs to this connection's campaign (referral_factory.campaign_id)",
        )
    if user.campaign_id is not None and user.campaign_id != campaign_id:
        raise InvalidRecord(
            f"{lead.describe()} belongs to Referral Factory campaign {user.campaign_id}, not {campaign_id}",
            record=lead.describe(),
            hint="point that campaign's webhook at the stsync serving its connection (--config)",
        )
    return user


def record_reported_qualification(conn: Connection, user: User) -> tuple[str, str, int | None]:
    """"A lead is qualified": note it on the lead's push, so ``qualify`` never sends it again."""
    if user.qualified_at is None:
        return (
            DeliveryOutcome.IGNORED,
            f"Referral Factory shows user {user.id} as not qualified (pending): nothing recorded",
            None,
        )
    ledger = conn.ledger
    external_id: str | None
    try:
        external_id = external_id_for(lead_from_user(user), conn.config.leads)
    except StsyncError:
        external_id = user.code
    push = ledger.get_push(external_id) if external_id else None
    if push is None:
        return DeliveryOutcome.IGNORED, f"{user.email} ({user.code}) was never pushed by stsync: nothing to record", None
    if push.qualification == QualificationValue.QUALIFIED:
        return DeliveryOutcome.RECORDED, "already recorded as qualified", push.booking_id
    intent = ledger.record_qualification_intent(
        push.external_id,
        QualificationAction.QUALIFY,
        rule="referral_factory",
        reason="Referral Factory reported the lead qualified (webhook)",
    )
    ledger.record_qualification_result(intent, state=QualificationState.DONE)
    return DeliveryOutcome.RECORDED, "recorded as qualified (reported by Referral Factory)", push.booking_id
