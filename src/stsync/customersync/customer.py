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
  exists", or an answer lost, → the user is found by e-mail and adopted. After a crash (a
  ``pending`` row) the search comes first; a campaign user the ledger knows by this e-mail
  (a pushed lead) is read back by id and adopted. An e-mail another customer's referrer
  already holds → skipped (``already_referrer``): one Referral Factory user per e-mail, one
  customer per user.
- **update**: a referrer whose mapped data changed (the fingerprint) → ``PUT /users/{id}``,
  never a second user.
- **return fields**: written only when the customer's values differ, read-modify-write on a
  fresh GET so every other custom field survives; the user's record and the values written
  land in one commit. A write that ServiceTitan does not keep fails the customer (no write
  loop). ``on_write`` hears of each write (the pipeline tells the write's echo in the feed
  from a change).

Failures: ``errors.stops_run`` decides. The customer's own failure (a refusal, a lost create
the search does not find, return fields not kept) is an outcome ``failed``, recorded on its
ledger row with the stage it happened in (``referrer`` or ``return_fields``: a return-field
write that failed is retried once per run, ``retrying``, not each time the feed brings the
customer back). A run-level failure is raised.

A dry run sends and records nothing; a would-be creation is noted in the scratch ledger
(``staging``) so that a later customer with the same e-mail counts as ``already_referrer``.

``handle`` runs on several threads at once, for different customers; customers sharing an
e-mail are kept apart by the KeyLock and the ledger read under it (or, in a dry run, which
takes no lock, by the caller handling them on one thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stsync.errors import (
    AnswerLost,
    DuplicateEmail,
    NotFound,
    ReferralFactoryApiError,
    ServiceTitanApiError,
    StsyncError,
    stops_run,
)
from stsync.logs import get_logger, log_context
from stsync.mapping.referrers import ReferrerRequest, Skip, referrer_request_for
from stsync.mapping.return_fields import (
    resolve_custom_field_type,
    return_field_update,
    return_values_for,
    writable_type_ids,
)
from stsync.storage.ledger import Ledger, ReferrerRecord
from stsync.storage.locks import KeyLock
from stsync.storage.states import REFERRER_RETRY_STATES, ReferrerState

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.referralfactory.models import User
    from stsync.servicetitan.client import ServiceTitanClient
    from stsync.servicetitan.models import Customer, CustomFieldType

log = get_logger(__name__)

# Creates of one referrer whose answer was lost (and proved not applied) before giving up.
MAX_CREATE_ATTEMPTS = 3
UNCHANGED = "unchanged"  # an outcome only: the customer's referrer needed nothing (not a ledger state)
ALREADY_REFERRER = "already_referrer"
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
    ) -> None:
        """``types``: from ``return_field_types``. ``staging``: where a dry run notes its
        would-be creations (a scratch ledger; required for a dry run). ``on_write`` is called
        with the customer's new modifiedOn after each return-field write."""
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
                # E.g. a create whose answer was lost and whose user the search does not find
                # (yet): the next run searches first, then creates.
                return self._failed(plan, exc, STAGE_REFERRER)

    def _skipped(self, plan: Plan, reason: str, *, record: ReferrerRecord | None = None) -> Outcome:
        record = record if record is not None else plan.record
        has_referrer = record is not None and record.rf_user_id is not None
        unchanged = record is not None and record.state == ReferrerState.SKIPPED and record.skip_reason == reason
        return Outcome(
            plan.customer_id,
            ReferrerState.SKIPPED,
            reason=reason,
            email=plan.email,
            record_skip=not (self.dry_run or has_referrer or unchanged),
        )

    def _failed(self, plan: Plan, exc: StsyncError, stage: str) -> Outcome:
        customer_id = plan.customer_id
        error = {"stage": stage, **exc.to_dict()}
        log.warning("customer %s (%s) failed: %s", customer_id, plan.email, exc.message)
        if not self.dry_run:
            record = self.ledger.get_referrer(customer_id)
            if record is not None and record.rf_user_id is not None:
                # The referrer exists: keep its state, note what went wrong.
                self.ledger.upsert_referrer(customer_id, error=error)
            else:
                self.ledger.upsert_referrer(customer_id, state=ReferrerState.FAILED, email=plan.email, error=error)
        return Outcome(customer_id, ReferrerState.FAILED, email=plan.email, error=error)

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
            if self._holder_of(request.email, plan.customer_id) is not None:
                return self._skipped(plan, ALREADY_REFERRER, record=record)
            user, kind = self._create_or_adopt(plan, request, record)
            result = {
                "state": kind,
                "rf_user_id": user.id,
                "code": user.code,
                "url": user.url,
                "email": request.email,
                "fingerprint": request.fingerprint,
                "skip_reason": None,
                "error": None,
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
            if would is not None and would.customer_id != customer_id:
                return would
        return None

    def _create_or_adopt(
        self, plan: Plan, request: ReferrerRequest, record: ReferrerRecord | None
    ) -> tuple[User, ReferrerState]:
        """The campaign user for this customer: found (after a crash, or known to the ledger)
        or created (intent recorded first). The caller records the result."""
        user: User | None = None
        kind = ReferrerState.ADOPTED
        if record is not None and record.state in REFERRER_RETRY_STATES:
            # A previous attempt may have created the user before its answer was lost or
            # recorded: look before writing again.
            user = self.rf.find_user_by_email(self.campaign_id, request.email)
        if user is None:
            user = self._user_known_to_ledger(request.email)
        if user is None:
            self.ledger.upsert_referrer(
                plan.customer_id,
                state=ReferrerState.PENDING,
                email=request.email,
                fingerprint=request.fingerprint,
                skip_reason=None,
                error=None,
            )
            user, kind = self._create_or_find(plan.customer_id, request)
        return user, kind

    def _create_or_find(self, customer_id: int, request: ReferrerRequest) -> tuple[User, ReferrerState]:
        """POST /users; a lost answer is looked up by e-mail before the next try (the API
        contract: search before retrying a create), so a 503 costs a retry, not a failure."""
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            try:
                return self.rf.create_user(request.body), ReferrerState.CREATED
            except DuplicateEmail as exc:
                log.info("customer %s: %s is already in the campaign; adopting that user", customer_id, request.email)
                user = self.rf.find_user_by_email(self.campaign_id, request.email)
                if user is None:
                    raise ReferralFactoryApiError(
                        f"Referral Factory says {request.email} already exists in campaign {self.campaign_id}, "
                        "but searching the campaign for it finds nobody",
                        status=exc.status,
                        title=exc.title,
                        errors=exc.errors,
                        method=exc.method,
                        path=exc.path,
                        hint="the next run searches again; if it persists, look the e-mail up in Referral Factory",
                    ) from None
                return user, ReferrerState.ADOPTED
            except AnswerLost:
                user = self.rf.find_user_by_email(self.campaign_id, request.email)
                if user is not None:
                    return user, ReferrerState.CREATED
                if attempt == MAX_CREATE_ATTEMPTS:
                    raise
                log.info("customer %s: the create was lost and not applied; trying again", customer_id)
        raise AssertionError("unreachable")  # the loop returns or raises

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
        # each time the feed brings the customer back.
        failed_here = (record.error or {}).get("stage") == STAGE_RETURN_FIELDS
        written, values = 0, None
        try:
            if retrying or not failed_here:
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
        return Outcome(
            customer_id,
            kind,
            email=request.email,
            fields_written=written,
            sample=sample,
            modified_on=plan.customer.modified_on,
        )

    def _would_create(self, plan: Plan, request: ReferrerRequest) -> Outcome:
        if self._holder_of(request.email, plan.customer_id) is not None:
            return self._skipped(plan, ALREADY_REFERRER)
        # The scratch ledger remembers it, so a later customer with this e-mail is counted
        # as it would be: already a referrer.
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
            saved = self.st.update_customer(customer_id, body)
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


