"""The alert state machine: conditions in, at most one message out, state in the ledger's kv.

For each condition (``notify.conditions``), against what was last said about it (kv key
``notify.state``, one JSON document shared by every process of the connection):

- its state became None → forgotten, silently (0, 6 and 7 never speak);
- its state changed (to a problem, or from one problem to another) → said now;
- a record set gained keys → the new records said now (the set is remembered as it is now, so
  a record that keeps failing is said once, and again only if it was fixed and failed anew);
- same state as last said, ``remind_after`` (24 h) later → a reminder; a remembered problem
  whose condition was not looked at this time (a job that has not run since) is reminded too.

Everything said in one look goes out as one message. One look at a time per connection (a
lock file beside the run locks, so cron runs that end together never both send); the state is
saved only after the message went out (or when nothing needed sending), so a message the
receiver did not take is tried again at the next look.

``now`` is injectable (tests move the clock instead of waiting a day).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from stsync.logs import get_logger
from stsync.notify import conditions as cond
from stsync.notify.message import Alert, Origin, payload
from stsync.notify.send import Notifier
from stsync.storage.paths import PRIVATE_FILE, make_private_dir
from stsync.storage.states import RunJob

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.ledger import Ledger
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

STATE_KEY = "notify.state"
STATE_VERSION = 1


@dataclass
class JobResult:
    """How one run command ended, for the conditions that read it."""

    job: str
    command: str
    exit_code: int
    error: dict[str, Any] | None = None


@dataclass
class Look:
    """What one look decided: the alerts it said (or would have) and whether they went out."""

    alerts: list[Alert] = field(default_factory=list)
    sent: bool = False
    body: dict[str, Any] | None = None


def origin_for(paths: ConnectionPaths) -> Origin:
    return Origin(connection=paths.name, host=socket.gethostname(), config=str(paths.config))


def more_for(paths: ConnectionPaths, *, default_config: bool) -> cond.More:
    """ "history --failed" → the command to type, with this connection's --config when needed."""
    prefix = "stsync" if default_config else f"stsync --config {paths.config}"
    return lambda args: f"{prefix} {args}"


class Watch:
    def __init__(
        self,
        paths: ConnectionPaths,
        ledger: Ledger,
        config: Config | None,
        notifier: Notifier,
        *,
        more: cond.More | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        self.paths = paths
        self.ledger = ledger
        self.config = config
        self.notifier = notifier
        self.more = more or more_for(paths, default_config=False)
        self.remind_after = float(getattr(getattr(config, "notify", None), "remind_after", 86400.0))
        self.lock_timeout = lock_timeout if lock_timeout is not None else notifier.timeout * 3 + 5

    # -- the conditions ---------------------------------------------------------------------
    def conditions(self, now: datetime, job_result: JobResult | None = None) -> list[cond.Condition]:
        found: list[cond.Condition | None] = []
        if job_result is not None:
            found.append(cond.job_exit(job_result.job, job_result.command, job_result.exit_code, job_result.error, self.more))
        found.append(cond.failed_records(self.ledger, self.more))
        found.append(cond.failed_deliveries(self.ledger, self.more))
        if self.config is not None:
            for job in (RunJob.PUSH, RunJob.QUALIFY, RunJob.SYNC):
                found.append(cond.overdue(job, self.ledger, self.config, now, self.more))
        found.append(cond.cooldown(self.paths, now, self.more))
        return [c for c in found if c is not None]

    # -- one look ---------------------------------------------------------------------------
    def look(self, *, now: datetime | None = None, job_result: JobResult | None = None) -> Look:
        """Evaluate, send what changed (one message), save. Never raises."""
        if not self.notifier.sends_messages:
            return Look()
        now = now or datetime.now(UTC)
        try:
            make_private_dir(self.paths.locks)
            lock = FileLock(self.paths.locks / "notify.lock", thread_local=False, mode=PRIVATE_FILE)
            with lock.acquire(timeout=self.lock_timeout):
                return self._look(now, job_result)
        except Timeout:
            log.warning("notify: another stsync process kept the alert state busy; this look is skipped")
        except Exception:  # alerts must never break the job they watch
            log.exception("notify: could not evaluate the alerts")
        return Look()

    def _look(self, now: datetime, job_result: JobResult | None) -> Look:
        state = self._load()
        remembered: dict[str, dict[str, Any]] = state["conditions"]
        alerts: list[Alert] = []
        updated = dict(remembered)
        looked_at: set[str] = set()
        for condition in self.conditions(now, job_result):
            looked_at.add(condition.key)
            before = remembered.get(condition.key)
            after, said = self._decide(condition, before, now)
            alerts.extend(said)
            if after is None:
                updated.pop(condition.key, None)
            else:
                updated[condition.key] = after
        # A problem remembered but not looked at this time (e.g. the exit state of a job that
        # has not run since): reminded all the same.
        for key, entry in remembered.items():
            if key in looked_at or not entry.get("state"):
                continue
            if self._reminder_due(entry, now) and entry.get("alert"):
                alerts.append(Alert(**entry["alert"]).as_reminder(entry.get("since")))
                updated[key] = {**entry, "notified_at": cond.iso(now)}
        look = Look(alerts=alerts)
        if alerts:
            look.body = payload(origin_for(self.paths), alerts, at=cond.iso(now))
            look.sent = self.notifier.send(look.body)
            if not look.sent:
                return look  # state unchanged: the next look says it again
        if updated != remembered:
            self._save({"version": STATE_VERSION, "conditions": updated})
        return look

    def _decide(
        self, condition: cond.Condition, before: dict[str, Any] | None, now: datetime
    ) -> tuple[dict[str, Any] | None, list[Alert]]:
        if condition.state is None:
            return None, []
        keys = sorted(condition.items) if condition.items is not None else None
        stamp = cond.iso(now)
        entry: dict[str, Any] = {
            "state": condition.state,
            "since": stamp,
            "notified_at": stamp,
            "alert": condition.alert.to_dict() if condition.alert else None,
        }
        if keys is not None:
            entry["keys"] = keys
        if before is None or before.get("state") != condition.state:
            if keys is not None and condition.news is not None:
                # A record set that just opened: its records are the news.
                return entry, [condition.news(keys)]
            return entry, [condition.alert] if condition.alert else []
        entry["since"] = before.get("since") or stamp
        entry["notified_at"] = before.get("notified_at") or stamp
        said: list[Alert] = []
        if keys is not None and condition.news is not None:
            new_keys = [key for key in keys if key not in set(before.get("keys") or [])]
            if new_keys:
                said.append(condition.news(new_keys))
                entry["notified_at"] = stamp
        if not said and self._reminder_due(entry, now) and condition.alert is not None:
            said.append(condition.alert.as_reminder(entry["since"]))
            entry["notified_at"] = stamp
        return entry, said

    def _reminder_due(self, entry: dict[str, Any], now: datetime) -> bool:
        notified = cond.parse_time(entry.get("notified_at"))
        return notified is None or now - notified >= timedelta(seconds=self.remind_after)

    # -- the state in kv ----------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.ledger.get(STATE_KEY) or "null")
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("conditions"), dict):
            return {"version": STATE_VERSION, "conditions": {}}
        return data

    def _save(self, state: dict[str, Any]) -> None:
        self.ledger.put(STATE_KEY, json.dumps(state, sort_keys=True))
