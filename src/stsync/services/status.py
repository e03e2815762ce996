"""`stsync status`: is it working? One look at the local state — no request is sent.

Per job (push, qualify, sync; serve and run): the last run, its outcome, exit code and age;
the last success; whether it is running now (its lock) and whether it is **overdue** — no
success for more than ``[schedule] overdue_after`` × its interval (``notify.conditions``
decides, the same rule the overdue alert uses). Then the records that failed for good and
are not fixed (pushes, customers, qualifications, webhook deliveries: counts and the newest),
the Referral Factory cool-down (after an IP block or 429s), the cached ServiceTitan token's expiry (read from
the token cache: a valid one proves the credentials worked within its lifetime), and the
webhook queue: deliveries accepted and not processed yet.

``healthy`` is False, and ``attention`` says why, when a person should look: the config
cannot be read; a scheduled job never ran, last failed with exit 1, 3 or 4, or is overdue; a
record failed for good; Referral Factory's cool-down is in force (an IP block, or 429s); deliveries wait
with no receiver running, or for more than ``STUCK_DELIVERY_SECONDS``. The CLI exits 0 when
healthy, 1 otherwise (for monitoring); ``services.metrics`` turns the same report into
Prometheus figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.durations import describe_duration
from stsync.errors import StsyncError, error_summary
from stsync.notify.conditions import (
    SCHEDULED_COMMANDS,
    iso,
    job_applies,
    overdue_state,
    parse_time,
    read_cooldown,
)
from stsync.servicetitan.auth import cached_token_expiry
from stsync.storage.config import resolve_endpoints
from stsync.storage.ledger import Ledger
from stsync.storage.locks import holder, pid_alive
from stsync.storage.states import RunJob, RunOutcome

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.ledger import RunRecord
    from stsync.storage.paths import ConnectionPaths

SCHEDULED_JOBS = (RunJob.PUSH, RunJob.QUALIFY, RunJob.SYNC)
SERVICE_JOBS = (RunJob.SERVE, RunJob.RUN)
FAILING_EXIT_CODES = (1, 3, 4)
STUCK_DELIVERY_SECONDS = 15 * 60
NEWEST_SHOWN = 3


@dataclass
class JobStatus:
    job: str
    command: str | None
    state: str  # ok | overdue | failing | never | running | stopped | off | idle
    interval_seconds: float | None = None
    last_run: dict[str, Any] | None = None
    last_success: dict[str, Any] | None = None
    running: dict[str, Any] | None = None
    overdue: bool = False
    attention: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StatusReport:
    connection: str
    config_path: str
    state_dir: str
    generated_at: str
    config_error: str | None = None
    jobs: list[JobStatus] = field(default_factory=list)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    referral_factory: dict[str, Any] = field(default_factory=dict)
    token: dict[str, Any] = field(default_factory=dict)
    webhooks: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, float | None] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.attention

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def job(self, name: str) -> JobStatus:
        return next(job for job in self.jobs if job.job == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "config": self.config_path,
            "state_dir": self.state_dir,
            "generated_at": self.generated_at,
            "healthy": self.healthy,
            "attention": list(self.attention),
            "config_error": self.config_error,
            "jobs": {job.job: job.to_dict() for job in self.jobs},
            "failures": self.failures,
            "referral_factory": self.referral_factory,
            "token": self.token,
            "webhooks": self.webhooks,
            "schedule": self.schedule,
        }


def _age(moment: str | None, now: datetime) -> float | None:
    parsed = parse_time(moment)
    return max(0.0, (now - parsed).total_seconds()) if parsed else None


def _run_dict(run: RunRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "command": run.command,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "outcome": run.outcome,
        "exit_code": run.exit_code,
        "error": run.error,
        "age_seconds": _age(run.finished_at or run.started_at, now),
        "pid": run.pid,
    }


def connection_status(
    paths: ConnectionPaths,
    config: Config | None,
    *,
    config_error: StsyncError | None = None,
    now: datetime | None = None,
    ledger: Ledger | None = None,
) -> StatusReport:
    """The report for one connection. Never creates a ledger; sends nothing. ``ledger``: the
    caller's open one (serve's /metrics), used and left open."""
    now = now or datetime.now(UTC)
    report = StatusReport(
        connection=paths.name,
        config_path=str(paths.config),
        state_dir=str(paths.state),
        generated_at=iso(now),
        config_error=str(config_error) if config_error else None,
    )
    if config_error is not None:
        report.attention.append(f"the config cannot be read: {config_error}")
    own = ledger is None
    if own:
        ledger = Ledger.open(paths.ledger) if paths.ledger.exists() else None
    try:
        if config is not None:
            report.schedule = {job: config.schedule.interval(job) for job in SCHEDULED_JOBS}
        for job in SCHEDULED_JOBS:
            report.jobs.append(_scheduled_job(job, paths, ledger, config, now))
        for job in SERVICE_JOBS:
            report.jobs.append(_service_job(job, paths, ledger, now))
        report.attention.extend(job.attention for job in report.jobs if job.attention)
        _failures(report, ledger)
        _referral_factory(report, paths, now)
        _webhooks(report, ledger, now)
    finally:
        if own and ledger is not None:
            ledger.close()
    _token(report, paths, config, now)
    return report


def _scheduled_job(job: str, paths: ConnectionPaths, ledger: Ledger | None, config: Config | None, now: datetime) -> JobStatus:
    command = SCHEDULED_COMMANDS[RunJob(job)]
    interval = config.schedule.interval(job) if config is not None else None
    status = JobStatus(job=job, command=command, state="ok", interval_seconds=interval)
    last = ledger.last_run(job) if ledger is not None else None
    success = ledger.last_succeeded_run(job) if ledger is not None else None
    if last is not None:
        status.last_run = _run_dict(last, now)
    if success is not None:
        status.last_success = {
            "finished_at": success.finished_at,
            "age_seconds": _age(success.finished_at or success.started_at, now),
        }
    status.running = _holder(paths, job)
    if config is not None and not job_applies(job, config):
        status.state = "idle"  # nothing to do with this configuration
        return status
    if interval is None and config is not None:
        status.state = "off"
        return status
    if last is None:
        status.state = "never"
        if config is not None:
            every = describe_duration(interval or 0)
            status.attention = f"`{command}` has never run (it should every {every}): start `stsync run` or its cron line"
        return status
    if config is not None and ledger is not None:
        late = overdue_state(job, ledger, config, now)
        if late is not None and late.late:
            status.overdue = True
            status.state = "overdue"
            status.attention = (
                f"`{command}` has not succeeded for {describe_duration(late.age(now) or 0)} "
                f"(overdue after {describe_duration(late.limit)})"
            )
    if last.outcome in (RunOutcome.FAILED, RunOutcome.INTERRUPTED) and last.exit_code in FAILING_EXIT_CODES:
        status.state = "failing"
        status.attention = status.attention or f"the last `{command}` exited {last.exit_code}: {last.error or last.outcome}"
    if status.running and status.state == "ok":
        status.state = "running"
    return status


def _service_job(job: str, paths: ConnectionPaths, ledger: Ledger | None, now: datetime) -> JobStatus:
    """serve and run: running or not; only a start that failed needs a person."""
    command = "serve" if job == RunJob.SERVE else "run"
    status = JobStatus(job=job, command=command, state="stopped")
    last = ledger.last_run(job) if ledger is not None else None
    if last is not None:
        status.last_run = _run_dict(last, now)
    status.running = _holder(paths, job)
    if last is not None and last.outcome == RunOutcome.RUNNING and pid_alive(last.pid):
        status.running = status.running or {"pid": last.pid, "command": last.command, "started_at": last.started_at}
    if status.running:
        status.state = "running"
    elif last is None:
        status.state = "never"
    elif last.exit_code in FAILING_EXIT_CODES:
        status.state = "failing"
        status.attention = f"the last `stsync {last.command}` exited {last.exit_code}: {last.error or last.outcome}"
    return status


def _holder(paths: ConnectionPaths, job: str) -> dict[str, Any] | None:
    try:
        info = holder(paths, job)
    except OSError:
        return None
    if not info:
        return None
    return {"pid": info.get("pid"), "command": info.get("command"), "started_at": info.get("started_at")}


def _failures(report: StatusReport, ledger: Ledger | None) -> None:
    if ledger is None:
        report.failures = {kind: {"count": 0, "newest": []} for kind in ("pushes", "customers", "qualifications", "deliveries")}
        return
    pushes, push_rows = ledger.failed_pushes(limit=NEWEST_SHOWN)
    customers, customer_rows = ledger.failed_referrers(limit=NEWEST_SHOWN)
    qualifications, qualification_rows = ledger.failed_qualifications(limit=NEWEST_SHOWN)
    deliveries, delivery_rows = ledger.failed_deliveries(limit=NEWEST_SHOWN)
    report.failures = {
        "pushes": {
            "count": pushes,
            "newest": [
                {"external_id": a.external_id, "email": a.email, "at": a.finished_at, "error": error_summary(a.error)}
                for a in push_rows
            ],
        },
        "customers": {
            "count": customers,
            "newest": [
                {"customer_id": r.customer_id, "email": r.email, "at": r.updated_at, "error": error_summary(r.error)}
                for r in customer_rows
            ],
        },
        "qualifications": {
            "count": qualifications,
            "newest": [
                {"external_id": q.external_id, "action": q.action, "at": q.at, "error": error_summary(q.error)}
                for q in qualification_rows
            ],
        },
        "deliveries": {
            "count": deliveries,
            "newest": [
                {
                    "delivery": d.key,
                    "event": d.event,
                    "external_id": d.external_id,
                    "at": d.received_at,
                    "error": error_summary(d.error),
                }
                for d in delivery_rows
            ],
        },
    }
    total = pushes + customers + qualifications + deliveries
    if total:
        parts = [
            f"{n} {kind}"
            for kind, n in (
                ("push(es)", pushes),
                ("customer(s)", customers),
                ("qualification(s)", qualifications),
                ("webhook delivery(ies)", deliveries),
            )
            if n
        ]
        report.attention.append(
            f"records failed and are not fixed: {', '.join(parts)} (`stsync diagnose`, `stsync history --failed`)"
        )


def _referral_factory(report: StatusReport, paths: ConnectionPaths, now: datetime) -> None:
    """The shared cool-down (``stsync.ratelimit``): after an IP block or two 429 episodes."""
    current = read_cooldown(paths, now)
    report.referral_factory = {
        "cooldown": current.to_dict() if current is not None and current.reason else None,
        "blocked": bool(current and current.blocked),
        "episodes_last_hour": current.episodes_last_hour if current else 0,
        "rate_factor": current.rate_factor if current else 1.0,
    }
    if current is not None and current.active:
        why = "blocked this machine's IP address" if current.blocked else "rate-limited stsync (HTTP 429)"
        report.attention.append(f"Referral Factory {why}: no process of this connection calls it before {current.until}")


def _webhooks(report: StatusReport, ledger: Ledger | None, now: datetime) -> None:
    waiting, oldest = ledger.waiting_deliveries() if ledger is not None else (0, None)
    receiver = next((job for job in report.jobs if job.job in SERVICE_JOBS and job.state == "running"), None)
    age = _age(oldest, now)
    report.webhooks = {
        "waiting": waiting,
        "oldest": oldest,
        "oldest_age_seconds": age,
        "receiver_running": receiver is not None,
    }
    if waiting and receiver is None:
        report.attention.append(f"{waiting} webhook delivery(ies) wait with no `stsync serve` or `stsync run --webhooks` running")
    elif waiting and age is not None and age > STUCK_DELIVERY_SECONDS:
        report.attention.append(f"{waiting} webhook delivery(ies) wait; the oldest for {describe_duration(age)}")


def _token(report: StatusReport, paths: ConnectionPaths, config: Config | None, now: datetime) -> None:
    report.token = {"cached": False, "expires_at": None, "valid": False, "seconds_left": None}
    if config is None:
        return
    st = config.servicetitan
    if st.tenant_id is None or not st.client_id:
        return
    try:
        auth_url = resolve_endpoints(config).st_auth_url
    except StsyncError:
        return
    expires_at = cached_token_expiry(
        paths.token_cache, auth_url=auth_url, tenant_id=int(st.tenant_id), client_id=str(st.client_id)
    )
    if expires_at is None:
        return
    left = expires_at - now.timestamp()
    report.token = {
        "cached": True,
        "expires_at": iso(datetime.fromtimestamp(expires_at, UTC)),
        "valid": left > 0,
        "seconds_left": int(left) if left > 0 else 0,
    }
