"""What may need a human, each read as a ``Condition``: a key, a state (None when all is
well) and what to say about it. The watch (``notify.watch``) decides when to say it.

- ``job_exit``: how a run command ended. Exit 1, 3, 4, 5 → state ``"<code>:<error type>"``;
  exit 0 → well; exit 6 (temporary), 7 (lock held), 130 (interrupted) change nothing — a
  trouble that lasts shows as the job being overdue.
- ``failed_records`` / ``failed_deliveries``: record sets — pushes unbooked after a failure of
  their own, customers whose referrer or return fields failed, qualifications that failed on an
  open referral; webhook deliveries whose processing failed. A record that joins the set is
  news (a message); one that stays is not; the set not empty is the state reminders repeat.
- ``overdue``: a scheduled job (``[schedule]``) has not succeeded (ok or partial) for more
  than ``overdue_after`` × its interval, counted from its last success (or its first run). A
  job that never ran, is ``"off"``, or has nothing to do (``[leads] action = "nothing"`` for
  push, rule ``none`` for qualify) is not overdue.
- ``cooldown``: Referral Factory's shared cool-down is in force (``stsync.ratelimit`` keeps it
  in the connection's state dir, for every process): after an IP block (``rf_blocked``) or
  two 429 episodes within an hour (``rf_cooldown``); over when it ends.

Everything here reads the ledger, the state dir and the config; nothing sends or writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.durations import describe_duration
from stsync.errors import error_summary
from stsync.notify.message import Alert, exit_meaning
from stsync.ratelimit import IP_BLOCKED, read_state
from stsync.storage.states import RunJob
from stsync.vocabulary import Action, QualificationRule

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.ledger import Ledger
    from stsync.storage.paths import ConnectionPaths

ALERTED_EXIT_CODES = (1, 3, 4, 5)
SCHEDULED_COMMANDS = {RunJob.PUSH: "push-lead --new", RunJob.QUALIFY: "qualify", RunJob.SYNC: "sync-customers --ongoing"}
RECORDS_TRACKED = 200  # newest open failures of each kind remembered between looks
RECORDS_SHOWN = 5

More = Callable[[str], str]  # "history --failed" → "stsync --config /etc/x.toml history --failed"


@dataclass(frozen=True)
class Condition:
    """``state`` None: all is well. ``alert``: what to say when the state changes. For a
    record set, ``items`` (key → a line about it) and ``news`` (the alert for new keys)."""

    key: str
    state: str | None
    alert: Alert | None = None
    items: dict[str, str] | None = None
    news: Callable[[list[str]], Alert] | None = None


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- a job's exit -------------------------------------------------------------------------------
def job_exit(job: str, command: str, exit_code: int, error: dict[str, Any] | None, more: More) -> Condition | None:
    key = f"job.{job}.exit"
    if exit_code == 0:
        return Condition(key, None)
    if exit_code not in ALERTED_EXIT_CODES:
        return None
    error = error or {}
    what = error.get("message") or exit_meaning(exit_code)
    shows_more = {
        3: "validate",
        4: "diagnose",
        5: "history --failed" if job == RunJob.PUSH else "diagnose",
        1: "diagnose",
    }[exit_code]
    return Condition(
        key,
        f"{exit_code}:{error.get('type') or 'error'}",
        Alert(
            event="job_failed",
            what=f"`{command}` exited {exit_code} ({exit_meaning(exit_code)}): {what}",
            job=job,
            command=command,
            exit_code=exit_code,
            hint=error.get("hint"),
            more=more(shows_more),
            details={"error_type": error.get("type"), "key_path": error.get("key_path")} if error else {},
        ),
    )


# -- records that failed for good ---------------------------------------------------------------
def failed_records(ledger: Ledger, more: More) -> Condition:
    items: dict[str, str] = {}
    pushes, push_rows = ledger.failed_pushes(limit=RECORDS_TRACKED)
    for attempt in push_rows:
        who = attempt.email or "(no e-mail)"
        items[f"push:{attempt.external_id}"] = f"booking for {who} ({attempt.external_id}): {error_summary(attempt.error)}"
    referrers, referrer_rows = ledger.failed_referrers(limit=RECORDS_TRACKED)
    for referrer in referrer_rows:
        items[f"customer:{referrer.customer_id}"] = (
            f"customer {referrer.customer_id} ({referrer.email or 'no e-mail'}): {error_summary(referrer.error)}"
        )
    qualifications, qualification_rows = ledger.failed_qualifications(limit=RECORDS_TRACKED)
    for qualification in qualification_rows:
        items[f"qualification:{qualification.external_id}"] = (
            f"{qualification.action} of referral {qualification.external_id}: {error_summary(qualification.error)}"
        )
    total = pushes + referrers + qualifications
    first_email = next((a.email for a in push_rows if a.email), None)

    def news(new_keys: list[str]) -> Alert:
        lines = [items[key] for key in new_keys[:RECORDS_SHOWN]]
        extra = f"; and {len(new_keys) - RECORDS_SHOWN} more" if len(new_keys) > RECORDS_SHOWN else ""
        kinds = sorted({key.split(":", 1)[0] for key in new_keys})
        shows_more = (
            "history --failed"
            if kinds == ["push"]
            else (f"diagnose --email {first_email}" if first_email and "push" in kinds else "diagnose")
        )
        return Alert(
            event="record_failed",
            what=f"{len(new_keys)} record(s) newly failed ({total} open): " + " | ".join(lines) + extra,
            hint="fix the data or the mapping the error names; the next run retries them",
            more=more(shows_more),
            details={"new": new_keys[:50], "open": {"pushes": pushes, "customers": referrers, "qualifications": qualifications}},
        )

    summary = Alert(
        event="record_failed",
        what=f"{total} record(s) failed and are not fixed yet "
        f"({pushes} booking(s), {referrers} customer(s), {qualifications} qualification(s))",
        more=more("diagnose"),
        details={"open": {"pushes": pushes, "customers": referrers, "qualifications": qualifications}},
    )
    return Condition("records.failed", "open" if total else None, summary, items, news)


def failed_deliveries(ledger: Ledger, more: More) -> Condition:
    count, rows = ledger.failed_deliveries(limit=RECORDS_TRACKED)
    items = {
        f"delivery:{row.key}": (
            f"delivery {row.key} ({row.event or 'event?'}, {row.external_id or 'no referral code'}): {error_summary(row.error)}"
        )
        for row in rows
    }

    def news(new_keys: list[str]) -> Alert:
        lines = [items[key] for key in new_keys[:RECORDS_SHOWN]]
        extra = f"; and {len(new_keys) - RECORDS_SHOWN} more" if len(new_keys) > RECORDS_SHOWN else ""
        return Alert(
            event="delivery_failed",
            what=f"{len(new_keys)} webhook delivery(ies) failed ({count} open): " + " | ".join(lines) + extra,
            hint="the lead is pushed again by the next `stsync push-lead --new` (or when Referral Factory delivers it again)",
            more=more("status"),
            details={"new": [key.split(":", 1)[1] for key in new_keys[:50]], "open": count},
        )

    summary = Alert(
        event="delivery_failed", what=f"{count} webhook delivery(ies) failed and were not processed since", more=more("status")
    )
    return Condition("deliveries.failed", "open" if count else None, summary, items, news)


# -- overdue jobs --------------------------------------------------------------------------------
def job_applies(job: str, config: Config) -> bool:
    """Whether the job has anything to do with this configuration."""
    if job == RunJob.PUSH:
        return config.leads.action == Action.CREATE_BOOKING
    if job == RunJob.QUALIFY:
        return config.leads.qualification.rule != QualificationRule.NONE
    return True


@dataclass(frozen=True)
class Overdue:
    """How late a scheduled job is: ``since`` its last success (or first run), ``limit`` seconds allowed."""

    job: str
    interval: float
    limit: float
    since: datetime | None
    late: bool

    def age(self, now: datetime) -> float | None:
        return (now - self.since).total_seconds() if self.since else None


def overdue_state(job: str, ledger: Ledger, config: Config, now: datetime) -> Overdue | None:
    """None when the job is not scheduled (off) or has nothing to do."""
    interval = config.schedule.interval(job)
    if interval is None or not job_applies(job, config):
        return None
    limit = interval * config.schedule.overdue_after
    success = ledger.last_succeeded_run(job)
    reference = None
    if success is not None:
        reference = parse_time(success.finished_at or success.started_at)
    else:
        first = ledger.first_run(job)
        reference = parse_time(first.started_at) if first is not None else None
    late = reference is not None and (now - reference).total_seconds() > limit
    return Overdue(job, interval, limit, reference, late)


def overdue(job: str, ledger: Ledger, config: Config, now: datetime, more: More) -> Condition | None:
    state = overdue_state(job, ledger, config, now)
    if state is None:
        return Condition(f"job.{job}.overdue", None)
    command = SCHEDULED_COMMANDS[RunJob(job)]
    age = state.age(now) or 0.0
    return Condition(
        f"job.{job}.overdue",
        "overdue" if state.late else None,
        Alert(
            event="job_overdue",
            what=f"`{command}` has not succeeded for {describe_duration(age)} "
            f"(it runs every {describe_duration(state.interval)}; overdue after {describe_duration(state.limit)})",
            job=job,
            command=command,
            hint="check that cron or `stsync run` is running, and why its last runs failed",
            more=more("status"),
            details={"since": iso(state.since) if state.since else None, "interval_seconds": state.interval},
        ),
    )


# -- the Referral Factory cool-down --------------------------------------------------------------
@dataclass(frozen=True)
class Cooldown:
    """Referral Factory's shared fate (``stsync.ratelimit``, every process of the connection):
    a cool-down in force or last ended (``reason``: rate_limited | ip_blocked), the 429 episodes
    of the last hour and the rate in force."""

    reason: str | None
    since: str | None
    until: str | None
    active: bool
    episodes_last_hour: int
    rate_factor: float

    @property
    def blocked(self) -> bool:
        return self.active and self.reason == IP_BLOCKED

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "episodes_last_hour": self.episodes_last_hour,
            "rate_factor": self.rate_factor,
        }


def read_cooldown(paths: ConnectionPaths, now: datetime) -> Cooldown | None:
    """The shared Referral Factory state at ``now``, read without creating anything; None when
    no 429 or block was ever recorded for the connection."""
    wall_now = now.timestamp()
    state = read_state(paths.rate_file("referral_factory"), window=60.0, wall_clock=lambda: wall_now)
    if state is None:
        return None
    current = state.cool_down
    return Cooldown(
        reason=current.reason if current else None,
        since=iso(datetime.fromtimestamp(current.since, UTC)) if current else None,
        until=iso(datetime.fromtimestamp(current.until, UTC)) if current else None,
        active=bool(current and current.in_force(wall_now)),
        episodes_last_hour=len(state.episodes),
        rate_factor=state.rate_factor,
    )


def cooldown(paths: ConnectionPaths, now: datetime, more: More) -> Condition:
    """A cool-down in force: ``rf_blocked`` when it follows an IP block, ``rf_cooldown`` after
    the 429 episodes. One per cool-down (its reason and start are the state)."""
    current = read_cooldown(paths, now)
    if current is None or not current.active:
        return Condition("referral_factory.cooldown", None)
    until = parse_time(current.until) or now
    wait = describe_duration((until - now).total_seconds())
    if current.blocked:
        event = "rf_blocked"
        what = (
            f"Referral Factory blocked this machine's IP address (at {current.since}): every run of this connection "
            f"waits until {current.until} (in {wait}) before calling it again"
        )
        hint = "make sure no other tool on this machine or Referral Factory account abuses its rate limit"
    else:
        event = "rf_cooldown"
        what = (
            f"Referral Factory rate-limited stsync (HTTP 429, {current.episodes_last_hour} episode(s) this hour): every run "
            f"of this connection waits until {current.until} (in {wait}) before calling it again"
        )
        hint = (
            "nothing to do unless it repeats: then lower [limits] referral_factory_per_minute, or find what else uses the API key"
        )
    return Condition(
        "referral_factory.cooldown",
        f"{current.reason}:{current.since}",
        Alert(event=event, what=what, hint=hint, more=more("status"), details=current.to_dict()),
    )
