"""One customer of ``sync-customers``: what it becomes, done exactly once and recorded.

The counterpart of ``services.push.push_lead`` for customers: the pipeline
(``customersync.pipeline``) decides which customers are handled and when; a
``CustomerHandler`` decides what happens to one, sends it and records it. It needs no feed
and no thread: ``plan(customer, contacts)`` then ``handle(plan)``.

- **plan**: the mapping (``referrer_request_for``) makes the customer a referrer request,
  or a ``Skip`` with its reason; the ledger's row for the customer is read with it.
- **skip**: counted with its reason. A customer that has a referrer keeps it (stsync never
  deletes a Referral Factory user); otherwise the skip is to be recorded, once
  (``Outcome.record_skip``: the pipeline commits it with its page's position).
- **create or adopt** (no referrer yet): under a ``KeyLock`` on the e-mail the ledger is
  read again, an intent (``pending``) is recorded, then ``POST /users``. A 422 "already
  exists" → the user is found by e-mail and adopted. A campaign user the ledger knows by
  this e-mail (a pushed lead) is read back by id and adopted.
- **a create in doubt** (``stsync.lookup_grace``): an answer lost, or a ``pending`` row a
  killed run left, and a search that does not find the user. The create is never sent
  again by the run that lost its answer, nor before a search made the grace period
  (``[limits] lookup_grace_seconds``) after the doubt began: until then the customer is
  ``unknown`` ("unknown — will be checked again"; the pipeline looks again with backoff
  until the grace period ends, then leaves it to the next run).
- **an e-mail shared by several customers** (households, landlords, property managers):
  Referral Factory holds one user per e-mail, owned by the first customer enrolled with it.
  Every other active customer with that e-mail is ``shared``: it carries the owner's link
  and code in its return fields (``shared_with`` names the owner), and never touches the
  user (two owners would overwrite each other's name). While the owner's create is in
  doubt, the others wait for it (``unknown``).
- **update**: a referrer whose mapped data changed (the fingerprint) → ``PUT /users/{id}``,
  never a second user.
- **return fields**: written only when the customer's values differ, read-modify-write on a
  fresh GET so every other custom field survives (``mapping.return_fields``: empty values are
  not sent back); the user's record and the values written land in one commit. A write that
  ServiceTitan does not keep fails the customer (no write loop). ``on_write`` hears of each
  write (the pipeline tells the write's echo in the feed from a change).
- **a refusal caused by the customer's own custom field** (a retired Dropdown option, a
  non-numeric Numeric value, a field the tenant no longer lists, sent back unchanged so as
  not to erase it): ``CustomFieldRefused`` names the customer, the field and its value and
  says to fix it in ServiceTitan, then ``stsync sync-customers --retry-failed``. The
  customer is not tried again until it changes in ServiceTitan (its ``modifiedOn`` moves)
  or ``retry_failed`` asks: meanwhile its outcome is ``needs_fix``.

Failures: ``errors.stops_run`` decides. The customer's own failure (a refusal, return fields
not kept) is an outcome ``failed``, recorded on its ledger row with the stage it happened in
(``referrer`` or ``return_fields``: a return-field write that failed is retried once per
run, ``retrying``, not each time the feed brings the customer back). A run-level failure is
raised.

A dry run sends and records nothing; a would-be creation is noted in the scratch ledger
(``staging``) so that a later customer with the same e-mail counts as ``shared``.

``handle`` runs on several threads at once, for different customers; customers sharing an
e-mail are kept apart by the KeyLock and the ledger read under it (or, in a dry run, which
takes no lock, by the caller handling them on one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.errors import (
    AnswerLost,
    CustomFieldRefused,
    DuplicateEmail,
    NotFound,
    ServiceTitanApiError,
    StsyncError,
    TemporaryError,
    stops_run,
)
from stsync.logs import get_logger, log_context
from stsync.lookup_grace import GracePeriod, parse_stamp, stamp
from stsync.mapping.referrers import ReferrerRequest, Skip, referrer_request_for
from stsync.mapping.return_fields import (
    refused_custom_fields,
    resolve_custom_field_type,
    return_field_update,
    return_values_for,
    writable_type_ids,
)
from stsync.storage.ledger import Ledger, ReferrerRecord
from stsync.storage.locks import KeyLock
from stsync.storage.states import REFERRER_IN_DOUBT_STATES, REFERRER_RETRY_STATES, UNKNOWN_LABEL, ReferrerState

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import User
    from stsync.servicetitan.client import ServiceTitanClient
    from stsync.servicetitan.models import Customer, CustomFieldType

log = get_logger(__name__)

UNCHANGED = "unchanged"  # an outcome only: the customer's referrer needed nothing (not a ledger state)
# An outcome only: ServiceTitan refused the customer's own custom-field value before, and the
# customer has not changed since (CustomFieldRefused): a person must fix it first.
NEEDS_FIX = "needs_fix"
IN_DOUBT_ERROR = "CreateInDoubt"
# Where a customer's failure happened (the ledger row's error carries it as "stage").
STAGE_REFERRER = "referrer"
STAGE_RETURN_FIELDS = "return_fields"


@dataclass
class Plan:
    """One customer, what the mapping made of it, and what the ledger knew before."""

    customer: Customer
    decision: ReferrerRequest | Skip
    record: ReferrerRecord | None

    @property
    def customer_id(self) -> int:
        return int(self.customer.id)

    @property
    def email(self) -> str | None:
        return self.decision.email if isinstance(self.decision, ReferrerRequest) else None

    @property
    def skipped_email(self) -> str | None:
        """A skipped customer's refused e-mail (``invalid_email``), kept for ``diagnose --email``."""
        return self.decision.email if isinstance(self.decision, Skip) else None

    def emails(self) -> set[str]:
        """The e-mails this customer's handling may touch: the new one and the recorded one."""
        found = set()
        if self.email:
            found.add(self.email.strip().casefold())
        if self.record is not None and self.record.email:
            found.add(self.record.email.strip().casefold())
        return found


@dataclass
class Outcome:
    """What happened to one customer (``kind``: a ``ReferrerState`` — created, adopted,
    updated, skipped or failed — or ``UNCHANGED``)."""

    customer_id: int
    kind: str
    reason: str | None = None  # why it was skipped
    email: str | None = None
    fields_written: int = 0  # return-field values written (or, in a dry run, to write)
    error: dict[str, Any] | None = None
    sample: dict[str, Any] | None = None  # dry run: what would be sent
    record_skip: bool = False  # a `skipped` row for the caller to record
    modified_on: Any = None  # the customer row's modifiedOn (ServiceTitan's clock)
    shared_with: int | None = None  # shared: the customer whose referrer this one shares
    in_doubt_since: datetime | None = None  # unknown: the create in doubt since (looks again count from then)


class _InDoubt(Exception):
    """A create that may have been applied and is not found (yet): the customer is ``unknown``."""

    def __init__(self, cause: str, since: datetime, *, run_id: int | None, waiting_for: int | None = None) -> None:
        """``run_id``: the run whose create is in doubt (None: a run killed before it said)."""
        super().__init__(cause)
        self.cause = cause
        self.since = since
        self.run_id = run_id
        self.waiting_for = waiting_for


class _StageFailure(Exception):
    """A customer's own failure, tagged with the stage it happened in (see STAGE_*)."""

    def __init__(self, error: StsyncError, stage: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.stage = stage


def return_field_types(st: ServiceTitanClient, return_fields: dict[str, str]) -> list[CustomFieldType]:
    """The customer custom-field types, read once per run and checked before anything is
    created: ``ConfigError`` (exit 3) for a return field ServiceTitan does not have or whose
    field is not Text. No request when there are no return fields."""
    if not return_fields:
        return []
    types = st.list_custom_field_types()
    writable_type_ids(return_fields, types)
    return types


class CustomerHandler:
    """Plans and handles customers for one connection (see the module docstring)."""

    def __init__(
        self,
        conn: Connection,
        *,
        types: Sequence[CustomFieldType] = (),
        dry_run: bool = False,
        staging: Ledger | None = None,
        on_write: Callable[[Any], None] | None = None,
        run_id: int | None = None,
        retry_failed: bool = False,
        grace: GracePeriod | None = None,
    ) -> None:
        """``types``: from ``return_field_types``. ``staging``: where a dry run notes its
        would-be creations (a scratch ledger; required for a dry run). ``on_write`` is called
        with the customer's new modifiedOn after each return-field write. ``run_id``: the
        run's, so a create whose answer this run lost is never sent again by it.
        ``retry_failed``: try customers whose own custom field ServiceTitan refused even if
        they did not change. ``grace``: ``[limits] lookup_grace_seconds`` by default."""
        if dry_run and staging is None:
            raise ValueError("a dry run needs a scratch ledger to note what it would create")
        settings = conn.config.customer_sync
        self.conn = conn
        self.ledger = conn.ledger
        self.staging = staging if staging is not None else conn.ledger
        self.st = conn.servicetitan
        self.campaign_id = conn.campaign_id
        self.fields = settings.fields
        self.return_fields = dict(settings.return_fields)
        self.include_inactive = settings.include_inactive
        self.types = list(types)
        self.dry_run = dry_run
        self.on_write = on_write
        self.run_id = run_id
        self.retry_failed = retry_failed
        self.grace = grace if grace is not None else GracePeriod(conn.config.limits.lookup_grace_seconds)

    @property
    def rf(self):
        # Built on first use: a dry run, or a run with nothing to create, never needs it.
        return self.conn.referral_factory

    # -- plan ------------------------------------------------------------------------------
    def plan(self, customer: Customer, contacts: Iterable[Any]) -> Plan:
        """What the mapping makes of the customer and its contacts (``ContactRow`` or
        ``CustomerContact``), with the ledger's row. Raises ``ConfigError`` for a mapping
        that cannot work for any customer."""
        decision = referrer_request_for(
            customer, list(contacts), self.fields, campaign_id=self.campaign_id, include_inactive=self.include_inactive
        )
        return Plan(customer, decision, self.ledger.get_referrer(int(customer.id)))

    def replan(self, plan: Plan) -> Plan:
        """The same customer and decision with the ledger's row as it is now."""
        return Plan(plan.customer, plan.decision, self.ledger.get_referrer(plan.customer_id))

    # -- handle ----------------------------------------------------------------------------
    def handle(self, plan: Plan, *, retrying: bool = False) -> Outcome:
        """Do what the plan says; record it (except a skip's row: ``Outcome.record_skip``).
        ``retrying``: the customer's last attempt failed (the retries phase), so a failed
        return-field write is tried again. Raises only run-level failures."""
        with log_context(customer_id=plan.customer_id):
            try:
                if isinstance(plan.decision, Skip):
                    return self._skipped(plan, plan.decision.reason)
                return self._as_referrer(plan, plan.decision, retrying)
            except _StageFailure as failure:
                return self._failed(plan, failure.error, failure.stage)
            except StsyncError as exc:
                if stops_run(exc):
                    raise
                return self._failed(plan, exc, STAGE_REFERRER)

    def _skipped(self, plan: Plan, reason: str, *, record: ReferrerRecord | None = None) -> Outcome:
        record = record if record is not None else plan.record
        has_referrer = record is not None and record.rf_user_id is not None
        unchanged = record is not None and record.state == ReferrerState.SKIPPED and record.skip_reason == reason
        return Outcome(
            plan.customer_id,
            ReferrerState.SKIPPED,
            reason=reason,
            email=plan.email or plan.skipped_email,
            record_skip=not (self.dry_run or has_referrer or unchanged),
        )

    def _failed(self, plan: Plan, exc: StsyncError, stage: str) -> Outcome:
        customer_id = plan.customer_id
        error = {"stage": stage, **exc.to_dict()}
        log.warning("customer %s (%s) failed: %s", customer_id, plan.email, exc.message)
        if not self.dry_run:
            record = self.ledger.get_referrer(customer_id)
            if record is not None and (record.rf_user_id is not None or record.state == ReferrerState.SHARED):
                # The referrer exists (its own, or the one it shares): keep its state, note what went wrong.
                self.ledger.upsert_referrer(customer_id, error=error)
            else:
                self.ledger.upsert_referrer(customer_id, state=ReferrerState.FAILED, email=plan.email, error=error)
        return Outcome(customer_id, ReferrerState.FAILED, email=plan.email, error=error)

    def _unknown(self, plan: Plan, request: ReferrerRequest, doubt: _InDoubt) -> Outcome:
        """The customer's referrer is in doubt: recorded ``unknown`` with when the doubt began."""
        if doubt.waiting_for is not None:
            hint = (
                f"it waits for customer {doubt.waiting_for}'s referrer, which has this e-mail: the next run shares it "
                "once that one is settled"
            )
        else:
            hint = (
                "the next run searches Referral Factory for the e-mail first, and creates the referrer only if a search "
                f"made {self.grace.seconds:g} s or more after the answer was lost still does not find it"
            )
        error = {
            "stage": STAGE_REFERRER,
            "type": IN_DOUBT_ERROR,
            "message": f"{UNKNOWN_LABEL}: {doubt.cause}",
            "hint": hint,
            "exit_code": TemporaryError.exit_code,
            "in_doubt_since": stamp(doubt.since),
            "run_id": doubt.run_id,
            "waiting_for": doubt.waiting_for,
        }
        self.ledger.upsert_referrer(
            plan.customer_id, state=ReferrerState.UNKNOWN, email=request.email, skip_reason=None, error=error
        )
        log.info("customer %s (%s): %s", plan.customer_id, request.email, error["message"])
        return Outcome(
            plan.customer_id, ReferrerState.UNKNOWN, email=request.email, error=error, in_doubt_since=doubt.since
        )

    def _as_referrer(self, plan: Plan, request: ReferrerRequest, retrying: bool) -> Outcome:
        record = plan.record
        if record is not None and record.rf_user_id is not None:
            return self._existing(plan, request, record, record.rf_user_id, retrying)
        if self.dry_run:
            return self._would_create(plan, request)
        with KeyLock(self.conn.paths, f"referrer:{self.campaign_id}:{request.email.strip().casefold()}"):
            # Another process may have got here first: read the ledger again under the lock.
            record = self.ledger.get_referrer(plan.customer_id)
            if record is not None and record.rf_user_id is not None:
                return self._existing(plan, request, record, record.rf_user_id, retrying)
            holder = self._holder_of(request.email, plan.customer_id)
            if holder is not None:
                return self._shared(plan, request, holder, record, retrying)
            try:
                waited = self._create_in_doubt_for(request.email, plan.customer_id)
                if waited is not None:
                    raise _InDoubt(
                        f"the e-mail is that of customer {waited.customer_id}, whose referrer is {UNKNOWN_LABEL}",
                        _doubt_since(waited),
                        run_id=(waited.error or {}).get("run_id"),
                        waiting_for=waited.customer_id,
                    )
                user, kind = self._create_or_adopt(plan, request, record)
            except _InDoubt as doubt:
                return self._unknown(plan, request, doubt)
            result = {
                "state": kind,
                "rf_user_id": user.id,
                "code": user.code,
                "url": user.url,
                "email": request.email,
                "fingerprint": request.fingerprint,
                "skip_reason": None,
                "error": None,
                "shared_with": None,
            }
            written, values = 0, None
            try:
                written, values = self._write_return_fields(plan.customer, user.code, user.url)
            finally:
                # The user exists: its record lands whatever happens to the return fields, in
                # the same commit as them when they were written (one fsync, not two).
                self._record(plan.customer_id, result, values)
        return Outcome(plan.customer_id, kind, email=request.email, fields_written=written)

    def _holder_of(self, email: str, customer_id: int) -> ReferrerRecord | None:
        """The ledger row of *another* customer whose referrer has this e-mail, if any (in a
        dry run, also a customer this run would have enrolled with it)."""
        holder = self.ledger.referrer_by_email(email)
        if holder is not None and holder.customer_id != customer_id and holder.rf_user_id is not None:
            return holder
        if self.dry_run:
            would = self.staging.referrer_by_email(email)
            if would is not None and would.customer_id != customer_id and would.state != ReferrerState.SHARED:
                return would
        return None

    def _create_in_doubt_for(self, email: str, customer_id: int) -> ReferrerRecord | None:
        """Another customer's row with this e-mail whose create is in doubt (``pending`` or
        ``unknown``, not itself waiting): this customer waits for it rather than create or
        adopt the same user."""
        for other in self.ledger.referrers_by_email(email):
            if other.customer_id == customer_id or other.rf_user_id is not None:
                continue
            if other.state in REFERRER_IN_DOUBT_STATES and not (other.error or {}).get("waiting_for"):
                return other
        return None

    def _shared(
        self, plan: Plan, request: ReferrerRequest, holder: ReferrerRecord, record: ReferrerRecord | None, retrying: bool
    ) -> Outcome:
        """The e-mail is another customer's referrer's: carry its link and code, nothing else."""
        customer_id = plan.customer_id
        row: dict[str, Any] = {
            "state": ReferrerState.SHARED,
            "shared_with": holder.customer_id,
            "email": request.email,
            "code": holder.code,
            "url": holder.url,
            "rf_user_id": None,
            "fingerprint": None,
            "skip_reason": None,
        }
        if record is None or any(getattr(record, key) != value for key, value in row.items()):
            # Recorded first, so that a failed write keeps the state (``_failed``).
            self.ledger.upsert_referrer(customer_id, **row)
        needs_fix = self._needs_fix(plan.customer, record)
        if needs_fix is not None:
            return needs_fix
        failed_here = record is not None and (record.error or {}).get("stage") == STAGE_RETURN_FIELDS
        written, values = 0, None
        if retrying or not failed_here:
            written, values = self._write_return_fields(plan.customer, holder.code, holder.url)
            cleared = {"error": None} if record is not None and record.error is not None else None
            if cleared or values:
                self._record(customer_id, cleared, values)
        return Outcome(
            customer_id, ReferrerState.SHARED, email=request.email, fields_written=written, shared_with=holder.customer_id,
            modified_on=plan.customer.modified_on,
        )

    def _needs_fix(self, customer: Customer, record: ReferrerRecord | None) -> Outcome | None:
        """``needs_fix`` when ServiceTitan refused this customer's own custom field before
        and the customer has not changed since (nor ``retry_failed`` asks): not tried again."""
        error = record.error if record is not None else None
        if not error or error.get("type") != CustomFieldRefused.__name__ or self.retry_failed:
            return None
        recorded = parse_stamp(error.get("customer_modified_on"))
        current = customer.modified_on
        if recorded is None or current is None or current != recorded:
            return None  # changed in ServiceTitan since: perhaps fixed, try again
        return Outcome(int(customer.id), NEEDS_FIX, email=record.email if record else None, error=error, modified_on=current)

    def _create_or_adopt(self, plan: Plan, request: ReferrerRequest, record: ReferrerRecord | None) -> tuple[User, ReferrerState]:
        """The campaign user for this customer: found (after a crash or a lost answer, or
        known to the ledger) or created (intent recorded first). The caller records the
        result. Raises ``_InDoubt`` when a create that may have been applied is not found
        and may not be sent again yet."""
        user: User | None = None
        in_doubt = record is not None and record.state in REFERRER_IN_DOUBT_STATES and not (record.error or {}).get("waiting_for")
        if record is not None and record.state in REFERRER_RETRY_STATES:
            # A previous attempt may have created the user before its answer was lost or
            # recorded: look before writing again.
            user = self.rf.find_user_by_email(self.campaign_id, request.email)
            if user is not None:
                return user, ReferrerState.CREATED if in_doubt else ReferrerState.ADOPTED
        user = self._user_known_to_ledger(request.email)
        if user is not None:
            return user, ReferrerState.ADOPTED
        if in_doubt:
            assert record is not None
            since = _doubt_since(record)
            origin = (record.error or {}).get("run_id")
            if not self.grace.trusts(since) or (self.run_id is not None and origin == self.run_id):
                cause = (record.error or {}).get("message") or ""
                raise _InDoubt(
                    cause.removeprefix(f"{UNKNOWN_LABEL}: ")
                    or "the run stopped before Referral Factory's answer was recorded, and searching the campaign does "
                    "not find the e-mail yet",
                    since,
                    run_id=origin,
                )
        self.ledger.upsert_referrer(
            plan.customer_id,
            state=ReferrerState.PENDING,
            email=request.email,
            fingerprint=request.fingerprint,
            skip_reason=None,
            error=None,
            shared_with=None,
        )
        return self._create_or_find(plan.customer_id, request)

    def _create_or_find(self, customer_id: int, request: ReferrerRequest) -> tuple[User, ReferrerState]:
        """POST /users, once. A 422 "already exists" → the user is found and adopted. A lost
        answer → searched for at once (the API contract: search before retrying a create);
        not found, the create is in doubt (``_InDoubt``): never sent again by this run."""
        try:
            return self.rf.create_user(request.body), ReferrerState.CREATED
        except DuplicateEmail:
            log.info("customer %s: %s is already in the campaign; adopting that user", customer_id, request.email)
            user = self.rf.find_user_by_email(self.campaign_id, request.email)
            if user is None:
                # It exists (Referral Factory says so) and is not found yet: the search lags.
                raise _InDoubt(
                    f"Referral Factory says {request.email} already exists in campaign {self.campaign_id}, but searching "
                    "the campaign does not find it yet",
                    self.grace.now(),
                    run_id=self.run_id,
                ) from None
            return user, ReferrerState.ADOPTED
        except AnswerLost as lost:
            lost_at = self.grace.now()
            try:
                user = self.rf.find_user_by_email(self.campaign_id, request.email)
            except StsyncError as exc:
                if stops_run(exc):
                    raise
                raise _InDoubt(
                    f"{lost.message}; searching for the e-mail failed too ({exc.message})", lost_at, run_id=self.run_id
                ) from None
            if user is not None:
                return user, ReferrerState.CREATED
            raise _InDoubt(
                f"{lost.message}; searching the campaign does not find the e-mail yet", lost_at, run_id=self.run_id
            ) from None

    def _user_known_to_ledger(self, email: str) -> User | None:
        """A campaign user the ledger already knows by this e-mail (a pushed lead or
        referrer), read back by id: adopted without a create that would only fail."""
        for push in self.ledger.pushes_by_email(email):
            if push.rf_user_id is None:
                continue
            try:
                user = self.rf.get_user(int(push.rf_user_id))
            except NotFound as exc:
                self.rf.confirm_deleted(exc, campaign_id=self.campaign_id)  # raises unless a deletion
                continue
            if user.campaign_id == self.campaign_id and (user.email or "").strip().casefold() == email.strip().casefold():
                return user
        return None

    def _existing(
        self, plan: Plan, request: ReferrerRequest, record: ReferrerRecord, rf_user_id: int, retrying: bool
    ) -> Outcome:
        customer_id = plan.customer_id
        code, url = record.code, record.url
        kind = UNCHANGED
        sample = None
        changes: dict[str, Any] | None = None
        if record.fingerprint != request.fingerprint:
            kind = ReferrerState.UPDATED
            body = _update_body(request)
            if self.dry_run:
                sample = _sample("update", plan.customer, request.email, referrer=body)
            else:
                user = self.rf.update_user(rf_user_id, body)
                code, url = user.code or code, user.url or url
                changes = {
                    "state": ReferrerState.UPDATED,
                    "email": request.email,
                    "fingerprint": request.fingerprint,
                    "code": code,
                    "url": url,
                    "error": None,
                }
        # A return-field write that failed is retried once per run (the retries phase), not
        # each time the feed brings the customer back — and not at all while ServiceTitan
        # refuses a value of the customer's own that nobody has touched since.
        failed_here = (record.error or {}).get("stage") == STAGE_RETURN_FIELDS
        needs_fix = self._needs_fix(plan.customer, record)
        written, values = 0, None
        try:
            if needs_fix is None and (retrying or not failed_here):
                written, values = self._write_return_fields(plan.customer, code, url, sample=sample)
                if self.dry_run and written and sample is None:
                    sample = _sample(
                        "write_return_fields", plan.customer, request.email, return_fields=self._return_values(code, url)
                    )
                if changes is None and record.error is not None:
                    changes = {"error": None}
        finally:
            if not self.dry_run and (changes or values):
                self._record(customer_id, changes, values)
        if needs_fix is not None and kind == UNCHANGED:
            return needs_fix
        return Outcome(
            customer_id,
            kind,
            email=request.email,
            fields_written=written,
            sample=sample,
            modified_on=plan.customer.modified_on,
        )

    def _would_create(self, plan: Plan, request: ReferrerRequest) -> Outcome:
        holder = self._holder_of(request.email, plan.customer_id)
        if holder is not None:
            placeholders = {
                name: f"<{value} of customer {holder.customer_id}'s referrer>" for name, value in self.return_fields.items()
            }
            written = len(placeholders)
            if holder.code is not None or holder.url is not None:
                changed = _changed_values(plan.customer, self._return_values(holder.code, holder.url), self.types)
                placeholders, written = changed, len(changed)
            sample = _sample(
                "share", plan.customer, request.email, shares_referrer_of=holder.customer_id, return_fields=placeholders
            )
            return Outcome(
                plan.customer_id, ReferrerState.SHARED, email=request.email, fields_written=written, sample=sample,
                shared_with=holder.customer_id,
            )
        # The scratch ledger remembers it, so a later customer with this e-mail is counted
        # as it would be: sharing that referrer.
        self.staging.upsert_referrer(plan.customer_id, state=ReferrerState.PENDING, email=request.email)
        placeholders = {name: f"<{value} of the new referrer>" for name, value in self.return_fields.items()}
        sample = _sample("create", plan.customer, request.email, referrer=request.body, return_fields=placeholders)
        return Outcome(
            plan.customer_id, ReferrerState.CREATED, email=request.email, fields_written=len(placeholders), sample=sample
        )

    # -- return fields ---------------------------------------------------------------------
    def _return_values(self, code: str | None, url: str | None) -> dict[str, str]:
        return return_values_for(self.return_fields, referral_link=url, referral_code=code)

    def _write_return_fields(
        self,
        customer: Customer,
        code: str | None,
        url: str | None,
        *,
        sample: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, str] | None]:
        """Write the referrer's link and code onto the customer when they differ. Returns the
        number of values written, and the values the ledger should record (None when it has
        them already); the caller records them. The customer's own failure is raised as
        ``_StageFailure`` (the referrer's own state is kept)."""
        values = self._return_values(code, url)
        if not values:
            return 0, None
        customer_id = int(customer.id)
        try:
            if return_field_update(customer, values, self.types) is None:
                return 0, self._unrecorded(customer_id, values)
            if self.dry_run:
                changed = _changed_values(customer, values, self.types)
                if sample is not None:
                    sample["return_fields"] = changed
                return len(changed), None
            # The feed's row may be stale: read-modify-write on the customer as it is now.
            fresh = self.st.get_customer(customer_id)
            body = return_field_update(fresh, values, self.types)
            if body is None:
                return 0, self._unrecorded(customer_id, values)
            changed = _changed_values(fresh, values, self.types)
            try:
                saved = self.st.update_customer(customer_id, body)
            except ServiceTitanApiError as exc:
                refusal = self._refusal(exc, fresh, body, values) if exc.status == 400 else None
                if refusal is not None:
                    raise refusal from exc
                raise
            if self.on_write is not None:
                self.on_write(saved.modified_on)
            if return_field_update(saved, values, self.types) is not None:
                raise ServiceTitanApiError(
                    f"ServiceTitan accepted the custom fields of customer {customer_id} but does not show "
                    f"the values written ({', '.join(values)})",
                    status=200,
                    title="custom fields not kept",
                    method="PATCH",
                    path=f"customers/{customer_id}",
                    hint="check the custom fields' type (Text) in ServiceTitan; the next run tries again",
                )
            return len(changed), values
        except StsyncError as exc:
            if stops_run(exc):
                raise
            raise _StageFailure(exc, STAGE_RETURN_FIELDS) from exc

    def _refusal(
        self, exc: ServiceTitanApiError, customer: Customer, body: dict[str, Any], values: dict[str, str]
    ) -> CustomFieldRefused | None:
        """A 400 to a return-field PATCH that blames the customer's own custom fields, as the
        precise failure a person can act on; None when it blames something else."""
        written = {int(resolve_custom_field_type(name, self.types).id) for name in values}
        names = {int(c.type_id): c.name for c in getattr(customer, "custom_fields", None) or []}
        fields = refused_custom_fields(exc.errors, body, self.types, written, names=names)
        if not fields:
            return None
        customer_id = int(customer.id)
        who = f"customer {customer_id}" + (f" ({customer.name})" if getattr(customer, "name", None) else "")
        described = "; ".join(field.describe() for field in fields)
        named = ", ".join(repr(field.name) if field.name else f"type {field.type_id}" for field in fields)
        them = "it" if len(fields) == 1 else "them"
        return CustomFieldRefused(
            f"ServiceTitan refuses to update {who} because of the customer's own {described}. stsync sends "
            f"{them} back unchanged (leaving {them} out of the update could erase {them}), so the referral link and "
            "code cannot be written until it is fixed",
            customer_id=customer_id,
            fields=[field.to_dict() for field in fields],
            customer_modified_on=customer.modified_on.isoformat() if customer.modified_on is not None else None,
            status=exc.status,
            errors=exc.errors,
            trace_id=exc.trace_id,
            hint=f"fix it in ServiceTitan (customer {customer_id}: {named}), then `stsync sync-customers --retry-failed`; "
            "until the customer changes, later runs leave it alone",
        )

    def _unrecorded(self, customer_id: int, values: dict[str, str]) -> dict[str, str] | None:
        """The customer already shows these values: the ledger should say so too (a crash may
        have come between a write and its record). None when it does."""
        if self.dry_run or self.ledger.get_return_fields(customer_id) == values:
            return None
        return values

    def _record(self, customer_id: int, referrer: dict[str, Any] | None, return_values: dict[str, str] | None) -> None:
        """A customer's referrer columns and return fields, in one commit."""
        with self.ledger.transaction() as tx:
            if referrer:
                self.ledger.upsert_referrer(customer_id, conn=tx, **referrer)
            for name, value in (return_values or {}).items():
                self.ledger.set_return_field(customer_id, name, value, conn=tx)


def _doubt_since(record: ReferrerRecord) -> datetime:
    """When a referrer create in doubt began to be: the recorded loss, else (a ``pending``
    row a killed run left) the intent's time — its POST was sent just after."""
    recorded = parse_stamp((record.error or {}).get("in_doubt_since"))
    return recorded or parse_stamp(record.updated_at) or datetime.now(UTC)


def record_skip(ledger: Ledger, outcome: Outcome, *, conn: Any = None) -> None:
    """Record a skip (``Outcome.record_skip``) on the customer's ledger row."""
    ledger.upsert_referrer(
        outcome.customer_id, conn=conn, state=ReferrerState.SKIPPED, skip_reason=outcome.reason, email=outcome.email, error=None
    )


def _update_body(request: ReferrerRequest) -> dict[str, Any]:
    """``PUT /users/{id}`` takes first_name, email and meta[] (api/referral-factory.md §5)."""
    return {key: request.body[key] for key in ("first_name", "email", "meta") if key in request.body}


def _changed_values(customer: Any, values: dict[str, str], types: Sequence[Any]) -> dict[str, str]:
    current: dict[int, str | None] = {}
    for custom in getattr(customer, "custom_fields", None) or []:
        current.setdefault(int(custom.type_id), custom.value)
    return {
        name: value for name, value in values.items() if current.get(int(resolve_custom_field_type(name, types).id)) != value
    }


def _sample(action: str, customer: Any, email: str | None, **parts: Any) -> dict[str, Any]:
    return {"action": action, "customer_id": int(customer.id), "customer_name": customer.name, "email": email, **parts}


