"""``stsync validate``: is this connection set up right? Offline by default, live with ``online``.

Offline: the config's TOML syntax (line, column) and schema (key paths), the connection
settings, the secrets (present, never shown), the leads action, the required fields of each
section that creates bookings (the seed's "Setup Required"), the qualification rule, the
customer mapping and the return fields. Online, when the offline basics hold: the ServiceTitan
token, app key, booking provider and return-field custom fields, the Referral Factory key and
campaign.

The exit code is the worst failure's class (SPEC §5): 4 when a credential or the booking
provider is refused, else 3 for configuration and mapping, else 6 when a remote could not be
reached; warnings never fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stsync.services import checks as checks_module
from stsync.services.checks import FAIL, WARN, Check

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
        counts = {"pass": 0, "warn": 0, "fail": 0}
        for check in self.checks:
            counts[check.status] += 1
        return counts

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


def exit_code_for(checks: list[Check]) -> int:
    codes = {check.exit_code or 1 for check in checks if check.status == FAIL}
    for code in (4, 3, 6):
        if code in codes:
            return code
    return 1 if codes else 0


def validate(config_path: Path, paths: "ConnectionPaths", *, online: bool, connection=None) -> ValidationReport:
    """Run the checks. ``connection`` lets a caller that already holds one (the CLI) reuse it."""
    report = ValidationReport(online=online, config_path=str(config_path))
    loaded, config = checks_module.load_config_check(config_path)
    report.checks.append(loaded)
    if config is None:
        report.checks.append(checks_module.check_secrets_present(paths))
        report.online_skipped = "the config file is not valid" if online else None
        report.exit_code = exit_code_for(report.checks)
        return report
    report.checks.extend(checks_module.offline_checks(config))
    secrets = checks_module.check_secrets_present(paths)
    report.checks.append(secrets)
    if online:
        identity = next(c for c in report.checks if c.name == "Connection settings")
        if identity.status == FAIL or secrets.status == FAIL:
            report.online_skipped = "connection settings or secrets are missing"
        else:
            report.checks.extend(_online(paths, config, connection))
    report.exit_code = exit_code_for(report.checks)
    return report


def _online(paths: "ConnectionPaths", config, connection) -> list[Check]:
    from stsync.connection import CHECK_RETRY_BUDGET_SECONDS, Connection

    own = connection is None
    conn = connection if connection is not None else Connection.open(
        paths, config, retry_budget_seconds=CHECK_RETRY_BUDGET_SECONDS
    )
    try:
        return checks_module.online_checks(conn)
    finally:
        if own:
            conn.close()


__all__ = ["ValidationReport", "validate", "exit_code_for", "WARN"]
