"""``stsync diagnose``: the troubleshooting guide as checks that run themselves, and one
referral's whole story.

Support always asks for two things: the specific error message, and the e-mail of the referral
that failed to book. Diagnose answers both, next to every check of the guide:

- **offline** (config and ledger only): the config file; the secret store in use (the keyring
  backend, and the headless remedies when it cannot be used); every secret present; the
  connection settings; the Leads action ("Nothing to action" is a FAIL here); the required
  fields (the seed's "Setup Required"); the qualification rule; the customer mapping and the
  return fields; the ledger; who holds a run lock; the last push, sync and qualify runs; and
  the pushes that failed and were never booked since, each with the lead's e-mail and
  ServiceTitan's exact words.
- **online** (skipped with ``offline``): the ServiceTitan token (a bad Client ID / Secret and
  credentials of the other environment told apart), the app key and tenant, the Booking
  Provider Value, the return-field custom fields (exist, Text), the Referral Factory key and
  the campaign (exists, launched).

The checks, their order and prerequisites are the check engine's (``stsync.checks``): a check
whose prerequisite failed is not run — its answer would only repeat the first failure —
and ``DiagnoseReport.not_run`` says which and why.

Exit code (``checks.runner.exit_code_for`` with ``class_only_if_blocking``): 0 when nothing
FAILs (warnings allowed), 1 when something does, and 3 or 4 when every failure is of that class
(configuration / authentication) and it stopped other checks from running — "fix your setup"
or "reconnect" before anything else can be said.

``email``: the referral's story (``services.referral_story``), told with the live clients whose
key checks passed. Nothing here prints; no secret value is ever put in a check, a story or the
report (only where each secret comes from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync import connection
from stsync.checks import table
from stsync.checks.activity import PushFailure
from stsync.checks.context import CheckContext, Consent, LiveAccess
from stsync.checks.result import FAIL, WARN, Check, NotRun, count_statuses
from stsync.checks.runner import CheckRun, exit_code_for
from stsync.logs import get_logger
from stsync.services.referral_story import ReferralStory, referral_story

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

RECONNECT_HINT = (
    "Authentication failed: fix the credential named above and reconnect with `stsync connect` "
    "(it verifies the new values live before storing them)."
)
SUPPORT_HINT = (
    "Fix each FAIL as its fix says. If the issue persists, attach the bundle "
    "(`stsync diagnose --bundle support` writes support.md and support.json, secrets removed) to a support "
    "request, with a screen recording of the problem and the e-mail of a referral that failed to book."
)


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
    recent_failures: list[PushFailure] = field(default_factory=list)
    # The loaded config, for the support bundle (it holds no secret). Not part of to_dict().
    config: Config | None = None

    def counts(self) -> dict[str, int]:
        return count_statuses(self.checks)

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
            "recent_failures": [failure.to_dict() for failure in self.recent_failures],
            "secrets": self.secret_sources,
            "story": self.story.to_dict() if self.story is not None else None,
            "hint": self.hint,
        }


def diagnose(
    paths: ConnectionPaths,
    config_path: Path | None = None,
    *,
    offline: bool,
    email: str | None = None,
    consent: Consent | None = None,
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
    context = CheckContext(paths=paths, config_path=config_path, nothing_to_action=FAIL)
    run = CheckRun(context)
    conn: connection.Connection | None = None
    try:
        run.run(table.DIAGNOSE_OFFLINE)
        if offline:
            run.skip(table.LIVE, "--offline")
        else:
            if context.config is not None:
                conn = connection.Connection.open(
                    paths, context.config, retry_budget_seconds=connection.CHECK_RETRY_BUDGET_SECONDS
                )
                context.live = LiveAccess.of(conn, consent=consent)
            run.run(table.LIVE)
        run.run(table.DIAGNOSE_RUNS)  # after the live checks: a failed run's cause is re-checked by them
        if email is not None:
            report.story = referral_story(
                email,
                config=context.config,
                ledger=context.ledger,
                servicetitan=conn.servicetitan if conn is not None and run.passed(table.ST_APP_KEY) else None,
                referral_factory=conn.referral_factory if conn is not None and run.passed(table.RF_KEY) else None,
                offline=offline,
            )
    finally:
        if conn is not None:
            conn.close()
        context.close()

    report.checks = run.checks
    report.not_run = run.not_run
    report.config = context.config
    report.secret_sources = context.secrets_described
    report.recent_failures = context.recent_failures
    report.exit_code = exit_code_for(run.checks, run.not_run, class_only_if_blocking=True)
    report.hint = closing_hint(report)
    log.info(
        "diagnose %s: %s (exit %d)",
        paths.name,
        ", ".join(f"{n} {s}" for s, n in report.counts().items()),
        report.exit_code,
    )
    return report


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


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
