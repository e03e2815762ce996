"""The ledger: one SQLite database per connection, the memory behind every guarantee.

Push, sync, qualify, serve, diagnose and history all read and write it, often at the same time
(cron overlaps runs; ``serve`` and ``push --workers`` use threads), so:

- WAL journal (readers never block the writer), ``busy_timeout`` 30 s (writers queue instead
  of failing), ``synchronous=FULL`` (an intent recorded before a remote write survives a power
  cut, not only a crash: that record is what prevents a duplicate booking). What a later run
  can rebuild may commit without waiting for the disk (``transaction(durable=False)``).
- One sqlite3 connection per thread; every write is one ``BEGIN IMMEDIATE`` transaction, so two
  processes never interleave inside an upsert. Push intents that threads record at the same
  moment share one such transaction (``record_push_intent``): one wait for the disk for all.
- Schema changes are appended to ``MIGRATIONS`` (``PRAGMA user_version`` says how many ran).
  Never edit a migration that shipped: add one.

A ledger this machine or its file cannot serve is an error of stsync's, never SQLite's
traceback (``_translate``): a damaged file — not a database, damaged pages, a table missing
(each table the migrations create is looked for at open) — is ``LedgerDamaged``; a full disk,
a read-only file system or a file it may not write is ``StateUnusable``; a lock another process
held past the busy timeout is ``TemporaryError``. All exit 3 (6 for the lock) with the fix.

What ServiceTitan did with the bookings (migration 3; written by ``stsync.tracking``, read by
``qualify``, ``push-lead --new``, ``diagnose`` and the report) — a mirror, so that nothing
needs to crawl ServiceTitan again:

- ``st_bookings``: every booking of the provider stsync has read (its own and others'), by
  ``booking_id``: ``external_id`` (indexed: push's "does this lead have a booking?"),
  ``status``, ``job_id``, ``created_on``, ``modified_on``, ``read_at`` (of that version). A
  copy not newer (by ``modified_on``) than the stored one is ignored; a ``job_id`` is never lost.
- ``st_jobs``: the jobs booked from those bookings, by ``job_id``: ``booking_id``, ``status``,
  ``created_on``, ``completed_on`` (the first completion: ServiceTitan keeps it after a
  cancellation), ``canceled_on`` (when it entered Canceled, while it is Canceled; else NULL),
  ``total`` (the job's total; NULL until ServiceTitan has one, 0.0 for a $0 job),
  ``invoice_id``, ``modified_on``, ``read_at``. The link: ``pushes.booking_id`` →
  ``st_bookings.job_id`` → ``st_jobs``.
- ``job_events``: the statuses each job entered, ``(job_id, event_key)`` → ``status``, ``at``,
  ``source``: ``history`` rows are ServiceTitan's job history (replaced whole whenever the
  history export brings the job again); ``observed`` rows are statuses stsync saw when it read
  the job, dated by its ``modifiedOn`` (what is known without the history scope).
- ``pushes.held_until``: the referral met the rule and is held (``hold_days``) until then.
- ``sync_positions`` also holds the reads' positions (``tracking.reads``): the bookings'
  ``modifiedOn`` watermark (only ever moved forward) and the job and job-history export
  tokens; ``kv`` the time of the last full read.

All times are UTC ISO-8601 with milliseconds and ``Z`` (``iso_utc``), so they sort as text.

Every referred lead stsync has read (migration 6; written by ``stsync.tracking.referrals``
where leads are read — ``push-lead --new``'s search, ``serve``'s deliveries, single pushes —
read by ``report``): ``referred_leads``, by ``external_id`` (the booking's join key, as for
``pushes``), with the lead's Referral Factory id, e-mail, name and code, ``signed_up_at``
(the day it joined the campaign, as a UTC timestamp; NULL when the source did not say),
its referrer (``referrer_rf_user_id``, ``referrer_email``, ``referrer_name``,
``referrer_code``: what the source said; a later reading fills what an earlier one lacked),
``seen_by`` (``LeadSeenBy``: where it was first read) and ``first_seen_at``.
``referral_rows`` joins it (and any lead push it lacks) with the pushes and the mirror: one
row per referral, the report's raw material.

Records come back as frozen dataclasses with JSON columns decoded. Timestamps are UTC ISO-8601
strings from ``utc_now()``. Methods that take ``conn=`` join the caller's open transaction
(``with ledger.transaction() as conn: ...``) so a page of work commits as one.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from stsync.errors import ConfigError, LedgerDamaged, StsyncError, TemporaryError
from stsync.logs import log_context
from stsync.storage.locks import pid_alive
from stsync.storage.paths import make_private_dir, no_space_left, read_only_fs, unusable
from stsync.storage.states import (
    BOOKED_OUTCOMES,
    IN_DOUBT_OUTCOMES,
    REFERRER_RETRY_STATES,
    AttemptOutcome,
    DeliveryAdmission,
    DeliveryOutcome,
    LeadSeenBy,
    PushState,
    QualificationAction,
    QualificationState,
    QualificationValue,
    ReferrerState,
    RunOutcome,
)
from stsync.vocabulary import Kind

BUSY_TIMEOUT_MS = 30_000
# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) that mean the machine or
# the file, not stsync: https://www.sqlite.org/rescode.html
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26
# Page cache per connection. There is one connection per thread (sync runs [limits] workers
# of them), so memory is threads × this: with SQLite's 2 MB default a 50,000-customer sync
# grew by ~13 MB as the caches filled. The OS page cache still holds the file.
CACHE_KIB = 512

# What a finished run, attempt or qualification may record (never back to running/intent).
FINISHED_RUN_OUTCOMES = tuple(o for o in RunOutcome if o is not RunOutcome.RUNNING)
# A failure that is the record's own (its data, the remote refusing that request), not the
# run's: an error stored with a run-level exit code (configuration, credentials, temporary,
# lock) failed every record after it the same way and is reported as the run's outcome.
RUN_LEVEL_EXIT_CODES = (3, 4, 6, 7)


def _record_level(column: str) -> str:
    """SQL: the stored error in ``column`` is the record's own (a row written without an exit code counts)."""
    codes = ", ".join(str(code) for code in RUN_LEVEL_EXIT_CODES)
    return f"coalesce(CASE WHEN json_valid({column}) THEN json_extract({column}, '$.exit_code') END, 5) NOT IN ({codes})"


# A run that did its job (some records may have failed: those are reported on their own).
SUCCEEDED_RUN_OUTCOMES = (RunOutcome.OK, RunOutcome.PARTIAL)
ATTEMPT_RESULTS = tuple(o for o in AttemptOutcome if o is not AttemptOutcome.INTENT)
QUALIFICATION_RESULTS = tuple(s for s in QualificationState if s is not QualificationState.INTENT)
REFERRER_FIELDS = ("rf_user_id", "email", "code", "url", "fingerprint", "state", "skip_reason", "error", "shared_with")

ABANDONED_RUN = "the process ended without finishing (killed?)"

# Each entry runs once, in order, inside one transaction; user_version = entries applied.
MIGRATIONS: list[str] = [
    # 1: the schema of docs/ARCHITECTURE.md
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        command TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL DEFAULT 'running',
        counts TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE INDEX runs_job ON runs(job, id);

    CREATE TABLE pushes (
        external_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        email TEXT,
        name TEXT,
        rf_user_id INTEGER,
        referral_code TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        booking_id INTEGER,
        booking_status TEXT,
        job_id INTEGER,
        job_status TEXT,
        final INTEGER NOT NULL DEFAULT 0,
        qualification TEXT,
        qualified_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX pushes_email ON pushes(lower(email));
    CREATE INDEX pushes_open ON pushes(state, final);

    CREATE TABLE push_attempts (
        id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL,
        run_id INTEGER,
        email TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT NOT NULL DEFAULT 'intent',
        booking_id INTEGER,
        error TEXT
    );
    CREATE INDEX push_attempts_external_id ON push_attempts(external_id, id);
    CREATE INDEX push_attempts_email ON push_attempts(lower(email), id);
    CREATE INDEX push_attempts_outcome ON push_attempts(outcome, id);

    CREATE TABLE qualifications (
        id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'intent',
        rule TEXT,
        reason TEXT,
        at TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX qualifications_external_id ON qualifications(external_id, id);

    CREATE TABLE sync_positions (
        feed TEXT PRIMARY KEY,
        token TEXT,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE referrers (
        customer_id INTEGER PRIMARY KEY,
        rf_user_id INTEGER,
        email TEXT,
        code TEXT,
        url TEXT,
        fingerprint TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        skip_reason TEXT,
        error TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX referrers_email ON referrers(lower(email));

    CREATE TABLE contacts (
        contact_id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL,
        type TEXT,
        value TEXT,
        active INTEGER NOT NULL DEFAULT 1,
        modified_on TEXT
    );
    CREATE INDEX contacts_customer ON contacts(customer_id);

    CREATE TABLE return_fields (
        customer_id INTEGER NOT NULL,
        field_name TEXT NOT NULL,
        value TEXT,
        written_at TEXT NOT NULL,
        PRIMARY KEY (customer_id, field_name)
    );

    CREATE TABLE webhook_deliveries (
        key TEXT PRIMARY KEY,
        event TEXT,
        external_id TEXT,
        received_at TEXT NOT NULL,
        outcome TEXT,
        error TEXT
    );

    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT
    );
    """,
    # 2: each run's exit code, as its command exited (cron and `stsync run` alike)
    """
    ALTER TABLE runs ADD COLUMN exit_code INTEGER;
    """,
    # 3: what ServiceTitan did with the bookings (issue 16): the provider's bookings, the jobs
    # booked from them, their status history, and a qualification's hold.
    """
    ALTER TABLE pushes ADD COLUMN held_until TEXT;

    CREATE TABLE st_bookings (
        booking_id INTEGER PRIMARY KEY,
        external_id TEXT,
        status TEXT,
        job_id INTEGER,
        created_on TEXT,
        modified_on TEXT,
        read_at TEXT NOT NULL
    );
    CREATE INDEX st_bookings_external_id ON st_bookings(external_id);
    CREATE INDEX st_bookings_job ON st_bookings(job_id);

    CREATE TABLE st_jobs (
        job_id INTEGER PRIMARY KEY,
        booking_id INTEGER,
        status TEXT,
        created_on TEXT,
        completed_on TEXT,
        canceled_on TEXT,
        total REAL,
        invoice_id INTEGER,
        modified_on TEXT,
        read_at TEXT NOT NULL
    );
    CREATE INDEX st_jobs_booking ON st_jobs(booking_id);

    CREATE TABLE job_events (
        job_id INTEGER NOT NULL,
        event_key TEXT NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (job_id, event_key)
    );
    """,
    # 4: a customer sharing the e-mail of another customer's referrer (ReferrerState.SHARED)
    # names that customer; its return fields carry that referrer's link and code.
    """
    ALTER TABLE referrers ADD COLUMN shared_with INTEGER;
    """,
    # 5: a webhook delivery answered 202 is a promise: what it says is kept with it, so a
    # restart processes every delivery still without an outcome, in the order received (seq).
    """
    ALTER TABLE webhook_deliveries ADD COLUMN lead TEXT;
    ALTER TABLE webhook_deliveries ADD COLUMN payload TEXT;
    ALTER TABLE webhook_deliveries ADD COLUMN seq INTEGER;
    ALTER TABLE webhook_deliveries ADD COLUMN finished_at TEXT;
    UPDATE webhook_deliveries SET seq = rowid;
    CREATE INDEX webhook_deliveries_waiting ON webhook_deliveries(seq) WHERE outcome IS NULL OR outcome = 'retrying';
    """,
    # 6: every referred lead stsync has seen, pushed or not, with its referrer and the day it
    # joined (issue 16: the report's first funnel stage and its "who brought it").
    """
    CREATE TABLE referred_leads (
        external_id TEXT PRIMARY KEY,
        rf_user_id INTEGER,
        email TEXT,
        name TEXT,
        referral_code TEXT,
        signed_up_at TEXT,
        referrer_rf_user_id INTEGER,
        referrer_email TEXT,
        referrer_name TEXT,
        referrer_code TEXT,
        seen_by TEXT NOT NULL,
        first_seen_at TEXT NOT NULL
    );
    CREATE INDEX referred_leads_joined ON referred_leads(coalesce(signed_up_at, first_seen_at));
    CREATE INDEX referred_leads_referrer ON referred_leads(referrer_rf_user_id);
    """,
    # 7: what the operator sees (issue 15 item 9): a failed run's error as data (its class and
    # fields: diagnose re-checks the cause live), and the failed records a person acknowledged
    # (``history --ack``): diagnose stops failing on them until they fail again.
    """
    ALTER TABLE runs ADD COLUMN failure TEXT;

    CREATE TABLE acknowledgements (
        kind TEXT NOT NULL,
        record TEXT NOT NULL,
        acknowledged_at TEXT NOT NULL,
        note TEXT,
        PRIMARY KEY (kind, record)
    );
    """,
]


def _not_acknowledged(kind: str, record: str, failed_at: str) -> str:
    """SQL: the failed record (``record``, failed at ``failed_at``) is not acknowledged, or has
    failed again since (``history --ack``): status and the alerts count it."""
    return (
        f"NOT EXISTS (SELECT 1 FROM acknowledgements k WHERE k.kind = '{kind}' AND k.record = {record} "
        f"AND k.acknowledged_at >= {failed_at})"
    )


# The JSON columns of webhook_deliveries (migration 5 added the lead and the payload).
DELIVERY_JSON = ("error", "lead", "payload")


def _like_escaped(text: str) -> str:
    """``text`` matched literally by ``LIKE … ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just added (``lastrowid`` is None only when nothing was inserted)."""
    if cursor.lastrowid is None:
        raise RuntimeError("the INSERT added no row")
    return cursor.lastrowid


def utc_now() -> str:
    """Now, UTC, ISO-8601 with milliseconds: ``2024-05-01T12:00:00.123Z`` (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:  # a hand-edited row must not break `history`
        return {"message": text}


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    id: int
    job: str
    command: str
    pid: int
    started_at: str
    finished_at: str | None
    outcome: str  # RunOutcome (a dead `running` reads as interrupted)
    counts: dict
    error: str | None
    exit_code: int | None = None  # the command's exit code (SPEC §5), once it exited
    failure: dict | None = None  # the stopping error's to_dict() (runs recorded since migration 7)


@dataclass(frozen=True)
class PushRecord:
    external_id: str
    kind: str  # vocabulary.Kind
    email: str | None
    name: str | None
    rf_user_id: int | None
    referral_code: str | None
    state: str  # PushState
    booking_id: int | None
    booking_status: str | None
    job_id: int | None
    job_status: str | None
    final: bool
    qualification: str | None  # QualificationValue
    qualified_at: str | None
    created_at: str
    updated_at: str
    held_until: str | None = None  # the rule is met; qualified once this passes (hold_days)


@dataclass(frozen=True)
class BookingRow:
    """One of the booking provider's bookings as last read (``st_bookings``)."""

    booking_id: int
    external_id: str | None
    status: str | None
    job_id: int | None
    created_on: str | None
    modified_on: str | None
    read_at: str


@dataclass(frozen=True)
class JobRow:
    """A job booked from one of the provider's bookings, as last read (``st_jobs``)."""

    job_id: int
    booking_id: int | None
    status: str | None
    created_on: str | None
    completed_on: str | None  # the first completion: ServiceTitan keeps it after a cancellation
    canceled_on: str | None  # when it entered Canceled, while it is Canceled; else None
    total: float | None  # the job's total (None until ServiceTitan has one; 0.0 is a $0 job)
    invoice_id: int | None
    modified_on: str | None
    read_at: str

    @property
    def canceled(self) -> bool:
        return self.status == "Canceled"


@dataclass(frozen=True)
class JobEvent:
    """A status a job entered, and when (``job_events``). ``source``: ``history`` (ServiceTitan's
    job history: every status, however briefly held) or ``observed`` (a status stsync saw when
    it read the job, dated by the job's ``modifiedOn``: what it knows without the history)."""

    job_id: int
    event_key: str
    status: str
    at: str
    source: str


@dataclass(frozen=True)
class ReferredLeadRow:
    """A referred lead as stsync read it (``referred_leads``). ``signed_up_at`` is UTC ISO-8601."""

    external_id: str
    rf_user_id: int | None
    email: str | None
    name: str | None
    referral_code: str | None
    signed_up_at: str | None
    referrer_rf_user_id: int | None
    referrer_email: str | None
    referrer_name: str | None
    referrer_code: str | None
    seen_by: str  # LeadSeenBy
    first_seen_at: str


@dataclass(frozen=True)
class ReferralRow:
    """One referral's way so far, from the ledger alone (``Ledger.referral_rows``): the lead as
    seen, its push, its booking (stsync's, else the provider's oldest with its externalId)
    and the job booked from it, as last read."""

    external_id: str
    rf_user_id: int | None
    email: str | None
    name: str | None
    referral_code: str | None
    joined_at: str  # signed_up_at, else when stsync first saw the lead (a push's creation)
    joined_at_known: bool  # False: Referral Factory's signed_up_at was not known
    referrer_rf_user_id: int | None
    referrer_email: str | None
    referrer_name: str | None
    referrer_code: str | None
    push_state: str | None  # PushState; None when never pushed
    booking_id: int | None
    booking_status: str | None
    job_id: int | None
    job_status: str | None
    job_completed_on: str | None
    job_total: float | None
    job_invoice_id: int | None
    qualification: str | None  # QualificationValue
    held_until: str | None
    final: bool


@dataclass(frozen=True)
class KnownReferrer:
    """A referrer the ledger knows something of: a customer enrolled by customer sync
    (``customer_id`` set) or a referrer stsync pushed as a booking."""

    rf_user_id: int | None
    email: str | None
    name: str | None
    customer_id: int | None


@dataclass(frozen=True)
class AttemptRecord:
    id: int
    external_id: str
    run_id: int | None
    email: str | None
    started_at: str
    finished_at: str | None
    outcome: str  # AttemptOutcome
    booking_id: int | None
    error: dict | None  # StsyncError.to_dict(), or {"message": ...} (older rows: an ApiError's remote fields)


@dataclass(frozen=True)
class QualificationRecord:
    id: int
    external_id: str
    action: str  # QualificationAction
    state: str  # QualificationState
    rule: str | None
    reason: str | None
    at: str
    error: dict | None


@dataclass(frozen=True)
class ReferrerRecord:
    customer_id: int
    rf_user_id: int | None
    email: str | None
    code: str | None
    url: str | None
    fingerprint: str | None
    state: str  # ReferrerState
    skip_reason: str | None
    error: dict | None
    updated_at: str
    shared_with: int | None = None  # state shared: the customer whose referrer this one shares


@dataclass(frozen=True)
class ContactRow:
    contact_id: int
    customer_id: int
    type: str | None
    value: str | None
    active: bool = True
    modified_on: str | None = None


@dataclass(frozen=True)
class Acknowledgement:
    """A failed record a person acknowledged (``history --ack``): ``kind`` is the history kind
    (push, qualify, sync, webhook), ``record`` the record's key in it (an External Id, a
    qualification id, a customer id, a delivery key)."""

    kind: str
    record: str
    acknowledged_at: str
    note: str | None


@dataclass(frozen=True)
class DeliveryRecord:
    key: str
    event: str | None
    external_id: str | None
    received_at: str
    outcome: str | None  # DeliveryOutcome; None (or "retrying") = waiting to be processed
    error: dict | None
    lead: dict | None  # the lead the delivery names (``Lead`` fields): what a restart processes
    payload: Any  # the delivery's JSON as received (never the token: that is not in the body)
    seq: int | None  # order of (re)queueing
    finished_at: str | None

    @property
    def waiting(self) -> bool:
        """Recorded (answered 202) and not processed yet."""
        return self.outcome is None or self.outcome == DeliveryOutcome.RETRYING


def _record(cls: type, row: sqlite3.Row, *, json_columns: tuple[str, ...] = (), bool_columns: tuple[str, ...] = ()):
    values = {}
    for field in fields(cls):
        value = row[field.name]
        if field.name in json_columns:
            value = _loads(value)
        elif field.name in bool_columns:
            value = bool(value)
        values[field.name] = value
    return cls(**values)


def _check(value: str, allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")


class _Intent:
    """One ``record_push_intent`` waiting for its commit: its values, then its attempt id."""

    __slots__ = ("values", "attempt_id")

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self.attempt_id: int | None = None

    def insert(self, conn: sqlite3.Connection) -> int:
        external_id, kind, email, name, rf_user_id, referral_code, now, run_id = self.values
        conn.execute(
            """
            INSERT INTO pushes (external_id, kind, email, name, rf_user_id, referral_code, state, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (external_id) DO UPDATE SET
                email = COALESCE(excluded.email, pushes.email),
                name = COALESCE(excluded.name, pushes.name),
                rf_user_id = COALESCE(excluded.rf_user_id, pushes.rf_user_id),
                referral_code = COALESCE(excluded.referral_code, pushes.referral_code),
                updated_at = excluded.updated_at
            """,
            (external_id, kind, email, name, rf_user_id, referral_code, PushState.PENDING, now, now),
        )
        cursor = conn.execute(
            "INSERT INTO push_attempts (external_id, run_id, email, started_at, outcome) VALUES (?, ?, ?, ?, ?)",
            (external_id, run_id, email, now, AttemptOutcome.INTENT),
        )
        self.attempt_id = _inserted_id(cursor)
        return self.attempt_id


# --------------------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------------------
class Ledger:
    """Thread- and process-safe access to one ledger file. Build it with ``Ledger.open(path)``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._guard = threading.Lock()
        # Writers of this process queue here, in order, instead of in SQLite's busy handler,
        # which sleeps in growing steps (up to 25 ms) while another thread holds the write
        # lock: with eight push workers that sleeping, not the disk, was a run's bottleneck.
        self._writer = threading.Lock()
        # Push intents waiting for the writer lock: the thread that gets it commits them all
        # in one transaction, so eight workers wait for the disk once, not eight times in a row.
        self._intents: list[_Intent] = []
        self._intents_guard = threading.Lock()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        ledger = cls(Path(path))
        make_private_dir(ledger.path.parent)
        # Customer names and e-mails: 0600 before SQLite creates it (its -wal/-shm follow).
        # Only when it does not exist: closing any descriptor of an open database file drops
        # every POSIX lock this process holds on it (SQLite's documented pitfall), and a
        # process may hold the ledger open elsewhere (serve's worker while /metrics reads).
        if not ledger.path.exists():
            try:
                os.close(os.open(ledger.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass  # another thread or process made it first
            except OSError:
                pass  # sqlite3 says precisely what is wrong below
        try:
            conn = ledger._conn()
            ledger._migrate(conn)
            ledger._check_tables(conn)
        except sqlite3.Error as exc:
            ledger.close()
            raise ledger._translate(exc, doing="opened") or ConfigError(
                f"the ledger {ledger.path} cannot be opened: {exc}",
                hint="if the file is damaged, move it aside (stsync starts a new one; `diagnose` then has no history)",
            ) from None
        except StsyncError:
            ledger.close()
            raise
        return ledger

    def _check_tables(self, conn: sqlite3.Connection) -> None:
        """Every table the migrations create is there (a hand-made or half-restored file may
        lack one: ``LedgerDamaged`` now, not "no such table" in the middle of a run)."""
        present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [name for name in _migration_tables() if name not in present]
        if missing:
            raise LedgerDamaged(
                f"the ledger {self.path} cannot be opened: it is damaged (no table {', '.join(missing)})",
                path=str(self.path),
            )

    def _translate(self, exc: sqlite3.Error, *, doing: str = "read") -> StsyncError | None:
        """SQLite's error as stsync's (see the module docstring); None for one that is a bug.
        ``doing``: what could not be done to the ledger, for the message."""
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        text = str(exc)
        where = self.path.parent
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB) or re.search(r"no such (table|column)|malformed|not a database", text):
            return LedgerDamaged(f"the ledger {self.path} cannot be {doing}: it is damaged ({text})", path=str(self.path))
        if code == SQLITE_FULL or "disk is full" in text or (code == SQLITE_IOERR and no_space_left(where)):
            return unusable(where, "disk_full", f"the disk is full (SQLite: {text})")
        if code == SQLITE_READONLY or "readonly database" in text:
            reason = "read_only" if read_only_fs(where) else "permission"
            return unusable(where, reason, f"the ledger cannot be written (SQLite: {text})")
        if code == SQLITE_CANTOPEN or "unable to open database" in text:
            reason = "read_only" if read_only_fs(where) else "permission"
            return unusable(where, reason, f"the ledger {self.path.name} cannot be opened (SQLite: {text})")
        if code == SQLITE_IOERR or "disk I/O error" in text:
            return unusable(where, "os_error", f"the disk failed a read or write of the ledger (SQLite: {text})")
        if code in (SQLITE_BUSY, SQLITE_LOCKED) or "database is locked" in text:
            return TemporaryError(
                f"the ledger {self.path} stayed locked by another stsync process for {BUSY_TIMEOUT_MS // 1000} s",
                hint="run it again when the other run is done (`stsync diagnose` shows which runs hold a lock)",
            )
        return None

    def check_integrity(self) -> None:
        """``LedgerDamaged`` unless SQLite's ``quick_check`` finds every page sound. It reads the
        whole file: for ``diagnose``, not for every command (those find a damaged page when
        they reach it)."""
        rows = self._query("PRAGMA quick_check")
        problems = [str(row[0]) for row in rows if str(row[0]).casefold() != "ok"]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise LedgerDamaged(
                f"the ledger {self.path} is damaged: {problems[0]}{more}", path=str(self.path)
            )

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            translated = self._translate(exc)
            if translated is None:
                raise
            raise translated from None

    def close(self) -> None:
        with self._guard:
            self._closed = True
            connections, self._connections = [conn for _, conn in self._connections], []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StsyncError("the ledger is closed")
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (sqlite3's implicit
        # deferred BEGIN would let two writers deadlock on the upgrade to a write lock).
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._local.conn = conn
        with self._guard:
            # Threads come and go (serve's request threads): close what finished threads left.
            finished = [old for owner, old in self._connections if not owner.is_alive()]
            self._connections = [(owner, old) for owner, old in self._connections if owner.is_alive()]
            self._connections.append((threading.current_thread(), conn))
        for old in finished:
            try:
                old.close()
            except sqlite3.Error:
                pass
        return conn

    @property
    def open_connections(self) -> int:
        with self._guard:
            return len(self._connections)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self.transaction() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"the ledger {self.path} was written by a newer stsync (schema {version}, this one knows {len(MIGRATIONS)})",
                    hint="upgrade stsync",
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … COMMIT (or ROLLBACK on any exception), yielding the connection.

        Nested use on one thread joins the outer transaction (and its durability).

        ``durable=False`` commits without waiting for the disk (``synchronous=NORMAL``: the
        WAL is not synced at this commit; the next durable commit or checkpoint syncs it with
        everything before it). A crash of the process loses nothing; a power cut may lose
        this commit. Only for what a later run can rebuild: a push's result after its durable
        intent (an intent left open is looked up again before anything is created). Each
        durable commit waits for the disk (2–4 ms on a virtual disk) with this process's
        writers queued behind it; a push made two per lead.
        """
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        with self._translating(), self._writer:
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass  # the error that got us here is the one to report
                    raise
                else:
                    conn.execute("COMMIT")
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        if conn is not None:
            yield conn
        else:
            with self.transaction(durable=durable) as own:
                yield own

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._translating():
            return self._conn().execute(sql, tuple(params)).fetchall()

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, job: str, command: str) -> int:
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (job, command, pid, started_at, outcome, counts) VALUES (?, ?, ?, ?, ?, '{}')",
                (job, command, os.getpid(), utc_now(), RunOutcome.RUNNING),
            )
            return _inserted_id(cursor)

    @contextmanager
    def recorded_run(self, job: str, command: str, *, counts: Callable[[], Mapping[str, Any]], failed: Callable[[], bool]):
        """Record one run of ``job`` around the block: ``ok``/``partial`` when the block
        ends (``failed()`` says whether some records failed), ``interrupted`` on Ctrl-C,
        ``failed`` with the error otherwise. ``counts()`` is read at the very end, so a
        stopped run still records what it did. Yields the run id."""
        run_id = self.start_run(job, command)
        outcome, error, failure = RunOutcome.FAILED, None, None
        try:
            with log_context(run_id=run_id):
                yield run_id
            outcome = RunOutcome.PARTIAL if failed() else RunOutcome.OK
        except KeyboardInterrupt:
            outcome, error = RunOutcome.INTERRUPTED, "interrupted by the user"
            raise
        except StsyncError as exc:
            error, failure = exc.message, exc.to_dict()
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.finish_run(run_id, outcome, counts(), error=error, failure=failure)

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        counts: Mapping[str, Any],
        error: str | None = None,
        failure: Mapping[str, Any] | None = None,
    ) -> None:
        """``failure``: the stopping error's ``to_dict()`` (what diagnose re-checks)."""
        _check(outcome, FINISHED_RUN_OUTCOMES, "run outcome")
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE runs SET finished_at = ?, outcome = ?, counts = ?, error = ?, failure = ? WHERE id = ?",
                (utc_now(), outcome, _dumps(dict(counts)), error, _dumps(dict(failure) if failure else None), run_id),
            )
            if cursor.rowcount == 0:
                raise ValueError(f"no run {run_id} in the ledger")

    def close_abandoned_runs(self, job: str) -> list[int]:
        """Close as ``interrupted`` every ``running`` run of ``job`` whose process is dead
        (kill -9, power cut) — called by a new run of ``job`` that holds its lock. → their ids."""
        rows = self._query("SELECT id, pid FROM runs WHERE job = ? AND outcome = ?", (job, RunOutcome.RUNNING))
        closed = [row["id"] for row in rows if not pid_alive(row["pid"])]
        if closed:
            with self.transaction() as conn:
                for run_id in closed:
                    conn.execute(
                        "UPDATE runs SET finished_at = ?, outcome = ?, error = ? WHERE id = ? AND outcome = ?",
                        (utc_now(), RunOutcome.INTERRUPTED, ABANDONED_RUN, run_id, RunOutcome.RUNNING),
                    )
        return closed

    def _run(self, row: sqlite3.Row) -> RunRecord:
        record = _record(RunRecord, row, json_columns=("counts", "failure"))
        if record.outcome == RunOutcome.RUNNING and not pid_alive(record.pid):
            # Killed (kill -9, power cut): it never finished. Reported, not rewritten: the
            # reader may be wrong about a pid on another machine sharing the state dir.
            record = RunRecord(**{**record.__dict__, "outcome": RunOutcome.INTERRUPTED.value})
        return record

    def last_run(self, job: str) -> RunRecord | None:
        """The newest run of ``job`` that ran (a ``skipped`` tick is not a run)."""
        rows = self._query(
            "SELECT * FROM runs WHERE job = ? AND outcome != ? ORDER BY id DESC LIMIT 1", (job, RunOutcome.SKIPPED)
        )
        return self._run(rows[0]) if rows else None

    def last_succeeded_run(self, job: str, *, command_contains: str | None = None) -> RunRecord | None:
        """The newest run of ``job`` that finished ok or partial (``command_contains``: e.g. "--full")."""
        sql = "SELECT * FROM runs WHERE job = ? AND outcome IN (?, ?)"
        params: list[Any] = [job, *SUCCEEDED_RUN_OUTCOMES]
        if command_contains is not None:
            sql += " AND instr(command, ?) > 0"
            params.append(command_contains)
        rows = self._query(sql + " ORDER BY id DESC LIMIT 1", params)
        return self._run(rows[0]) if rows else None

    def first_run(self, job: str) -> RunRecord | None:
        rows = self._query("SELECT * FROM runs WHERE job = ? AND outcome != ? ORDER BY id LIMIT 1", (job, RunOutcome.SKIPPED))
        return self._run(rows[0]) if rows else None

    def get_run(self, run_id: int) -> RunRecord | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def last_run_id(self) -> int:
        """The newest run id (0 when none): what an invocation started is above it."""
        return int(self._query("SELECT coalesce(max(id), 0) AS n FROM runs")[0]["n"])

    def runs_started_by(self, pid: int, *, after_id: int) -> list[RunRecord]:
        """Runs process ``pid`` started after run ``after_id``, oldest first."""
        rows = self._query("SELECT * FROM runs WHERE pid = ? AND id > ? ORDER BY id", (pid, after_id))
        return [self._run(row) for row in rows]

    def set_exit_code(self, run_ids: Iterable[int], exit_code: int) -> None:
        """The command's exit code onto the runs it recorded (a run still ``running`` then was cut short)."""
        ids = list(run_ids)
        if not ids:
            return
        with self.transaction() as conn:
            for run_id in ids:
                conn.execute(
                    "UPDATE runs SET exit_code = ?, outcome = CASE WHEN outcome = ? THEN ? ELSE outcome END, "
                    "finished_at = coalesce(finished_at, ?) WHERE id = ?",
                    (exit_code, RunOutcome.RUNNING, RunOutcome.INTERRUPTED, utc_now(), run_id),
                )

    def record_finished_run(
        self,
        job: str,
        command: str,
        *,
        outcome: str,
        exit_code: int | None,
        error: str | None = None,
        counts: Mapping[str, Any] | None = None,
        failure: Mapping[str, Any] | None = None,
    ) -> int:
        """A run recorded in one go: a step that ended before its work started (a lock held:
        ``skipped``; a configuration or credential failure: ``failed``, with the error's
        ``to_dict()`` as ``failure`` for diagnose to re-check)."""
        _check(outcome, FINISHED_RUN_OUTCOMES, "run outcome")
        now = utc_now()
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (job, command, pid, started_at, finished_at, outcome, counts, error, exit_code, failure) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job, command, os.getpid(), now, now, outcome, _dumps(dict(counts or {})), error, exit_code,
                    _dumps(dict(failure) if failure else None),
                ),
            )
            return _inserted_id(cursor)

    def recent_runs(self, limit: int = 20, job: str | None = None) -> list[RunRecord]:
        if job is None:
            rows = self._query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?", (job, limit))
        return [self._run(row) for row in rows]

    # -- pushes -------------------------------------------------------------------------
    def record_push_intent(
        self,
        external_id: str,
        *,
        kind: str,
        email: str | None,
        name: str | None,
        rf_user_id: int | None = None,
        referral_code: str | None = None,
        run_id: int | None = None,
    ) -> int:
        """Before the POST: the push row (kept or ``pending``) and an attempt ``intent``. → attempt id.

        Durable when it returns (the POST may follow at once). Intents of several threads
        share one commit — one wait for the disk — when they come together (``_Intent``);
        inside an open transaction the intent joins it."""
        _check(kind, Kind, "push kind")
        now = utc_now()
        intent = _Intent((external_id, kind, email, name, rf_user_id, referral_code, now, run_id))
        conn = self._conn()
        if conn.in_transaction:
            return intent.insert(conn)
        with self._intents_guard:
            self._intents.append(intent)
        # Whoever holds the writer lock commits every intent queued so far; an intent some
        # other thread committed meanwhile is done when its own thread gets the lock.
        with self._translating(), self._writer:
            alone = False
            while intent.attempt_id is None:
                if alone:
                    batch = [intent]
                else:
                    with self._intents_guard:
                        batch, self._intents = self._intents, []
                try:
                    self._commit_intents(conn, batch)
                except BaseException as exc:
                    # The others go back in the queue for their own threads. Whichever intent
                    # failed, it fails alone: this one is tried again by itself (an interrupt
                    # is this thread's own and stops it).
                    with self._intents_guard:
                        self._intents[:0] = [queued for queued in batch if queued is not intent]
                    if len(batch) == 1 or not isinstance(exc, Exception):
                        raise
                    alone = True
        assert intent.attempt_id is not None
        return intent.attempt_id

    @staticmethod
    def _commit_intents(conn: sqlite3.Connection, batch: list[_Intent]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for queued in batch:
                queued.insert(conn)
            conn.execute("COMMIT")
        except BaseException:
            for queued in batch:
                queued.attempt_id = None  # rolled back
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error that got us here is the one to report
            raise

    def record_push_result(
        self, attempt_id: int, *, outcome: str, booking_id: int | None = None, error: Mapping[str, Any] | None = None
    ) -> None:
        """After the POST (or the reconciling look-up): finish the attempt, move the push's state."""
        _check(outcome, ATTEMPT_RESULTS, "attempt outcome")
        if outcome in BOOKED_OUTCOMES and booking_id is None:
            raise ValueError(f"outcome {outcome!r} needs the booking_id")
        now = utc_now()
        with self.transaction() as conn:
            row = conn.execute("SELECT external_id FROM push_attempts WHERE id = ?", (attempt_id,)).fetchone()
            if row is None:
                raise ValueError(f"no push attempt {attempt_id} in the ledger")
            conn.execute(
                "UPDATE push_attempts SET finished_at = ?, outcome = ?, booking_id = ?, error = ? WHERE id = ?",
                (now, outcome, booking_id, _dumps(dict(error) if error is not None else None), attempt_id),
            )
            external_id = row["external_id"]
            if outcome in BOOKED_OUTCOMES:
                conn.execute(
                    "UPDATE pushes SET state = ?, booking_id = ?, updated_at = ? WHERE external_id = ?",
                    (PushState.BOOKED, booking_id, now, external_id),
                )
            elif outcome == AttemptOutcome.FAILED:
                # A booking that exists stays booked: a later failed retry does not undo it.
                conn.execute(
                    "UPDATE pushes SET state = CASE WHEN state = ? THEN state ELSE ? END, updated_at = ? "
                    "WHERE external_id = ?",
                    (PushState.BOOKED, PushState.FAILED, now, external_id),
                )

    def get_push(self, external_id: str) -> PushRecord | None:
        rows = self._query("SELECT * FROM pushes WHERE external_id = ?", (external_id,))
        return _record(PushRecord, rows[0], bool_columns=("final",)) if rows else None

    def pushes_by_email(self, email: str) -> list[PushRecord]:
        rows = self._query("SELECT * FROM pushes WHERE lower(email) = lower(?) ORDER BY created_at, external_id", (email,))
        return [_record(PushRecord, row, bool_columns=("final",)) for row in rows]

    def push_counts(self) -> dict[str, int]:
        """Pushes per state (pending/booked/failed), for summaries and ``diagnose``."""
        rows = self._query("SELECT state, count(*) AS n FROM pushes GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def _attempt(self, row: sqlite3.Row) -> AttemptRecord:
        return _record(AttemptRecord, row, json_columns=("error",))

    def push_attempts(
        self, *, external_id: str | None = None, email: str | None = None, failed_only: bool = False, limit: int = 50
    ) -> list[AttemptRecord]:
        """Attempts, newest first. ``failed_only``: outcome ``failed``, ``lost`` (no answer came, no
        booking found) or ``unknown`` (no answer came, the booking not found yet)."""
        where, params = [], []
        if external_id is not None:
            where.append("external_id = ?")
            params.append(external_id)
        if email is not None:
            where.append("lower(email) = lower(?)")
            params.append(email)
        if failed_only:
            where.append("outcome IN (?, ?, ?)")
            params.extend((AttemptOutcome.FAILED, AttemptOutcome.LOST, AttemptOutcome.UNKNOWN))
        sql = "SELECT * FROM push_attempts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return [self._attempt(row) for row in self._query(sql, [*params, limit])]

    def recent_failures(self, limit: int = 10) -> list[AttemptRecord]:
        return self.push_attempts(failed_only=True, limit=limit)

    def unfinished_intents(self, *, external_id: str | None = None) -> list[AttemptRecord]:
        """Attempts still ``intent`` (a crash between the POST and its record), oldest first.

        Reconcile each by externalId before pushing that record again.
        """
        if external_id is None:
            rows = self._query("SELECT * FROM push_attempts WHERE outcome = ? ORDER BY id", (AttemptOutcome.INTENT,))
        else:
            rows = self._query(
                "SELECT * FROM push_attempts WHERE outcome = ? AND external_id = ? ORDER BY id",
                (AttemptOutcome.INTENT, external_id),
            )
        return [self._attempt(row) for row in rows]

    def attempts_in_doubt(self, external_id: str) -> list[AttemptRecord]:
        """Creates of this externalId that may have been applied, oldest first: intents never
        finished (a run killed between its POST and its record) and ``unknown`` attempts (the
        answer was lost and the booking not found yet). Look the booking up before anything
        is created (``stsync.lookup_grace``)."""
        rows = self._query(
            "SELECT * FROM push_attempts WHERE external_id = ? AND outcome IN (?, ?) ORDER BY id",
            (external_id, *IN_DOUBT_OUTCOMES),
        )
        return [self._attempt(row) for row in rows]

    def unknown_attempts(self, limit: int = 50) -> list[AttemptRecord]:
        """Attempts in doubt whose push is not booked, newest first (for ``diagnose``)."""
        rows = self._query(
            "SELECT a.* FROM push_attempts a JOIN pushes p ON p.external_id = a.external_id "
            "WHERE a.outcome = ? AND p.state != ? ORDER BY a.id DESC LIMIT ?",
            (AttemptOutcome.UNKNOWN, PushState.BOOKED, limit),
        )
        return [self._attempt(row) for row in rows]

    # -- qualification tracking ---------------------------------------------------------
    def open_bookings(self) -> list[PushRecord]:
        """Booked and not final: what ``qualify`` still has to follow."""
        rows = self._query(
            "SELECT * FROM pushes WHERE state = ? AND final = 0 ORDER BY created_at, external_id", (PushState.BOOKED,)
        )
        return [_record(PushRecord, row, bool_columns=("final",)) for row in rows]

    def update_tracking(
        self,
        external_id: str,
        *,
        booking_status: str | None = None,
        job_id: int | None = None,
        job_status: str | None = None,
        final: bool | None = None,
        qualification: str | None = None,
    ) -> bool:
        """Set the given tracking values (``None`` = leave as is). False when there is no such push."""
        changes: dict[str, Any] = {}
        if booking_status is not None:
            changes["booking_status"] = booking_status
        if job_id is not None:
            changes["job_id"] = job_id
        if job_status is not None:
            changes["job_status"] = job_status
        if final is not None:
            changes["final"] = 1 if final else 0
        if qualification is not None:
            _check(qualification, QualificationValue, "qualification")
            changes["qualification"] = qualification
        with self.transaction() as conn:
            if not changes:
                return conn.execute("SELECT 1 FROM pushes WHERE external_id = ?", (external_id,)).fetchone() is not None
            assignments = ", ".join(f"{column} = ?" for column in changes)
            cursor = conn.execute(
                f"UPDATE pushes SET {assignments}, updated_at = ? WHERE external_id = ?",
                (*changes.values(), utc_now(), external_id),
            )
            return cursor.rowcount > 0

    def record_qualification_intent(self, external_id: str, action: str, *, rule: str | None, reason: str | None) -> int:
        _check(action, QualificationAction, "qualification action")
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO qualifications (external_id, action, state, rule, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                (external_id, action, QualificationState.INTENT, rule, reason, utc_now()),
            )
            return _inserted_id(cursor)

    def record_qualification_result(self, qualification_id: int, *, state: str, error: Mapping[str, Any] | None = None) -> None:
        """``done`` → the push reads qualified/unqualified from now on; ``failed`` keeps the error."""
        _check(state, QUALIFICATION_RESULTS, "qualification state")
        now = utc_now()
        with self.transaction() as conn:
            row = conn.execute("SELECT external_id, action FROM qualifications WHERE id = ?", (qualification_id,)).fetchone()
            if row is None:
                raise ValueError(f"no qualification {qualification_id} in the ledger")
            conn.execute(
                "UPDATE qualifications SET state = ?, at = ?, error = ? WHERE id = ?",
                (state, now, _dumps(dict(error) if error is not None else None), qualification_id),
            )
            if state == QualificationState.DONE:
                qualified = row["action"] == QualificationAction.QUALIFY
                value = QualificationValue.QUALIFIED if qualified else QualificationValue.UNQUALIFIED
                conn.execute(
                    "UPDATE pushes SET qualification = ?, qualified_at = ?, updated_at = ? WHERE external_id = ?",
                    (value, now, now, row["external_id"]),
                )

    def qualifications_for(self, external_id: str) -> list[QualificationRecord]:
        rows = self._query("SELECT * FROM qualifications WHERE external_id = ? ORDER BY id", (external_id,))
        return [_record(QualificationRecord, row, json_columns=("error",)) for row in rows]

    def set_held_until(self, external_id: str, held_until: str | None) -> None:
        """The hold of a push whose rule is met (``None``: not held, or no longer)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE pushes SET held_until = ?, updated_at = ? WHERE external_id = ? AND held_until IS NOT ?",
                (held_until, utc_now(), external_id, held_until),
            )

    def held_pushes(self) -> list[PushRecord]:
        """Open pushes whose rule is met and whose hold has not ended yet (as last decided)."""
        rows = self._query(
            "SELECT * FROM pushes WHERE state = ? AND final = 0 AND held_until IS NOT NULL ORDER BY held_until, external_id",
            (PushState.BOOKED,),
        )
        return [_record(PushRecord, row, bool_columns=("final",)) for row in rows]

    # -- the ServiceTitan mirror: bookings, jobs, job events -------------------------------
    def upsert_bookings(self, rows: Iterable[BookingRow], *, conn: sqlite3.Connection | None = None) -> int:
        """Store bookings as read; a copy not newer (by ``modified_on``) than the stored one is
        ignored: ServiceTitan moves ``modifiedOn`` with every change, so it is the same version."""
        values = [
            (r.booking_id, r.external_id, r.status, r.job_id, r.created_on, r.modified_on, r.read_at) for r in rows
        ]
        if not values:
            return 0
        with self._write(conn) as tx:
            tx.executemany(
                "INSERT INTO st_bookings (booking_id, external_id, status, job_id, created_on, modified_on, read_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (booking_id) DO UPDATE SET "
                "external_id = excluded.external_id, status = excluded.status, "
                "job_id = COALESCE(excluded.job_id, st_bookings.job_id), created_on = excluded.created_on, "
                "modified_on = excluded.modified_on, read_at = excluded.read_at "
                "WHERE st_bookings.modified_on IS NULL OR excluded.modified_on IS NULL "
                "OR excluded.modified_on > st_bookings.modified_on",
                values,
            )
        return len(values)

    def bookings_for(self, booking_ids: Iterable[int]) -> dict[int, BookingRow]:
        """The stored bookings among these ids (absent ids are left out)."""
        found: dict[int, BookingRow] = {}
        for chunk in _chunks(booking_ids):
            rows = self._query(f"SELECT * FROM st_bookings WHERE booking_id IN ({', '.join('?' for _ in chunk)})", chunk)
            for row in rows:
                found[row["booking_id"]] = _record(BookingRow, row)
        return found

    def bookings_with_external_id(self, external_id: str) -> list[BookingRow]:
        """The provider's bookings with exactly this externalId, oldest (lowest id) first."""
        rows = self._query("SELECT * FROM st_bookings WHERE external_id = ? ORDER BY booking_id", (external_id,))
        return [_record(BookingRow, row) for row in rows]

    def booking_ids_known(self, booking_ids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for chunk in _chunks(booking_ids):
            rows = self._query(f"SELECT booking_id FROM st_bookings WHERE booking_id IN ({', '.join('?' for _ in chunk)})", chunk)
            found.update(row["booking_id"] for row in rows)
        return found

    def upsert_jobs(self, rows: Iterable[JobRow], *, conn: sqlite3.Connection | None = None) -> int:
        """Store jobs as read; a copy not newer (by ``modified_on``) than the stored one is ignored."""
        values = [
            (r.job_id, r.booking_id, r.status, r.created_on, r.completed_on, r.canceled_on, r.total, r.invoice_id,
             r.modified_on, r.read_at)
            for r in rows
        ]
        if not values:
            return 0
        with self._write(conn) as tx:
            tx.executemany(
                "INSERT INTO st_jobs (job_id, booking_id, status, created_on, completed_on, canceled_on, total, invoice_id, "
                "modified_on, read_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                "booking_id = COALESCE(excluded.booking_id, st_jobs.booking_id), status = excluded.status, "
                "created_on = excluded.created_on, completed_on = COALESCE(excluded.completed_on, st_jobs.completed_on), "
                "canceled_on = excluded.canceled_on, total = excluded.total, invoice_id = excluded.invoice_id, "
                "modified_on = excluded.modified_on, read_at = excluded.read_at "
                "WHERE st_jobs.modified_on IS NULL OR excluded.modified_on IS NULL "
                "OR excluded.modified_on > st_jobs.modified_on",
                values,
            )
        return len(values)

    def jobs_for(self, job_ids: Iterable[int]) -> dict[int, JobRow]:
        found: dict[int, JobRow] = {}
        for chunk in _chunks(job_ids):
            rows = self._query(f"SELECT * FROM st_jobs WHERE job_id IN ({', '.join('?' for _ in chunk)})", chunk)
            for row in rows:
                found[row["job_id"]] = _record(JobRow, row)
        return found

    def replace_job_history(
        self, job_id: int, events: Iterable[tuple[str, str, str]], *, conn: sqlite3.Connection | None = None
    ) -> None:
        """The job's history as ServiceTitan exports it (all entries at once): ``(key, status, at)``."""
        with self._write(conn) as tx:
            tx.execute("DELETE FROM job_events WHERE job_id = ? AND source = 'history'", (job_id,))
            tx.executemany(
                "INSERT OR REPLACE INTO job_events (job_id, event_key, status, at, source) VALUES (?, ?, ?, ?, 'history')",
                [(job_id, key, status, at) for key, status, at in events],
            )

    def observe_job_status(self, job_id: int, status: str, at: str, *, conn: sqlite3.Connection | None = None) -> bool:
        """A status seen when the job was read (dated by its ``modifiedOn``). False: known already."""
        with self._write(conn) as tx:
            cursor = tx.execute(
                "INSERT OR IGNORE INTO job_events (job_id, event_key, status, at, source) VALUES (?, ?, ?, ?, 'observed')",
                (job_id, f"observed:{status}:{at}", status, at),
            )
            return cursor.rowcount == 1

    def job_events_for(self, job_ids: Iterable[int]) -> dict[int, list[JobEvent]]:
        """Every asked job → its events in time order (``[]`` when none)."""
        ids = list(dict.fromkeys(int(i) for i in job_ids))
        found: dict[int, list[JobEvent]] = {job_id: [] for job_id in ids}
        for chunk in _chunks(ids):
            rows = self._query(
                f"SELECT * FROM job_events WHERE job_id IN ({', '.join('?' for _ in chunk)}) ORDER BY job_id, at, event_key",
                chunk,
            )
            for row in rows:
                found[row["job_id"]].append(_record(JobEvent, row))
        return found

    def advance_position(self, feed: str, value: str, *, conn: sqlite3.Connection | None = None) -> None:
        """Set a timestamp position (ISO-8601 UTC, sorts as text) unless a later one is stored:
        two runs reading the same feed at once never move it back."""
        with self._write(conn) as tx:
            tx.execute(
                "INSERT INTO sync_positions (feed, token, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (feed) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at "
                "WHERE sync_positions.token IS NULL OR excluded.token > sync_positions.token",
                (feed, value, utc_now()),
            )

    # -- referred leads seen, and the report's rows ---------------------------------------
    def record_referred_leads(
        self, rows: Iterable[ReferredLeadRow], *, conn: sqlite3.Connection | None = None, durable: bool = True
    ) -> int:
        """Remember referred leads as read (one statement each, one transaction for all). A
        lead seen again keeps its first ``seen_by`` and ``first_seen_at``; a value read now
        replaces the stored one, a value the source lacks (None) keeps it; a row with nothing
        new is not written. ``durable=False``: see ``transaction`` (for a source read again
        by the next run anyway). → rows given."""
        values = []
        for r in rows:
            _check(r.seen_by, LeadSeenBy, "seen_by")
            values.append(
                (r.external_id, r.rf_user_id, r.email, r.name, r.referral_code, r.signed_up_at, r.referrer_rf_user_id,
                 r.referrer_email, r.referrer_name, r.referrer_code, r.seen_by, r.first_seen_at)
            )
        if not values:
            return 0
        kept = ("rf_user_id", "email", "name", "referral_code", "signed_up_at", "referrer_rf_user_id", "referrer_email",
                "referrer_name", "referrer_code")
        updates = ", ".join(f"{c} = coalesce(excluded.{c}, referred_leads.{c})" for c in kept)
        changed = " OR ".join(f"(excluded.{c} IS NOT NULL AND excluded.{c} IS NOT referred_leads.{c})" for c in kept)
        with self._write(conn, durable=durable) as tx:
            tx.executemany(
                "INSERT INTO referred_leads (external_id, rf_user_id, email, name, referral_code, signed_up_at, "
                "referrer_rf_user_id, referrer_email, referrer_name, referrer_code, seen_by, first_seen_at) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (external_id) DO UPDATE SET {updates} WHERE {changed}",
                values,
            )
        return len(values)

    def get_referred_lead(self, external_id: str) -> ReferredLeadRow | None:
        rows = self._query("SELECT * FROM referred_leads WHERE external_id = ?", (external_id,))
        return _record(ReferredLeadRow, rows[0]) if rows else None

    def referral_rows(self, *, joined_from: str, joined_before: str) -> list[ReferralRow]:
        """Every referral that joined in ``[joined_from, joined_before)`` (UTC ISO-8601 text):
        the referred leads seen, and the lead pushes among them never seen as such (pushed
        before stsync kept them), each with its push, booking and job as the ledger holds them.
        One query; ordered by when they joined."""
        rows = self._query(
            """
            WITH leads AS (
                SELECT external_id, rf_user_id, email, name, referral_code, signed_up_at, first_seen_at,
                       referrer_rf_user_id, referrer_email, referrer_name, referrer_code
                FROM referred_leads
                UNION ALL
                SELECT p.external_id, p.rf_user_id, p.email, p.name, p.referral_code, NULL, p.created_at,
                       NULL, NULL, NULL, NULL
                FROM pushes p
                WHERE p.kind = ? AND NOT EXISTS (SELECT 1 FROM referred_leads r WHERE r.external_id = p.external_id)
            ), placed AS (
                SELECT leads.*, coalesce(signed_up_at, first_seen_at) AS joined_at FROM leads
            )
            SELECT l.external_id, l.rf_user_id, l.email, l.name, l.referral_code, l.joined_at,
                   l.signed_up_at IS NOT NULL AS joined_at_known,
                   l.referrer_rf_user_id, l.referrer_email, l.referrer_name, l.referrer_code,
                   p.state AS push_state,
                   coalesce(p.booking_id, b.booking_id) AS booking_id,
                   coalesce(b.status, p.booking_status) AS booking_status,
                   coalesce(b.job_id, p.job_id) AS job_id,
                   coalesce(j.status, p.job_status) AS job_status,
                   j.completed_on AS job_completed_on, j.total AS job_total, j.invoice_id AS job_invoice_id,
                   p.qualification, p.held_until, coalesce(p.final, 0) AS final
            FROM placed l
            LEFT JOIN pushes p ON p.external_id = l.external_id
            LEFT JOIN st_bookings b ON b.booking_id = coalesce(
                p.booking_id, (SELECT min(s.booking_id) FROM st_bookings s WHERE s.external_id = l.external_id))
            LEFT JOIN st_jobs j ON j.job_id = coalesce(b.job_id, p.job_id)
            WHERE l.joined_at >= ? AND l.joined_at < ?
            ORDER BY l.joined_at, l.external_id
            """,
            (Kind.LEAD, joined_from, joined_before),
        )
        return [_record(ReferralRow, row, bool_columns=("joined_at_known", "final")) for row in rows]

    def referrers_lacking_details(self) -> set[int]:
        """Referrers (Referral Factory user ids) of referred leads of whom the ledger knows
        neither an e-mail nor a name: not from the leads, not from customer sync, not pushed."""
        rows = self._query(
            """
            SELECT DISTINCT referrer_rf_user_id AS id FROM referred_leads
            WHERE referrer_rf_user_id IS NOT NULL
            GROUP BY referrer_rf_user_id
            HAVING max(referrer_email) IS NULL AND max(referrer_name) IS NULL
            EXCEPT SELECT rf_user_id FROM referrers WHERE rf_user_id IS NOT NULL
            EXCEPT SELECT rf_user_id FROM pushes WHERE kind = ? AND rf_user_id IS NOT NULL
            """,
            (Kind.REFERRER,),
        )
        return {int(row["id"]) for row in rows}

    def fill_referrer_details(
        self, details: Iterable[tuple[int, str | None, str | None, str | None]], *, conn: sqlite3.Connection | None = None
    ) -> int:
        """``(rf_user_id, email, name, code)`` of referrers, onto the referred leads they brought
        where those lack them (what a lead said of its referrer is kept). → leads updated."""
        updated = 0
        with self._write(conn) as tx:
            for rf_user_id, email, name, code in details:
                cursor = tx.execute(
                    "UPDATE referred_leads SET referrer_email = coalesce(referrer_email, ?), "
                    "referrer_name = coalesce(referrer_name, ?), referrer_code = coalesce(referrer_code, ?) "
                    "WHERE referrer_rf_user_id = ? "
                    "AND (referrer_email IS NULL OR referrer_name IS NULL OR referrer_code IS NULL)",
                    (email, name, code, rf_user_id),
                )
                updated += cursor.rowcount
        return updated

    def referral_job_ids(self) -> set[int]:
        """The jobs booked from a referral's booking (every referred lead seen, every lead push)."""
        rows = self._query(
            """
            SELECT b.job_id FROM st_bookings b
            WHERE b.job_id IS NOT NULL AND b.external_id IN (
                SELECT external_id FROM referred_leads UNION SELECT external_id FROM pushes WHERE kind = ?)
            UNION
            SELECT job_id FROM pushes WHERE kind = ? AND job_id IS NOT NULL
            """,
            (Kind.LEAD, Kind.LEAD),
        )
        return {int(row["job_id"]) for row in rows}

    def known_referrers(self) -> list[KnownReferrer]:
        """Customers enrolled as referrers by customer sync (with their Referral Factory user),
        then the referrers stsync pushed as bookings."""
        rows = self._query(
            """
            SELECT rf_user_id, email, NULL AS name, customer_id FROM referrers WHERE rf_user_id IS NOT NULL
            UNION ALL
            SELECT rf_user_id, email, name, NULL FROM pushes WHERE kind = ? AND (rf_user_id IS NOT NULL OR email IS NOT NULL)
            """,
            (Kind.REFERRER,),
        )
        return [_record(KnownReferrer, row) for row in rows]

    # -- sync positions -----------------------------------------------------------------
    def get_position(self, feed: str) -> str | None:
        rows = self._query("SELECT token FROM sync_positions WHERE feed = ?", (feed,))
        return rows[0]["token"] if rows else None

    def set_position(self, feed: str, token: str | None, *, conn: sqlite3.Connection | None = None) -> None:
        with self._write(conn) as tx:
            tx.execute(
                "INSERT INTO sync_positions (feed, token, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (feed) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at",
                (feed, token, utc_now()),
            )

    def advance_number(self, feed: str, value: int, *, conn: sqlite3.Connection | None = None) -> None:
        """Set an integer position unless a larger one is stored (a lower bound: the largest wins)."""
        with self._write(conn) as tx:
            tx.execute(
                "INSERT INTO sync_positions (feed, token, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (feed) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at "
                "WHERE sync_positions.token IS NULL OR CAST(excluded.token AS INTEGER) > CAST(sync_positions.token AS INTEGER)",
                (feed, str(int(value)), utc_now()),
            )

    # -- referrers ----------------------------------------------------------------------
    def _referrer(self, row: sqlite3.Row) -> ReferrerRecord:
        return _record(ReferrerRecord, row, json_columns=("error",))

    def get_referrer(self, customer_id: int) -> ReferrerRecord | None:
        rows = self._query("SELECT * FROM referrers WHERE customer_id = ?", (customer_id,))
        return self._referrer(rows[0]) if rows else None

    def referrer_by_email(self, email: str) -> ReferrerRecord | None:
        """The customer enrolled with this e-mail (one that has a Referral Factory user first)."""
        rows = self._query(
            "SELECT * FROM referrers WHERE lower(email) = lower(?) ORDER BY rf_user_id IS NULL, customer_id LIMIT 1", (email,)
        )
        return self._referrer(rows[0]) if rows else None

    def referrers_by_email(self, email: str) -> list[ReferrerRecord]:
        """Every customer recorded with this e-mail (case-insensitive), by customer id."""
        rows = self._query("SELECT * FROM referrers WHERE lower(email) = lower(?) ORDER BY customer_id", (email,))
        return [self._referrer(row) for row in rows]

    def referrers_with_error(self, error_type: str, limit: int | None = None) -> list[ReferrerRecord]:
        """Customers whose recorded error is of this type (``StsyncError.to_dict()["type"]``), by id."""
        sql = "SELECT * FROM referrers WHERE json_extract(error, '$.type') = ? ORDER BY customer_id"
        rows = self._query(sql + " LIMIT ?", (error_type, limit)) if limit is not None else self._query(sql, (error_type,))
        return [self._referrer(row) for row in rows]

    def referrers_sharing(self, limit: int | None = None) -> list[ReferrerRecord]:
        """Customers in state ``shared``, by customer id."""
        sql = "SELECT * FROM referrers WHERE state = ? ORDER BY customer_id"
        params: tuple[Any, ...] = (ReferrerState.SHARED, limit) if limit is not None else (ReferrerState.SHARED,)
        rows = self._query(sql + (" LIMIT ?" if limit is not None else ""), params)
        return [self._referrer(row) for row in rows]

    def upsert_referrer(self, customer_id: int, *, conn: sqlite3.Connection | None = None, **values: Any) -> None:
        """Insert or update the given columns only (``error`` is a dict; ``None`` clears a column)."""
        unknown = set(values) - set(REFERRER_FIELDS)
        if unknown:
            raise TypeError(f"unknown referrer field(s): {', '.join(sorted(unknown))}")
        if "state" in values:
            _check(values["state"], ReferrerState, "referrer state")
        if "error" in values:
            values["error"] = _dumps(values["error"])
        values["updated_at"] = utc_now()
        columns = ["customer_id", *values]
        placeholders = ", ".join("?" for _ in columns)
        updates = ", ".join(f"{column} = excluded.{column}" for column in values)
        with self._write(conn) as tx:
            tx.execute(
                f"INSERT INTO referrers ({', '.join(columns)}) VALUES ({placeholders}) "
                f"ON CONFLICT (customer_id) DO UPDATE SET {updates}",
                (customer_id, *values.values()),
            )

    def referrers_to_retry(self, limit: int | None = None) -> list[ReferrerRecord]:
        """Customers whose last attempt was cut short (``pending``), is in doubt (``unknown``),
        ``failed``, or left an error (e.g. a return field not written), by customer id."""
        sql = "SELECT * FROM referrers WHERE state IN (?, ?, ?) OR error IS NOT NULL ORDER BY customer_id"
        rows = (
            self._query(sql + " LIMIT ?", (*REFERRER_RETRY_STATES, limit))
            if limit is not None
            else self._query(sql, REFERRER_RETRY_STATES)
        )
        return [self._referrer(row) for row in rows]

    def referrer_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) AS n FROM referrers GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    # -- contacts -----------------------------------------------------------------------
    def upsert_contacts(self, rows: Iterable[ContactRow | Mapping[str, Any]], *, conn: sqlite3.Connection | None = None) -> int:
        """Store contact rows from the export feed (the latest seen wins). → rows written."""
        values = []
        for row in rows:
            if isinstance(row, Mapping):
                row = ContactRow(
                    contact_id=row.get("contact_id", row.get("id")),
                    customer_id=row["customer_id"],
                    type=row.get("type"),
                    value=row.get("value"),
                    active=bool(row.get("active", True)),
                    modified_on=row.get("modified_on"),
                )
            values.append((row.contact_id, row.customer_id, row.type, row.value, 1 if row.active else 0, row.modified_on))
        if not values:
            return 0
        with self._write(conn) as tx:
            tx.executemany(
                "INSERT INTO contacts (contact_id, customer_id, type, value, active, modified_on) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (contact_id) DO UPDATE SET customer_id = excluded.customer_id, type = excluded.type, "
                "value = excluded.value, active = excluded.active, modified_on = excluded.modified_on",
                values,
            )
        return len(values)

    def contacts_for(self, customer_ids: Iterable[int]) -> dict[int, list[ContactRow]]:
        """Every asked id → its contacts (``[]`` when none), by contact id."""
        ids = list(dict.fromkeys(int(i) for i in customer_ids))
        found: dict[int, list[ContactRow]] = {customer_id: [] for customer_id in ids}
        for start in range(0, len(ids), 500):  # stay under SQLite's host-parameter limit
            chunk = ids[start : start + 500]
            rows = self._query(
                f"SELECT * FROM contacts WHERE customer_id IN ({', '.join('?' for _ in chunk)}) ORDER BY contact_id", chunk
            )
            for row in rows:
                found[row["customer_id"]].append(_record(ContactRow, row, bool_columns=("active",)))
        return found

    # -- return fields ------------------------------------------------------------------
    def get_return_fields(self, customer_id: int) -> dict[str, str | None]:
        rows = self._query(
            "SELECT field_name, value FROM return_fields WHERE customer_id = ? ORDER BY field_name", (customer_id,)
        )
        return {row["field_name"]: row["value"] for row in rows}

    def set_return_field(
        self, customer_id: int, field_name: str, value: str | None, *, conn: sqlite3.Connection | None = None
    ) -> None:
        with self._write(conn) as tx:
            tx.execute(
                "INSERT INTO return_fields (customer_id, field_name, value, written_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (customer_id, field_name) DO UPDATE SET value = excluded.value, written_at = excluded.written_at",
                (customer_id, field_name, value, utc_now()),
            )

    # -- webhook deliveries -------------------------------------------------------------
    def admit_delivery(
        self, key: str, *, event: str | None, external_id: str | None, lead: Mapping[str, Any], payload: Any
    ) -> DeliveryAdmission:
        """Record a delivery before it is answered (one transaction, synced): → ``DeliveryAdmission``.

        ``new``: first seen, recorded with what it says. ``waiting``: recorded before and
        still without an outcome (answered 202 by a process that died, or queued now):
        process it unless it is queued already. ``retry``: its processing failed: marked
        ``retrying`` and queued again. ``done``: it has an outcome; a duplicate.
        """
        now = utc_now()
        with self.transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM webhook_deliveries").fetchone()[0]
            cursor = conn.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (key, event, external_id, received_at, lead, payload, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, event, external_id, now, _dumps(dict(lead)), _dumps(payload), seq),
            )
            if cursor.rowcount == 1:
                return DeliveryAdmission.NEW
            row = conn.execute("SELECT outcome, lead FROM webhook_deliveries WHERE key = ?", (key,)).fetchone()
            if row["lead"] is None:  # recorded by an stsync that kept no payload
                conn.execute(
                    "UPDATE webhook_deliveries SET lead = ?, payload = ? WHERE key = ?",
                    (_dumps(dict(lead)), _dumps(payload), key),
                )
            if row["outcome"] is None or row["outcome"] == DeliveryOutcome.RETRYING:
                return DeliveryAdmission.WAITING
            if row["outcome"] == DeliveryOutcome.FAILED:
                # Sent again after it failed: try once more. Marked at once, so a burst of
                # redeliveries queues it once.
                conn.execute(
                    "UPDATE webhook_deliveries SET outcome = ?, seq = ?, finished_at = NULL WHERE key = ?",
                    (DeliveryOutcome.RETRYING, seq, key),
                )
                return DeliveryAdmission.RETRY
            return DeliveryAdmission.DONE

    def finish_delivery(self, key: str, outcome: str, error: Mapping[str, Any] | str | None = None) -> None:
        if isinstance(error, str):
            error = {"message": error}
        with self.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET outcome = ?, error = ?, finished_at = ? WHERE key = ?",
                (outcome, _dumps(dict(error) if error is not None else None), utc_now(), key),
            )

    def get_delivery(self, key: str) -> DeliveryRecord | None:
        rows = self._query("SELECT * FROM webhook_deliveries WHERE key = ?", (key,))
        return _record(DeliveryRecord, rows[0], json_columns=("error", "lead", "payload")) if rows else None

    def deliveries_to_process(self) -> list[DeliveryRecord]:
        """Every delivery recorded and not processed yet, in the order it was (re)queued (what
        ``serve`` processes first when it starts; ``waiting_deliveries`` counts them)."""
        rows = self._query(
            "SELECT * FROM webhook_deliveries WHERE outcome IS NULL OR outcome = ? ORDER BY seq, rowid",
            (DeliveryOutcome.RETRYING,),
        )
        return [_record(DeliveryRecord, row, json_columns=("error", "lead", "payload")) for row in rows]

    # -- health: what status and the alerts read ----------------------------------------
    def failed_pushes(self, *, since: str | None = None, limit: int = 10) -> tuple[int, list[AttemptRecord]]:
        """Pushes whose latest failure is still unbooked: how many, and the newest attempts
        (``since``: only failures recorded after that time)."""
        where = (
            f"a.outcome = ? AND p.state = ? AND {_record_level('a.error')} "
            f"AND {_not_acknowledged('push', 'a.external_id', 'coalesce(a.finished_at, a.started_at)')}"
        )
        params: list[Any] = [AttemptOutcome.FAILED, PushState.FAILED]
        if since is not None:
            where += " AND a.finished_at > ?"
            params.append(since)
        latest = (
            "SELECT a.* FROM push_attempts a JOIN pushes p ON p.external_id = a.external_id "
            "JOIN (SELECT external_id, max(id) AS id FROM push_attempts WHERE outcome = ? GROUP BY external_id) l "
            f"ON l.id = a.id WHERE {where}"
        )
        rows = self._query(f"{latest} ORDER BY a.id DESC", [AttemptOutcome.FAILED, *params])
        return len(rows), [self._attempt(row) for row in rows[:limit]]

    def failed_referrers(self, *, since: str | None = None, limit: int = 10) -> tuple[int, list[ReferrerRecord]]:
        """Customers whose referrer (or its return fields) failed and was not fixed since."""
        where = (
            f"(state = ? OR (error IS NOT NULL AND state NOT IN (?, ?))) AND {_record_level('error')} "
            f"AND {_not_acknowledged('sync', 'CAST(customer_id AS TEXT)', 'updated_at')}"
        )
        params: list[Any] = [ReferrerState.FAILED, ReferrerState.PENDING, ReferrerState.SKIPPED]
        if since is not None:
            where += " AND updated_at > ?"
            params.append(since)
        count = self._query(f"SELECT count(*) AS n FROM referrers WHERE {where}", params)[0]["n"]
        rows = self._query(f"SELECT * FROM referrers WHERE {where} ORDER BY updated_at DESC LIMIT ?", [*params, limit])
        return int(count), [self._referrer(row) for row in rows]

    def failed_qualifications(self, *, since: str | None = None, limit: int = 10) -> tuple[int, list[QualificationRecord]]:
        """Referrals whose latest (un)qualification failed, on a push still open."""
        where = (
            f"q.state = ? AND p.final = 0 AND {_record_level('q.error')} "
            f"AND {_not_acknowledged('qualify', 'CAST(q.id AS TEXT)', 'q.at')}"
        )
        params: list[Any] = [QualificationState.FAILED]
        if since is not None:
            where += " AND q.at > ?"
            params.append(since)
        latest = (
            "SELECT q.* FROM qualifications q JOIN pushes p ON p.external_id = q.external_id "
            "JOIN (SELECT external_id, max(id) AS id FROM qualifications GROUP BY external_id) l ON l.id = q.id "
            f"WHERE {where}"
        )
        rows = self._query(f"{latest} ORDER BY q.id DESC", params)
        return len(rows), [_record(QualificationRecord, row, json_columns=("error",)) for row in rows[:limit]]

    def failed_deliveries(self, *, limit: int = 10) -> tuple[int, list[DeliveryRecord]]:
        """Webhook deliveries whose processing failed (not delivered again successfully since)."""
        where = f"outcome = ? AND {_not_acknowledged('webhook', 'key', 'received_at')}"
        count = self._query(f"SELECT count(*) AS n FROM webhook_deliveries WHERE {where}", (DeliveryOutcome.FAILED,))[0]["n"]
        rows = self._query(
            f"SELECT * FROM webhook_deliveries WHERE {where} ORDER BY received_at DESC LIMIT ?",
            (DeliveryOutcome.FAILED, limit),
        )
        return int(count), [_record(DeliveryRecord, row, json_columns=("error",)) for row in rows]

    def waiting_deliveries(self) -> tuple[int, str | None]:
        """Deliveries accepted and not processed yet (no outcome, or sent again after a failure):
        how many, and when the oldest arrived."""
        row = self._query(
            "SELECT count(*) AS n, min(received_at) AS oldest FROM webhook_deliveries WHERE outcome IS NULL OR outcome = ?",
            (DeliveryOutcome.RETRYING,),
        )[0]
        return int(row["n"]), row["oldest"]

    # -- the history of every kind (``stsync history``) ---------------------------------
    def qualification_entries(
        self, *, email: str | None = None, failed_only: bool = False, limit: int = 50
    ) -> list[tuple[QualificationRecord, str | None]]:
        """Qualifications (each with its push's e-mail), newest first."""
        where, params = [], []
        if email is not None:
            where.append("lower(p.email) = lower(?)")
            params.append(email)
        if failed_only:
            where.append("q.state = ?")
            params.append(QualificationState.FAILED)
        sql = (
            "SELECT q.*, p.email AS push_email FROM qualifications q LEFT JOIN pushes p ON p.external_id = q.external_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY q.at DESC, q.id DESC LIMIT ?"
        )
        rows = self._query(sql, [*params, limit])
        return [(_record(QualificationRecord, row, json_columns=("error",)), row["push_email"]) for row in rows]

    def get_qualification(self, qualification_id: int) -> QualificationRecord | None:
        rows = self._query("SELECT * FROM qualifications WHERE id = ?", (qualification_id,))
        return _record(QualificationRecord, rows[0], json_columns=("error",)) if rows else None

    def referrer_entries(self, *, email: str | None = None, failed_only: bool = False, limit: int = 50) -> list[ReferrerRecord]:
        """Customer sync outcomes (one per customer: its latest), newest first. ``failed_only``:
        failed or in doubt (``unknown``), or an error left (e.g. a return field not written)."""
        where, params = [], []
        if email is not None:
            where.append("lower(email) = lower(?)")
            params.append(email)
        if failed_only:
            where.append("(state IN (?, ?) OR (error IS NOT NULL AND state NOT IN (?, ?)))")
            params.extend([ReferrerState.FAILED, ReferrerState.UNKNOWN, ReferrerState.PENDING, ReferrerState.SKIPPED])
        sql = "SELECT * FROM referrers" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY updated_at DESC LIMIT ?"
        return [self._referrer(row) for row in self._query(sql, [*params, limit])]

    def delivery_entries(
        self,
        *,
        email: str | None = None,
        rf_user_ids: Iterable[int] = (),
        failed_only: bool = False,
        limit: int = 50,
    ) -> list[tuple[int, DeliveryRecord]]:
        """Webhook deliveries with their row number (the id ``history`` shows), newest first.
        ``email``: the deliveries about that e-mail — naming it (their lead, their key), keyed
        by one of ``rf_user_ids`` (its Referral Factory user), or naming an External Id pushed
        for it."""
        where, params = [], []
        if email is not None:
            about = [
                "key LIKE ? ESCAPE '\\'",
                "external_id IN (SELECT external_id FROM pushes WHERE lower(email) = lower(?))",
                "(json_valid(lead) AND lower(json_extract(lead, '$.email')) = lower(?))",
            ]
            params.extend([f"%:email={_like_escaped(email.strip().casefold())}:%", email, email])
            for user_id in rf_user_ids:
                about.append("key LIKE ?")
                params.append(f"%:id={int(user_id)}:%")
            where.append("(" + " OR ".join(about) + ")")
        if failed_only:
            where.append("outcome = ?")
            params.append(DeliveryOutcome.FAILED)
        sql = (
            "SELECT rowid AS row_number, * FROM webhook_deliveries"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY received_at DESC, rowid DESC LIMIT ?"
        )
        rows = self._query(sql, [*params, limit])
        return [(int(row["row_number"]), _record(DeliveryRecord, row, json_columns=DELIVERY_JSON)) for row in rows]

    def delivery_by_number(self, number: int) -> DeliveryRecord | None:
        rows = self._query("SELECT * FROM webhook_deliveries WHERE rowid = ?", (number,))
        return _record(DeliveryRecord, rows[0], json_columns=DELIVERY_JSON) if rows else None

    def get_attempt(self, attempt_id: int) -> AttemptRecord | None:
        rows = self._query("SELECT * FROM push_attempts WHERE id = ?", (attempt_id,))
        return self._attempt(rows[0]) if rows else None

    # -- acknowledgements ---------------------------------------------------------------
    def acknowledge(self, kind: str, record: str, *, note: str | None = None) -> Acknowledgement:
        """A person has seen this failed record: ``diagnose`` stops failing on it until it
        fails again (a failure recorded after ``acknowledged_at``). Acknowledging again moves
        the time."""
        now = utc_now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO acknowledgements (kind, record, acknowledged_at, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, record) DO UPDATE SET acknowledged_at = excluded.acknowledged_at, note = excluded.note",
                (kind, record, now, note),
            )
        return Acknowledgement(kind=kind, record=record, acknowledged_at=now, note=note)

    def acknowledgements(self, kind: str) -> dict[str, Acknowledgement]:
        """The acknowledged records of one kind, by record key."""
        rows = self._query("SELECT * FROM acknowledgements WHERE kind = ?", (kind,))
        return {row["record"]: _record(Acknowledgement, row) for row in rows}

    # -- key/value ----------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def put(self, key: str, value: str | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)
            )


@cache
def _migration_tables() -> tuple[str, ...]:
    """The tables the migrations create, in order (read from them once per process)."""
    return tuple(name for script in MIGRATIONS for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", script))


def iso_utc(moment: datetime | None) -> str | None:
    """A remote timestamp as the ledger stores it: UTC, milliseconds, ``Z`` (sorts as text)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(text: str | None) -> datetime | None:
    """The inverse of ``iso_utc`` (and of ``utc_now``)."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _chunks(ids: Iterable[int], size: int = 500) -> Iterator[list[int]]:
    """Ids in chunks under SQLite's host-parameter limit."""
    unique = list(dict.fromkeys(int(i) for i in ids))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would COMMIT our transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
