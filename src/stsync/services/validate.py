"""``stsync validate``: is this connection set up right? Offline by default, live with ``online``.

Offline: the config's TOML syntax (line, column) and schema (key paths), the connection
settings, the leads action, the required fields of each section that creates bookings (the
seed's "Setup Required"), the qualification rule, the customer mapping and the return fields,
then the secrets (present, never shown). Online, only when the config, the connection settings
and the secrets hold (``online_skipped`` says why not): the ServiceTitan token, app key,
booking provider and return-field custom fields, the Referral Factory key and campaign. The
checks are the check engine's (``stsync.checks``), shared with diagnose and connect.

The exit code is ``checks.runner.exit_code_for`` as it is: the worst failure's class (SPEC §5),
4 when a credential or the booking provider is refused, else 3 for configuration and mapping,
else 6 when a remote could not be reached, else 1; warnings never fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync import connection
from stsync.checks import table
from stsync.checks.context import CheckContext, Consent, LiveAccess
from stsync.checks.result import Check, count_statuses
from stsync.checks.runner import CheckRun, exit_code_for

if TYPE_CHECKING:
    from stsync.storage.paths import ConnectionPaths


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)
    exit_code: int = 0
    online: bool = False
    config_path: str = ""
    online_skipped: str | None = None  # why the live checks did not run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def counts(self) -> dict[str, int]:
        return count_statuses(self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "online": self.online,
            "config_path": self.config_path,
            "counts": self.counts(),
            "online_skipped": self.online_skipped,
            "checks": [check.to_dict() for check in self.checks],
        }


def validate(config_path: Path, paths: ConnectionPaths, *, online: bool, consent: Consent | None = None) -> ValidationReport:
    """Run the offline checks and, with ``online``, the live ones when the basics hold.
    ``consent``: whom to ask before credentials go anywhere the config does not name."""
    report = ValidationReport(online=online, config_path=str(config_path))
    context = CheckContext(paths=paths, config_path=Path(config_path))
    run = CheckRun(context).run(table.VALIDATE_OFFLINE)
    if online:
        if context.config is None:
            report.online_skipped = "the config file is not valid"
        elif run.failed(table.CONNECTION_SETTINGS) or run.failed(table.SECRETS_PRESENT):
            report.online_skipped = "connection settings or secrets are missing"
        else:
            conn = connection.Connection.open(paths, context.config, retry_budget_seconds=connection.CHECK_RETRY_BUDGET_SECONDS)
            context.live = LiveAccess.of(conn, consent=consent)
            try:
                run.run(table.LIVE)
            finally:
                conn.close()
    report.checks = run.checks
    report.exit_code = exit_code_for(run.checks)
    return report
