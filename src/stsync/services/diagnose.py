"""``stsync diagnose``: the troubleshooting guide as checks that run themselves, and one
referral's whole story.

Support always asks for two things: the specific error message, and the e-mail of the referral
that failed to book. Diagnose answers both, next to every check of the guide:

- **offline** (config and ledger only): the config file; the secret store in use (the keyring
  backend, and the headless remedies when it cannot be used); every secret present; the
  connection settings; the Leads action ("Nothing to action" is a FAIL here); the required
  fields (the seed's "Setup Required"); the qualification rule; the customer mapping and the
  return fields; who holds a run lock; the last push, sync and qualify runs; and the pushes
  that failed and were never booked since, each with the lead's e-mail and ServiceTitan's
  exact words.
- **online** (skipped with ``offline``): the ServiceTitan token (a bad Client ID / Secret and
  credentials of the other environment told apart), the app key and tenant, the Booking
  Provider Value, the return-field custom fields (exist, Text), the Referral Factory key and
  the campaign (exists, launched).

A live check whose prerequisite failed is not run: its answer would only repeat the first
failure. ``DiagnoseReport.not_run`` says which and why.

Exit code (SPEC §5): 0 when nothing FAILs (warnings allowed), 1 when something does, and 3 or
4 when every failure is of that class (configuration / authentication) and it stopped other
checks from running — "fix your setup" or "reconnect" before anything else can be said.

``email``: the referral's story from the ledger (every push attempt with its booking id or its
exact error, the booking's status and job, the qualification) and, online, from Referral
Factory (the user: type, referrer, qualified?) and ServiceTitan (the booking and its job as
they are now) — or "never seen", with what to check.

The checks themselves live in ``services/checks.py`` (shared with ``validate``); this module
adds the diagnose-only ones and the story. Nothing here prints; no secret value is ever put
in a check, a story or the report (only where each secret comes from).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync import credentials
from stsync.errors import ConfigError, SecretStoreUnavailable, StsyncError
from stsync.logs import get_logger
from stsync.services import checks as checks_module
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.services.checks import FAIL, PASS, WARN, Check
from stsync.storage.states import (
    BOOKED_OUTCOMES,
    AttemptOutcome,
    PushState,
    QualificationState,
    QualificationValue,
    RunJob,
    RunOutcome,
)
from stsync.vocabulary import Action, Environment, Kind, QualificationRule

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.storage.config import Config
    from stsync.storage.ledger import AttemptRecord, Ledger, PushRecord
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

# Diagnose's own categories (checks.py has config, secrets, mapping, servicetitan, referral_factory).
ACTIVITY = "activity"

# Other runs of push/sync/qualify are refused (exit 7) while one holds its lock: after this
# long a holder is probably stuck.
LONG_RUN_SECONDS = 6 * 3600
FAILURES_SHOWN = 10
FAILURES_SCANNED = 200

# The config checks (checks.py), named so a config that cannot be loaded lists them as not run.
CONFIG_CHECK_NAMES = (
    "Connection settings",
    "Leads: when lead joins campaign",
    "Leads: field mapping",
    "Referrers: field mapping",
    "Qualification rule",
    "Customers: field mapping",
    "Return fields",
)

JOBS = {
    RunJob.PUSH: ("push-lead", "Last push run"),
    RunJob.SYNC: ("sync-customers", "Last customer sync"),
    RunJob.QUALIFY: ("qualify", "Last qualify run"),
}
LOCKED_JOBS = tuple(RunJob)

RECONNECT_HINT = (
    "Authentication failed: fix the credential named above and reconnect with `stsync connect` "
    "(it verifies the new values live before storing them)."
)
SUPPORT_HINT = (
    "Fix each FAIL as its fix says. If the issue persists, attach the bundle "
    "(`stsync diagnose --bundle support` writes support.md and support.json, secrets removed) to a support "
    "request, with a screen recording of the problem and the e-mail of a referral that failed to book."
)


# == results ====================================================================================


@dataclass(frozen=True)
class NotRun:
    """A check that did not run, and why (a failed prerequisite, or ``--offline``)."""

    name: str
    reason: str
    blocked_by: str | None = None  # the failed check that stopped it; None for --offline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReferralStory:
    """Everything known about one e-mail: Referral Factory, the ledger, ServiceTitan."""

    email: str
    seen: bool = False
    referral_factory: dict[str, Any] | None = None  # the user: id, type, code, referrer, qualified...
    referral_factory_note: str | None = None  # not looked up (offline) or the lookup failed
    pushes: list[dict[str, Any]] = field(default_factory=list)  # one per externalId, attempts inside
    referrer_record: dict[str, Any] | None = None  # enrolled from a ServiceTitan customer (sync)
    summary: list[str] = field(default_factory=list)  # the story in plain sentences
    next_steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DiagnoseReport:
    connection: str
    config_path: str
    state_dir: str
    offline: bool
    generated_at: str
    checks: list[Check] = field(default_factory=list)
    not_run: list[NotRun] = field(default_factory=list)
    story: ReferralStory | None = None
    exit_code: int = 0
    hint: str = ""
    secret_sources: dict[str, Any] | None = None  # SecretStore.describe(): sources, never values
    recent_failures: list[dict[str, Any]] = field(default_factory=list)
    # The loaded config, for the support bundle (it holds no secret). Not part of to_dict().
    config: "Config | None" = None

    def counts(self) -> dict[str, int]:
        counts = {PASS: 0, WARN: 0, FAIL: 0}
        for check in self.checks:
            counts[check.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "connection": self.connection,
            "config_path": self.config_path,
            "state_dir": self.state_dir,
            "offline": self.offline,
            "generated_at": self.generated_at,
            "counts": self.counts(),
            "checks": [check.to_dict() for check in self.checks],
            "not_run": [item.to_dict() for item in self.not_run],
            "recent_failures": self.recent_failures,
            "secrets": self.secret_sources,
            "story": self.story.to_dict() if self.story is not None else None,
            "hint": self.hint,
        }


# == the use case ===============================================================================


def diagnose(
    paths: "ConnectionPaths",
    config_path: Path | None = None,
    *,
    offline: bool,
    email: str | None = None,
) -> DiagnoseReport:
    """Run every check (the live ones unless ``offline``) and, with ``email``, tell that story."""
    config_path = Path(config_path) if config_path is not None else paths.config
    report = DiagnoseReport(
        connection=paths.name,
        config_path=str(config_path),
        state_dir=str(paths.state),
        offline=offline,
        generated_at=_utc_now(),
    )
    loaded, config = checks_module.load_config_check(config_path)
    report.checks.append(loaded)
    report.config = config

    store_check, describe = check_secret_store(paths)
    report.secret_sources = describe
    report.checks.append(store_check)
    if store_check.failed:
        report.not_run.append(NotRun("Secrets", "the secret store cannot be read", store_check.name))
    else:
        report.checks.append(checks_module.check_secrets_present(paths))

    if config is not None:
        report.checks.append(checks_module.check_identity(config))
        report.checks.append(checks_module.check_leads_action(config, nothing_is=FAIL))
        report.checks.append(checks_module.check_required_fields(config, kind=Kind.LEAD))
        report.checks.append(checks_module.check_required_fields(config, kind=Kind.REFERRER))
        report.checks.append(checks_module.check_qualification_rule(config))
        report.checks.append(checks_module.check_customer_mapping(config))
        report.checks.append(checks_module.check_return_fields(config))
    else:
        for name in CONFIG_CHECK_NAMES:
            report.not_run.append(NotRun(name, "the config file could not be loaded", loaded.name))

    ledger = _open_ledger(paths, report)
    conn: Connection | None = None
    try:
        report.checks.extend(activity_checks(paths, ledger, report))
        if offline:
            report.not_run.extend(NotRun(name, "--offline") for name in ONLINE_CHECK_NAMES)
        elif config is None:
            report.not_run.extend(NotRun(name, "the config file could not be loaded", loaded.name) for name in ONLINE_CHECK_NAMES)
        else:
            conn = _diagnose_connection(paths, config)
            report.checks.extend(_online(conn, report))
        if email is not None:
            report.story = referral_story(email, config=config, ledger=ledger, conn=conn, offline=offline, report=report)
    finally:
        if conn is not None:
            conn.close()
        if ledger is not None:
            ledger.close()

    report.exit_code = exit_code_for(report.checks, report.not_run)
    report.hint = closing_hint(report)
    log.info(
        "diagnose %s: %s (exit %d)",
        paths.name,
        ", ".join(f"{n} {s}" for s, n in report.counts().items()),
        report.exit_code,
    )
    return report


def exit_code_for(checks: list[Check], not_run: list[NotRun]) -> int:
    """0: nothing FAILs. 3 / 4: every failure is of that class and it stopped other checks.
    Else 1 (SPEC §5: "3/4 where the failure is that class and nothing else ran")."""
    failed = [check for check in checks if check.failed]
    if not failed:
        return 0
    classes = {check.exit_code or 1 for check in failed}
    blocked = {item.blocked_by for item in not_run if item.blocked_by}
    if len(classes) == 1:
        (only,) = classes
        if only in (3, 4) and any(check.name in blocked for check in failed):
            return only
    return 1


def closing_hint(report: DiagnoseReport, *, bundle: Path | None = None) -> str:
    """Reconnect when authentication fails; otherwise the support route (naming the bundle
    when one is being written)."""
    failed = [check for check in report.checks if check.failed]
    if any(check.exit_code == 4 for check in failed):
        return RECONNECT_HINT
    if failed and bundle is not None:
        return (
            f"Fix each FAIL as its fix says. If the issue persists, attach {bundle} (secrets removed) to a support "
            "request, with a screen recording of the problem and the e-mail of a referral that failed to book."
        )
    if failed:
        return SUPPORT_HINT
    warnings = report.counts()[WARN]
    offline = " (offline: the live checks did not run)" if report.offline else ""
    if warnings:
        return f"No check fails{offline}; read the {warnings} warning(s) above."
    return f"Every check passes{offline}."


# == secret store ===============================================================================


def check_secret_store(paths: "ConnectionPaths") -> tuple[Check, dict[str, Any]]:
    """The secret store in use: which keyring backend, and where each secret comes from.

    FAIL when the keyring cannot be used and a secret is in neither the environment nor the
    file store: the headless box's three remedies. Never reads a value into the result.
    """
    from stsync.storage.secrets import SecretStore

    name = "Secret store"
    store = SecretStore(paths)
    try:
        described = store.describe()
    except ConfigError as exc:  # e.g. a damaged secrets file
        return Check(name, FAIL, str(exc), exc.hint, checks_module.SECRETS, exc.exit_code), {}
    sources = {secret: info.get("source") for secret, info in described["secrets"].items()}
    backend = described["backend"]
    where = ", ".join(f"{secret} ← {source or 'nowhere'}" for secret, source in sources.items())
    if not described["keyring_usable"]:
        unread = [secret for secret, source in sources.items() if source is None]
        problem = described.get("keyring_problem") or f"the OS keyring ({backend}) cannot be used"
        if unread:
            remedy = SecretStoreUnavailable(problem, locked=bool(described.get("keyring_locked")))
            return (
                Check(
                    name,
                    FAIL,
                    f"{problem}; {', '.join(unread)} cannot be read from it and are in neither the environment "
                    "nor the file store",
                    remedy.hint,
                    checks_module.SECRETS,
                    remedy.exit_code,
                ),
                described,
            )
        return (
            Check(
                name,
                PASS,
                f"the OS keyring cannot be used ({problem}), but every secret is found elsewhere: {where}",
                category=checks_module.SECRETS,
            ),
            described,
        )
    if described.get("file_exists") and described.get("file_mode") not in (None, oct(0o600)):
        return (
            Check(
                name,
                WARN,
                f"keyring backend {backend}; the secrets file {described['file']} has mode {described['file_mode']}: "
                "other users of this machine may read it",
                f"chmod 600 {described['file']}",
                checks_module.SECRETS,
            ),
            described,
        )
    return Check(name, PASS, f"keyring backend {backend}; {where}", category=checks_module.SECRETS), described


# == ledger and locks (offline) =================================================================


def _open_ledger(paths: "ConnectionPaths", report: DiagnoseReport) -> "Ledger | None":
    """The ledger when one exists; diagnose never creates one (nothing ran yet = no history)."""
    from stsync.storage.ledger import Ledger

    if not paths.ledger.exists():
        return None
    try:
        return Ledger.open(paths.ledger)
    except StsyncError as exc:
        report.checks.append(Check("Ledger", FAIL, str(exc), exc.hint, ACTIVITY, exc.exit_code))
        return None


def activity_checks(paths: "ConnectionPaths", ledger: "Ledger | None", report: DiagnoseReport) -> list[Check]:
    """Run locks, the last run of each job, and the pushes that failed and are still unbooked."""
    found = [check_run_locks(paths)]
    if ledger is None:
        if paths.ledger.exists():
            return found  # it exists but could not be opened: already a FAIL
        # No ledger yet: nothing ever ran. The same rows as usual, so scripts find them.
        found.extend(
            Check(name, PASS, f"`stsync {command}` has not run yet (no ledger yet)", category=ACTIVITY)
            for command, name in JOBS.values()
        )
        found.append(Check("Push failures", PASS, "nothing pushed yet", category=ACTIVITY))
        return found
    for job in JOBS:
        found.append(check_last_run(ledger, job))
    failures_check, failures = check_push_failures(ledger)
    report.recent_failures = failures
    found.append(failures_check)
    return found


def check_run_locks(paths: "ConnectionPaths", *, now: float | None = None) -> Check:
    """Who holds a job's lock now (another run of that job exits 7 meanwhile)."""
    from stsync.storage.locks import holder

    name = "Runs in progress"
    now = time.time() if now is None else now
    held: list[str] = []
    stuck: list[tuple[str, dict]] = []
    for job in LOCKED_JOBS:
        try:
            info = holder(paths, job)
        except OSError:
            info = None
        if not info:
            continue
        started = info.get("started_at")
        held.append(f"{job}: `{info.get('command')}` (pid {info.get('pid')}, since {started})")
        age = _age_seconds(started, now)
        if job != RunJob.SERVE and age is not None and age > LONG_RUN_SECONDS:
            stuck.append((job, info))
    if not held:
        return Check(name, PASS, "no stsync run holds a lock", category=ACTIVITY)
    if stuck:
        job, info = stuck[0]
        return Check(
            name,
            WARN,
            "; ".join(held) + f". The {job} run has held its lock for more than {LONG_RUN_SECONDS // 3600} hours: "
            "other runs of it exit 7 meanwhile",
            f"if it is stuck, stop it (kill {info.get('pid')}): the lock goes away with the process and the next run resumes",
            ACTIVITY,
        )
    return Check(name, PASS, "; ".join(held), category=ACTIVITY)


def check_last_run(ledger: "Ledger", job: str) -> Check:
    command, name = JOBS[job]
    run = ledger.last_run(job)
    if run is None:
        return Check(name, PASS, f"`stsync {command}` has not run yet", category=ACTIVITY)
    when = run.finished_at or run.started_at
    counts = _counts_text(run.counts)
    if run.outcome == RunOutcome.OK:
        return Check(name, PASS, f"ok at {when}{counts}", category=ACTIVITY)
    if run.outcome == RunOutcome.RUNNING:
        return Check(name, PASS, f"running since {run.started_at} (pid {run.pid}, `{run.command}`)", category=ACTIVITY)
    if run.outcome == RunOutcome.INTERRUPTED:
        return Check(
            name,
            WARN,
            f"`{run.command}` started {run.started_at} (pid {run.pid}) was interrupted before it finished{counts}",
            f"run `stsync {command}` again: it resumes where the ledger says it stopped",
            ACTIVITY,
        )
    error = f": {run.error}" if run.error else ""
    if run.outcome == RunOutcome.PARTIAL:
        return Check(
            name,
            WARN,
            f"partly failed at {when}{counts}{error}",
            "the failed records are listed by `stsync history --failed` (pushes) and below; fix them and run it again",
            ACTIVITY,
        )
    return Check(
        name,
        FAIL,
        f"failed at {when}{counts}{error}",
        f"fix the cause (the checks above say which), then run `stsync {command}` again",
        ACTIVITY,
    )


def check_push_failures(ledger: "Ledger") -> tuple[Check, list[dict[str, Any]]]:
    """Pushes that failed and were never booked since: the lead's e-mail and the exact error."""
    name = "Push failures"
    attempts = ledger.recent_failures(limit=FAILURES_SCANNED)
    latest: dict[str, AttemptRecord] = {}
    for attempt in attempts:  # newest first: keep each lead's latest failure
        latest.setdefault(attempt.external_id, attempt)
    unresolved: list[dict[str, Any]] = []
    resolved = 0
    for external_id, attempt in latest.items():
        push = ledger.get_push(external_id)
        if push is not None and push.state == PushState.BOOKED:
            resolved += 1
            continue
        unresolved.append(failure_dict(attempt, push))
    if not unresolved:
        earlier = f" ({resolved} earlier failure(s), each booked since)" if resolved else ""
        return Check(name, PASS, f"no unbooked push failure{earlier}", category=ACTIVITY), []
    shown = unresolved[:FAILURES_SHOWN]
    lines = [f"{item['email'] or '(no e-mail)'} ({item['external_id']}): {item['error_text']}" for item in shown]
    more = f"; and {len(unresolved) - len(shown)} more" if len(unresolved) > len(shown) else ""
    first = shown[0]
    message = f"{len(unresolved)} referral(s) failed to book — " + " | ".join(lines) + more
    fix = (
        "fix the cause ServiceTitan names, then push again: `stsync push-lead --new`, or one lead with "
        f"`stsync push-lead --code {first['external_id']}`; `stsync diagnose --email {first['email'] or '<e-mail>'}` "
        "tells one referral's whole story"
    )
    return Check(name, FAIL, message, fix, ACTIVITY), unresolved


def failure_dict(attempt: "AttemptRecord", push: "PushRecord | None") -> dict[str, Any]:
    from stsync.services.push import error_summary

    return {
        "email": attempt.email or (push.email if push else None),
        "external_id": attempt.external_id,
        "kind": push.kind if push else None,
        "at": attempt.finished_at or attempt.started_at,
        "outcome": attempt.outcome,
        "error_text": error_summary(attempt.error) or "no error recorded",
        "error": attempt.error,
    }


# == online =====================================================================================

ONLINE_CHECK_NAMES = (
    "ServiceTitan token",
    "ServiceTitan app key and tenant access",
    "Booking Provider Value",
    "Return fields in ServiceTitan",
    "Referral Factory API key",
    "Referral Factory campaign",
)


def _diagnose_connection(paths: "ConnectionPaths", config: "Config") -> "Connection":
    from stsync.connection import CHECK_RETRY_BUDGET_SECONDS, Connection

    return Connection.open(paths, config, retry_budget_seconds=CHECK_RETRY_BUDGET_SECONDS)


def _online(conn: "Connection", report: DiagnoseReport) -> list[Check]:
    """The live checks in debugging order; each one whose prerequisite failed is recorded as not run."""
    config = conn.config
    sources = {name: info.get("source") for name, info in ((report.secret_sources or {}).get("secrets") or {}).items()}
    found: list[Check] = []

    def skip(names: tuple[str, ...], reason: str, blocked_by: str | None) -> None:
        report.not_run.extend(NotRun(name, reason, blocked_by) for name in names)

    st_names = ONLINE_CHECK_NAMES[:4]
    st_missing = [key for key, value in (("servicetitan.tenant_id", config.servicetitan.tenant_id), ("servicetitan.client_id", config.servicetitan.client_id)) if value in (None, "")]
    st_secrets = [s.name for s in (credentials.ST_CLIENT_SECRET, credentials.ST_APP_KEY) if not sources.get(s.name)]
    # A missing secret was reported by "Secrets", or by "Secret store" when that one could not be read.
    secrets_check = "Secrets" if any(c.name == "Secrets" for c in report.checks) else "Secret store"
    if st_missing or st_secrets:
        skip(st_names, f"missing: {', '.join(st_missing + st_secrets)}", "Connection settings" if st_missing else secrets_check)
    else:
        token = check_servicetitan_token(conn)
        found.append(token)
        if token.failed:
            skip(st_names[1:], "the ServiceTitan token was refused", token.name)
        else:
            access = checks_module.check_servicetitan_app_key(conn)
            found.append(access)
            if access.failed:
                skip(st_names[2:], "ServiceTitan refused the app key or the tenant", access.name)
            else:
                if config.servicetitan.booking_provider is None:
                    skip(st_names[2:3], "missing: servicetitan.booking_provider", "Connection settings")
                else:
                    found.append(checks_module.check_booking_provider(conn))
                found.append(checks_module.check_return_field_types(conn))

    rf_names = ONLINE_CHECK_NAMES[4:]
    if not sources.get(credentials.RF_API_KEY.name):
        skip(rf_names, f"missing: {credentials.RF_API_KEY.name}", secrets_check)
    else:
        key = checks_module.check_referral_factory_key(conn)
        found.append(key)
        if key.failed:
            skip(rf_names[1:], "the Referral Factory key was refused", key.name)
        elif config.referral_factory.campaign_id is None:
            skip(rf_names[1:], "missing: referral_factory.campaign_id", "Connection settings")
        else:
            found.append(checks_module.check_campaign(conn))
    return found


def check_servicetitan_token(conn: "Connection") -> Check:
    """checks.check_servicetitan_token, told apart further: when ServiceTitan rejects the
    Client ID / Secret and the endpoints are the environment's own, the other environment is
    asked too — if it accepts them, the credentials were made for it (api/servicetitan.md §1:
    they are per environment)."""
    result = checks_module.check_servicetitan_token(conn)
    if not (result.failed and result.exit_code == 4 and "Client ID / Client Secret" in result.message):
        return result
    other = _other_environment_accepts(conn)
    if other is None:
        return result
    environment = conn.config.servicetitan.environment
    return Check(
        result.name,
        FAIL,
        f"ServiceTitan's {environment} environment rejects the Client ID / Client Secret, but the {other} "
        f"environment accepts them: they were made for {other}",
        f"set servicetitan.environment = \"{other}\": `stsync connect --environment {other}`",
        checks_module.SERVICETITAN,
        4,
    )


def _other_environment_accepts(conn: "Connection") -> str | None:
    """The other environment's name when its token endpoint accepts these credentials.

    Only when the auth URL is the configured environment's default (an override — config or
    STSYNC_ST_AUTH_URL — names one server on purpose). One POST, no retry, a short timeout.
    """
    import httpx

    from stsync.storage.config import INTEGRATION_ENDPOINTS, PRODUCTION_ENDPOINTS

    auth_url_for = {Environment.PRODUCTION: PRODUCTION_ENDPOINTS[0], Environment.INTEGRATION: INTEGRATION_ENDPOINTS[0]}
    environment = Environment(conn.config.servicetitan.environment)
    own, other_env, other = auth_url_for[environment], environment.other, auth_url_for[environment.other]
    if conn.endpoints.st_auth_url.rstrip("/") != own:
        return None
    try:
        secret = conn.secrets.get(credentials.ST_CLIENT_SECRET.name)
    except StsyncError:
        return None
    if not secret:
        return None
    try:
        with httpx.Client(timeout=10.0) as http:
            response = http.post(
                f"{other}/connect/token",
                data={"grant_type": "client_credentials", "client_id": str(conn.config.servicetitan.client_id), "client_secret": secret},
                headers={"Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        log.info("could not ask the %s token endpoint: %s", other_env, type(exc).__name__)
        return None
    try:
        accepted = response.is_success and bool(response.json().get("access_token"))
    except (ValueError, AttributeError):
        accepted = False
    return other_env if accepted else None


# == one referral's story =======================================================================


def referral_story(
    email: str,
    *,
    config: "Config | None",
    ledger: "Ledger | None",
    conn: "Connection | None",
    offline: bool = False,
    report: DiagnoseReport | None = None,
) -> ReferralStory:
    """What the ledger, Referral Factory and ServiceTitan know about ``email`` (case-insensitive)."""
    email = email.strip()
    story = ReferralStory(email=email)
    live_st = conn is not None and _check_passed(report, "ServiceTitan app key and tenant access")
    live_rf = conn is not None and _check_passed(report, "Referral Factory API key")

    # -- Referral Factory --------------------------------------------------------------
    user = None
    if offline:
        story.referral_factory_note = "not looked up (--offline)"
    elif conn is None or not live_rf or config is None or config.referral_factory.campaign_id is None:
        story.referral_factory_note = "not looked up: Referral Factory cannot be reached with this connection (see the checks)"
    else:
        try:
            user = conn.referral_factory.find_user_by_email(int(config.referral_factory.campaign_id), email)
        except StsyncError as exc:
            story.referral_factory_note = f"the lookup failed: {exc}"
        if user is not None:
            story.referral_factory = _user_dict(user)
            if user.referrer_id:
                try:
                    referrer = conn.referral_factory.get_user(int(user.referrer_id))
                    story.referral_factory["referrer"] = {
                        "id": referrer.id, "first_name": referrer.first_name, "email": referrer.email, "code": referrer.code,
                    }
                except StsyncError as exc:
                    story.referral_factory["referrer"] = {"id": user.referrer_id, "error": str(exc)}
        elif story.referral_factory_note is None:
            story.referral_factory_note = f"no user with this e-mail in campaign {config.referral_factory.campaign_id}"

    # -- the ledger --------------------------------------------------------------------
    pushes: list[PushRecord] = ledger.pushes_by_email(email) if ledger is not None else []
    codes = {push.external_id for push in pushes}
    stray = []
    if ledger is not None:
        # Attempts name the e-mail too: one recorded before its push row took another e-mail.
        stray = [a for a in ledger.push_attempts(email=email, limit=200) if a.external_id not in codes]
        for external_id in dict.fromkeys(a.external_id for a in stray):
            push = ledger.get_push(external_id)
            if push is not None:
                pushes.append(push)
                codes.add(external_id)
    for push in pushes:
        story.pushes.append(_push_story(push, ledger, conn if live_st else None, config))
    if ledger is not None:
        referrer = ledger.referrer_by_email(email)
        if referrer is not None:
            story.referrer_record = {
                "customer_id": referrer.customer_id, "rf_user_id": referrer.rf_user_id, "code": referrer.code,
                "state": referrer.state, "skip_reason": referrer.skip_reason, "error": referrer.error,
                "updated_at": referrer.updated_at,
            }

    # -- ServiceTitan, for a lead stsync never pushed: did something else book it? ------
    if not story.pushes and user is not None and user.code and live_st and config is not None:
        bp = config.servicetitan.booking_provider
        if bp is not None:
            try:
                found = conn.servicetitan.find_bookings_by_external_id(int(bp), user.code)  # type: ignore[union-attr]
            except StsyncError as exc:
                story.summary.append(f"ServiceTitan could not be searched for externalId {user.code}: {exc}")
            else:
                if found:
                    ids = ", ".join(str(b.id) for b in found)
                    story.summary.append(
                        f"ServiceTitan has booking(s) {ids} with externalId {user.code}, not made by stsync on this "
                        "connection (Referral Factory's own ServiceTitan integration?)"
                    )

    story.seen = bool(story.pushes or story.referral_factory or story.referrer_record)
    _tell(story, config, offline=offline)
    return story


def _check_passed(report: DiagnoseReport | None, name: str) -> bool:
    if report is None:
        return True
    return any(check.name == name and not check.failed for check in report.checks)


def _user_dict(user: Any) -> dict[str, Any]:
    kinds = {PERSON_INVITED: "referred lead", PERSON_REFERRING: "referrer"}
    return {
        "id": user.id,
        "campaign_id": user.campaign_id,
        "type": user.type,
        "type_label": kinds.get(user.type or "", user.type),
        "first_name": user.first_name,
        "email": user.email,
        "code": user.code,
        "url": user.url,
        "source": user.source,
        "signed_up_at": user.signed_up_at,
        "qualified": user.qualified,
        "qualified_at": user.qualified_at,
        "referrer_id": user.referrer_id,
        "referrer": None,
    }


def _push_story(push: "PushRecord", ledger: "Ledger | None", conn: "Connection | None", config: "Config | None") -> dict[str, Any]:
    from stsync.services.push import error_summary

    attempts = ledger.push_attempts(external_id=push.external_id, limit=100) if ledger is not None else []
    qualifications = ledger.qualifications_for(push.external_id) if ledger is not None else []
    entry: dict[str, Any] = {
        "external_id": push.external_id,
        "kind": push.kind,
        "email": push.email,
        "name": push.name,
        "rf_user_id": push.rf_user_id,
        "referral_code": push.referral_code,
        "state": push.state,
        "booking_id": push.booking_id,
        "booking_status": push.booking_status,
        "job_id": push.job_id,
        "job_status": push.job_status,
        "final": push.final,
        "qualification": push.qualification,
        "qualified_at": push.qualified_at,
        "first_seen": push.created_at,
        "attempts": [
            {
                "at": a.finished_at or a.started_at,
                "outcome": a.outcome,
                "booking_id": a.booking_id,
                "error_text": error_summary(a.error) if a.error else None,
                "error": a.error,
                "run_id": a.run_id,
            }
            for a in attempts
        ],
        "qualifications": [
            {"at": q.at, "action": q.action, "state": q.state, "rule": q.rule, "reason": q.reason,
             "error_text": error_summary(q.error) if q.error else None, "error": q.error}
            for q in qualifications
        ],
        "servicetitan": None,
        "servicetitan_note": None if conn is not None else "not looked up",
    }
    bp = config.servicetitan.booking_provider if config is not None else None
    if conn is None or bp is None:
        return entry
    try:
        if push.booking_id is not None:
            booking = conn.servicetitan.get_booking(int(bp), int(push.booking_id))
            bookings = [booking]
        else:
            bookings = conn.servicetitan.find_bookings_by_external_id(int(bp), push.external_id)
        if not bookings:
            entry["servicetitan_note"] = f"no booking with externalId {push.external_id} in ServiceTitan"
            return entry
        booking = min(bookings, key=lambda b: b.id)
        live: dict[str, Any] = {
            "booking_id": booking.id, "status": booking.status, "job_id": booking.job_id,
            "dismissing_reason_id": booking.dismissing_reason_id,
            "modified_on": booking.modified_on.isoformat() if booking.modified_on else None,
            "job": None,
        }
        if booking.job_id is not None:
            job = conn.servicetitan.get_job(int(booking.job_id))
            live["job"] = {
                "id": job.id, "number": job.job_number, "status": job.job_status,
                "completed_on": job.completed_on.isoformat() if job.completed_on else None,
            }
        entry["servicetitan"] = live
    except StsyncError as exc:
        entry["servicetitan_note"] = f"ServiceTitan could not be read: {exc}"
    return entry


def _tell(story: ReferralStory, config: "Config | None", *, offline: bool) -> None:
    """The story in sentences, and what to do next."""
    user = story.referral_factory
    if user is not None:
        qualified = f"qualified at {user['qualified_at']}" if user["qualified"] else "not qualified (Pending)"
        referrer = user.get("referrer") or {}
        by = ""
        if referrer.get("email") or referrer.get("first_name"):
            address = f"<{referrer.get('email') or '?'}>"
            by = ", referred by " + " ".join(filter(None, [referrer.get("first_name"), address]))
        elif user.get("referrer_id"):
            by = f", referred by user {user['referrer_id']}"
        story.summary.insert(
            0,
            f"Referral Factory: {user['type_label']} #{user['id']} (code {user['code']}), joined {user['signed_up_at']}"
            f"{by}; {qualified}.",
        )
    elif story.referral_factory_note:
        story.summary.insert(0, f"Referral Factory: {story.referral_factory_note}.")

    for push in story.pushes:
        story.summary.extend(_push_sentences(push, config))

    if story.referrer_record is not None:
        record = story.referrer_record
        story.summary.append(
            f"Customer sync: ServiceTitan customer {record['customer_id']} → referrer ({record['state']}"
            + (f": {record['skip_reason']}" if record.get("skip_reason") else "")
            + ")."
        )

    if not story.seen:
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
            story.next_steps.insert(0, "leads are set to Nothing to action: no lead is sent; `stsync map action leads create-booking`")
        return

    if user is not None and not story.pushes:
        kind = user.get("type")
        if kind == PERSON_REFERRING and config is not None and config.referrers.action != Action.CREATE_BOOKING:
            story.summary.append("stsync never pushed it: it is a referrer, and referrers are set to Nothing to action.")
            story.next_steps.append("to book referrers too: `stsync map action referrers create-booking`")
        else:
            story.summary.append("stsync never pushed this lead.")
            if config is not None and config.leads.action != Action.CREATE_BOOKING and kind == PERSON_INVITED:
                story.next_steps.append("leads are set to Nothing to action: `stsync map action leads create-booking`")
            story.next_steps.append(f"push it now: `stsync push-lead --code {user['code']}`")
            story.next_steps.append("check that `stsync push-lead --new` runs from cron (or `stsync serve` receives the webhooks)")
        return

    for push in story.pushes:
        last = push["attempts"][0] if push["attempts"] else None
        if push["state"] != PushState.BOOKED and last is not None and last["outcome"] in (AttemptOutcome.FAILED, AttemptOutcome.LOST):
            command = f"stsync push-lead --code {push['external_id']}" + (" --referrer" if push["kind"] == Kind.REFERRER else "")
            story.next_steps.append(f"fix what the error above says, then push it again: `{command}`")
        live = push.get("servicetitan") or {}
        if push["state"] == PushState.BOOKED and live and live.get("job") is None and live.get("status") != "Dismissed":
            rule = config.leads.qualification.rule if config is not None else QualificationRule.NONE
            if rule != QualificationRule.NONE:
                story.next_steps.append(
                    f"the booking {live['booking_id']} has no job yet: qualification waits until a CSR books a job from it"
                )


def _push_sentences(push: dict[str, Any], config: "Config | None") -> list[str]:
    sentences: list[str] = []
    what = Kind.LEAD if push["kind"] == Kind.LEAD else Kind.REFERRER
    sentences.append(
        f"Ledger: {what} pushed as externalId {push['external_id']} (first seen {push['first_seen']}); state {push['state']}"
        + (f", booking {push['booking_id']}" if push["booking_id"] else "")
        + "."
    )
    for attempt in reversed(push["attempts"]):  # oldest first reads as a story
        if attempt["outcome"] in BOOKED_OUTCOMES:
            text = f"booking {attempt['booking_id']} ({attempt['outcome'].replace('_', ' ')})"
        elif attempt["outcome"] == AttemptOutcome.INTENT:
            text = "sent, answer not recorded yet (a run in progress, or one that was killed)"
        elif attempt["error_text"]:
            text = f"{attempt['outcome']} — {attempt['error_text']}"
        else:
            text = attempt["outcome"]
        sentences.append(f"  attempt {attempt['at']}: {text}")
    live = push.get("servicetitan")
    if live:
        job = live.get("job")
        job_text = f"job {job['id']} is {job['status']}" if job else "no job yet"
        sentences.append(f"ServiceTitan now: booking {live['booking_id']} is {live['status']}; {job_text}.")
    elif push.get("servicetitan_note") and push["servicetitan_note"] != "not looked up":
        sentences.append(f"ServiceTitan: {push['servicetitan_note']}.")
    elif push["booking_status"] or push["job_id"]:
        job = f"job {push['job_id']} {push['job_status'] or ''}".strip() if push["job_id"] else "no job recorded"
        sentences.append(f"Last tracked: booking {push['booking_status'] or '?'}; {job}.")
    rule = config.leads.qualification if config is not None else None
    if push["qualification"] == QualificationValue.QUALIFIED:
        sentences.append(f"Qualified by stsync at {push['qualified_at']}.")
    elif push["qualification"] == QualificationValue.UNQUALIFIED:
        sentences.append(f"Unqualified by stsync at {push['qualified_at']}.")
    elif rule is not None and push["kind"] == Kind.LEAD:
        described = {
            QualificationRule.NONE: "the rule is Do not qualify",
            QualificationRule.JOB_CREATED: "qualifies when the booking becomes a job",
        }.get(
            rule.rule, f"qualifies when the job reaches {rule.job_status}"
        )
        sentences.append(f"Not qualified by stsync yet ({described}).")
    for item in push["qualifications"]:
        if item["state"] == QualificationState.FAILED:
            sentences.append(f"  {item['action']} failed at {item['at']}: {item['error_text']}")
    return sentences


# == helpers ====================================================================================


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age_seconds(started: Any, now: float) -> float | None:
    if not isinstance(started, str):
        return None
    try:
        moment = datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return now - moment.timestamp()


def _counts_text(counts: Any) -> str:
    if not isinstance(counts, dict) or not counts:
        return ""
    # Zeros say nothing ("failed 0, skipped 0, ..."): only what happened is shown.
    shown = ", ".join(f"{key} {value}" for key, value in counts.items() if not isinstance(value, (dict, list)) and value not in (0, None))
    return f" ({shown})" if shown else ""


__all__ = [
    "DiagnoseReport",
    "NotRun",
    "ReferralStory",
    "check_last_run",
    "check_push_failures",
    "check_run_locks",
    "check_secret_store",
    "closing_hint",
    "diagnose",
    "exit_code_for",
    "referral_story",
]
