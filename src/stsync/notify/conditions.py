"""What may need a human, each read as a ``Condition``: a key, a state (None when all is
well) and what to say about it. The watch (``notify.watch``) decides when to say it.

- ``job_exit``: how a run command ended. Exit 1, 3, 4, 5 → state ``"<code>:<error type>"``;
  exit 0 → well; exit 6 (temporary), 7 (lock held), 130 (interrupted) change nothing — a
  trouble that lasts shows as the job being overdue.
- ``rf_block``: a run met Referral Factory's IP block (``IpBlocked``; kv ``referral_factory.blocked``,
  kept by ``note_job_for_ip_block``); cleared by a Referral Factory job that ends 0.
- ``failed_records`` / ``failed_deliveries``: record sets — pushes unbooked after a failure of
  their own, customers whose referrer or return fields failed, qualifications that failed on an
  open referral; webhook deliveries whose processing failed. A record that joins the set is
  news (a message); one that stays is not; the set not empty is the state reminders repeat.
- ``overdue``: a scheduled job (``[schedule]``) has not succeeded (ok or partial) for more
  than ``overdue_after`` × its interval, counted from its last success (or its first run). A
  job that never ran, is ``"off"``, or has nothing to do (``[leads] action = "nothing"`` for
  push, rule ``none`` for qualify) is not overdue.
- ``cooldown``: the Referral Factory cool-down (kv ``referral_factory.cooldown``, see
  ``Cooldown``) is on.

Everything here reads the ledger and the config; nothing sends or writes, except
``record_cooldown`` (the state the cool-down's owner keeps).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from stsync.durations import describe_duration
from stsync.errors import error_summary
from stsync.notify.message import Alert, exit_meaning
from stsync.storage.states import RunJob
from stsync.vocabulary import Action, QualificationRule

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.ledger import Ledger

# Jobs whose success proves Referral Factory answers again.
RF_JOBS = (RunJob.PUSH, RunJob.SYNC, RunJob.QUALIFY)
ALERTED_EXIT_CODES = (1, 3, 4, 5)
SCHEDULED_COMMANDS = {RunJob.PUSH: "push-lead --new", RunJob.QUALIFY: "qualify", RunJob.SYNC: "sync-customers --ongoing"}
RECORDS_TRACKED = 200  # newest open failures of each kind remembered between looks
RECORDS_SHOWN = 5
COOLDOWN_KEY = "referral_factory.cooldown"
BLOCKED_KEY = "referral_factory.blocked"

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
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def rf_block(ledger: "Ledger", more: More) -> Condition:
    key = "referral_factory.blocked"
    block = read_ip_block(ledger)
    if block is None:
        return Condition(key, None)
    return Condition(
        key,
        f"blocked:{block.get('since')}",
        Alert(
            event="rf_blocked",
            what=f"Referral Factory blocked this machine's IP address ({block.get('message')})",
            job=block.get("job"),
            hint=block.get("hint") or "wait for the block to end; make sure nothing else uses this API key's budget",
            more=more("status"),
            details={"since": block.get("since")},
        ),
    )


def read_ip_block(ledger: "Ledger") -> dict[str, Any] | None:
    """The IP block the last run of a Referral Factory job met (kv ``BLOCKED_KEY``), or None."""
    try:
        data = json.loads(ledger.get(BLOCKED_KEY) or "null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def note_job_for_ip_block(ledger: "Ledger", job: str, exit_code: int, error: dict[str, Any] | None) -> None:
    """A run met the block (``IpBlocked``): remember it; a Referral Factory job that ends 0
    proves it is over."""
    if error and error.get("type") == "IpBlocked":
        if read_ip_block(ledger) is None:
            since = datetime.now(timezone.utc)
            ledger.put(BLOCKED_KEY, json.dumps({"since": iso(since), "job": job, "message": error.get("message"), "hint": error.get("hint")}))
    elif exit_code == 0 and job in RF_JOBS and ledger.get(BLOCKED_KEY) is not None:
        ledger.put(BLOCKED_KEY, None)


# -- records that failed for good ---------------------------------------------------------------
def failed_records(ledger: "Ledger", more: More) -> Condition:
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
        shows_more = "history --failed" if kinds == ["push"] else (f"diagnose --email {first_email}" if first_email and "push" in kinds else "diagnose")
        return Alert(
            event="record_failed",
            what=f"{len(new_keys)} record(s) newly failed ({total} open): " + " | ".join(lines) + extra,
            hint="fix the data or the mapping the error names; the next run retries them",
            more=more(shows_more),
            details={"new": new_keys[:50], "open": {"pushes": pushes, "customers": referrers, "qualifications": qualifications}},
        )

    summary = Alert(
        event="record_failed",
        what=f"{total} record(s) failed and are not fixed yet ({pushes} booking(s), {referrers} customer(s), {qualifications} qualification(s))",
        more=more("diagnose"),
        details={"open": {"pushes": pushes, "customers": referrers, "qualifications": qualifications}},
    )
    return Condition("records.failed", "open" if total else None, summary, items, news)


def failed_deliveries(ledger: "Ledger", more: More) -> Condition:
    count, rows = ledger.failed_deliveries(limit=RECORDS_TRACKED)
    items = {
        f"delivery:{row.key}": f"delivery {row.key} ({row.event or 'event?'}, {row.external_id or 'no referral code'}): {error_summary(row.error)}"
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

    summary = Alert(event="delivery_failed", what=f"{count} webhook delivery(ies) failed and were not processed since", more=more("status"))
    return Condition("deliveries.failed", "open" if count else None, summary, items, news)


# -- overdue jobs --------------------------------------------------------------------------------
def job_applies(job: str, config: "Config") -> bool:
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


def overdue_state(job: str, ledger: "Ledger", config: "Config", now: datetime) -> Overdue | None:
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


def overdue(job: str, ledger: "Ledger", config: "Config", now: datetime, more: More) -> Condition | None:
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
            what=f"`{command}` has not succeeded for {describe_duration(age)} (it runs every {describe_duration(state.interval)}; "
            f"overdue after {describe_duration(state.limit)})",
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
    """stsync stopped calling Referral Factory until ``until`` (every process of the connection).

    Kept as JSON in the ledger's kv under ``COOLDOWN_KEY``:
    ``{"until": ISO-8601 UTC, "reason": str, "since": ISO-8601 UTC, "episodes": int}``.
    """

    until: str
    reason: str
    since: str | None = None
    episodes: int | None = None

    def active(self, now: datetime) -> bool:
        until = parse_time(self.until)
        return until is not None and until > now

    def to_dict(self) -> dict[str, Any]:
        return {"until": self.until, "reason": self.reason, "since": self.since, "episodes": self.episodes}


def read_cooldown(ledger: "Ledger") -> Cooldown | None:
    """The recorded cool-down (active or not), or None."""
    try:
        data = json.loads(ledger.get(COOLDOWN_KEY) or "null")
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("until"), str):
        return None
    episodes = data.get("episodes")
    return Cooldown(
        until=data["until"],
        reason=str(data.get("reason") or "rate limited"),
        since=data.get("since") if isinstance(data.get("since"), str) else None,
        episodes=episodes if isinstance(episodes, int) else None,
    )


def record_cooldown(ledger: "Ledger", *, until: datetime, reason: str, episodes: int | None = None, now: datetime | None = None) -> Cooldown:
    """Record that every process of the connection stops calling Referral Factory until ``until``."""
    now = now or datetime.now(timezone.utc)
    cooldown = Cooldown(until=iso(until), reason=reason, since=iso(now), episodes=episodes)
    ledger.put(COOLDOWN_KEY, json.dumps(cooldown.to_dict()))
    return cooldown


def cooldown(ledger: "Ledger", now: datetime, more: More) -> Condition:
    current = read_cooldown(ledger)
    if current is None or not current.active(now):
        return Condition("referral_factory.cooldown", None)
    until = parse_time(current.until) or now
    return Condition(
        "referral_factory.cooldown",
        f"until:{current.until}",
        Alert(
            event="rf_cooldown",
            what=f"Referral Factory rate-limited stsync: every run of this connection waits until {current.until} "
            f"(in {describe_duration((until - now).total_seconds())}) before calling it again ({current.reason})",
            hint="nothing to do unless it repeats: then lower [limits] referral_factory_per_minute, or find what else uses the API key",
            more=more("status"),
            details=current.to_dict(),
        ),
    )


def in_future(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


__all__ = [
    "ALERTED_EXIT_CODES",
    "BLOCKED_KEY",
    "COOLDOWN_KEY",
    "Condition",
    "Cooldown",
    "Overdue",
    "SCHEDULED_COMMANDS",
    "cooldown",
    "failed_deliveries",
    "failed_records",
    "iso",
    "job_applies",
    "job_exit",
    "note_job_for_ip_block",
    "read_ip_block",
    "overdue",
    "overdue_state",
    "parse_time",
    "read_cooldown",
    "record_cooldown",
    "rf_block",
]
