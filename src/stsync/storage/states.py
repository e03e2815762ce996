"""The ledger's closed vocabularies: every state and outcome a ledger column stores.

Each is a ``StrEnum`` whose values are the stored strings (docs/ARCHITECTURE.md's ledger
schema): never rename a value, a ledger written by an older stsync must still read. A plain
string read back from SQLite compares equal to its member.

Leaf module: the standard library only, so services and the CLI can name a state without
importing the ledger. (``pushes.kind`` is ``stsync.vocabulary.Kind``.)
"""

from __future__ import annotations

from enum import StrEnum


class RunJob(StrEnum):
    """``runs.job`` and the run-lock names: one kind of run per command."""

    PUSH = "push"
    SYNC = "sync"
    QUALIFY = "qualify"
    SERVE = "serve"
    RUN = "run"  # `stsync run`: the scheduler (its steps record push, qualify and sync runs)


class RunOutcome(StrEnum):
    """``runs.outcome``. A dead ``running`` run reads as ``interrupted``."""

    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"  # finished; some records failed
    FAILED = "failed"  # stopped by a run-level failure
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # did not run: another run of the job held its lock (exit 7)


class PushState(StrEnum):
    """``pushes.state``: where one lead's (or referrer's) booking stands."""

    PENDING = "pending"
    BOOKED = "booked"
    FAILED = "failed"


class AttemptOutcome(StrEnum):
    """``push_attempts.outcome`` — also the outcome of one ``push_lead`` (never intent or lost)."""

    INTENT = "intent"  # recorded before the POST; still there = the answer never got recorded
    CREATED = "created"
    ALREADY_BOOKED = "already_booked"  # found by externalId: nothing was created
    FAILED = "failed"
    LOST = "lost"  # no answer came, and a lookup made after the grace period found no booking
    SKIPPED = "skipped"
    # The answer was lost and the booking is not listed (yet): in doubt, looked up again
    # before anything is created (``stsync.lookup_grace``). Shown as UNKNOWN_LABEL.
    UNKNOWN = "unknown"


# A create in doubt: it may have been applied (a killed run's intent, a lost answer not found yet).
IN_DOUBT_OUTCOMES = (AttemptOutcome.INTENT, AttemptOutcome.UNKNOWN)
# What history and diagnose say of a record in doubt.
UNKNOWN_LABEL = "unknown — will be checked again"


# A booking exists after either of these.
BOOKED_OUTCOMES = (AttemptOutcome.CREATED, AttemptOutcome.ALREADY_BOOKED)


class QualificationAction(StrEnum):
    """``qualifications.action``: the Referral Factory write that was intended."""

    QUALIFY = "qualify"
    UNQUALIFY = "unqualify"


class QualificationState(StrEnum):
    """``qualifications.state``."""

    INTENT = "intent"
    DONE = "done"
    FAILED = "failed"


class QualificationValue(StrEnum):
    """``pushes.qualification``: what Referral Factory was told (or that it never will be)."""

    QUALIFIED = "qualified"
    UNQUALIFIED = "unqualified"
    NOT_QUALIFIED = "not_qualified"  # closed without qualifying (e.g. canceled before it counted)


class ReferrerState(StrEnum):
    """``referrers.state``: one customer's way to becoming a referrer."""

    PENDING = "pending"  # intent recorded; the user may or may not exist yet
    CREATED = "created"
    ADOPTED = "adopted"  # the e-mail was already a user of the campaign
    UPDATED = "updated"
    SKIPPED = "skipped"
    FAILED = "failed"
    # The create's answer was lost and search does not find the user (yet), or the customer
    # waits for such a user of its e-mail: looked up again before anything is created.
    UNKNOWN = "unknown"
    # The e-mail belongs to the referrer of another customer (``shared_with``): this customer
    # carries that referrer's link and code; one Referral Factory user per e-mail.
    SHARED = "shared"


# A customer the next run tries again: cut short (pending), in doubt (unknown) or failed.
REFERRER_RETRY_STATES = (ReferrerState.PENDING, ReferrerState.FAILED, ReferrerState.UNKNOWN)
# A referrer create that may have been applied: looked up before anything is created.
REFERRER_IN_DOUBT_STATES = (ReferrerState.PENDING, ReferrerState.UNKNOWN)


class DeliveryOutcome(StrEnum):
    """``webhook_deliveries.outcome`` and what ``serve`` reports for each delivery.

    ``queued``, ``duplicate`` and ``rejected`` are answers to the sender only; a processed
    delivery stores ``ignored``, ``recorded``, ``failed``, ``retrying`` or the outcome of the
    push it made (``created``, ``already_booked``, ``skipped``).
    """

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    IGNORED = "ignored"
    RECORDED = "recorded"
    FAILED = "failed"
    RETRYING = "retrying"  # a failed delivery sent again, queued once more
    CREATED = AttemptOutcome.CREATED.value
    ALREADY_BOOKED = AttemptOutcome.ALREADY_BOOKED.value
    SKIPPED = AttemptOutcome.SKIPPED.value
    UNKNOWN = AttemptOutcome.UNKNOWN.value


class DeliveryAdmission(StrEnum):
    """What ``Ledger.admit_delivery`` found for a delivery key, i.e. what ``serve`` does with it."""

    NEW = "new"  # first seen: queue it
    WAITING = "waiting"  # recorded, no outcome yet: queue it unless it is queued
    RETRY = "retry"  # failed before: marked retrying, queue it
    DONE = "done"  # has an outcome: a duplicate, not processed again


class LeadSeenBy(StrEnum):
    """``referred_leads.seen_by``: where stsync first read a referred lead."""

    SEARCH = "search"  # push-lead --new: the campaign's users, searched
    WEBHOOK = "webhook"  # serve: a delivery, read back from Referral Factory
    PUSH = "push"  # push-lead one by one: --code, --rf-user-id, --file, flags
