"""What a check says.

A check function returns a ``Verdict`` (status, what it found, the fix, the exit-code class of a
failure); the runner names it and files it under its category from the table, giving a
``Check``. So a check's name and category are written once, in ``checks.table``.

A failure's ``exit_code`` is its SPEC §5 class: 3 configuration, 4 authentication, 6 temporary,
``None`` for any other FAIL (counted as 1). A failure raised by a live verification keeps its
error (``Verdict.error``, never serialized), so a command that stops at the first failure
(``connect``) raises exactly what the check reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stsync.errors import (
    AuthError,
    ConfigError,
    LockHeld,
    PartialFailure,
    StsyncError,
    TemporaryError,
    UsageError,
)

Status = Literal["pass", "warn", "fail"]
PASS: Status = "pass"
WARN: Status = "warn"
FAIL: Status = "fail"

# Categories group the table and say which part of the setup a check covers.
CONFIG = "config"
SECRETS = "secrets"
MAPPING = "mapping"
SERVICETITAN = "servicetitan"
REFERRAL_FACTORY = "referral_factory"
ACTIVITY = "activity"

_ERROR_FOR_EXIT_CODE: dict[int, type[StsyncError]] = {
    2: UsageError,
    3: ConfigError,
    4: AuthError,
    5: PartialFailure,
    6: TemporaryError,
    7: LockHeld,
}


@dataclass(frozen=True)
class Verdict:
    """A check's answer before the runner names it."""

    status: Status
    message: str
    fix: str | None = None
    exit_code: int | None = None
    error: StsyncError | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def ok(message: str) -> Verdict:
    return Verdict(PASS, message)


def warn(message: str, fix: str | None) -> Verdict:
    return Verdict(WARN, message, fix)


def fail(message: str, fix: str | None, exit_code: int | None = 3) -> Verdict:
    return Verdict(FAIL, message, fix, exit_code)


def fail_with(exc: StsyncError) -> Verdict:
    """A FAIL in an error's own words and class (auth 4, temporary 6, config 3, other 1)."""
    return Verdict(FAIL, str(exc), exc.hint, exc.exit_code, exc)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None
    category: str = CONFIG
    exit_code: int | None = None
    error: StsyncError | None = field(default=None, compare=False, repr=False)

    @classmethod
    def named(cls, name: str, category: str, verdict: Verdict) -> Check:
        return cls(name, verdict.status, verdict.message, verdict.fix, category, verdict.exit_code, verdict.error)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_error(self) -> StsyncError:
        """This failure as the error a command raises: the live verification's own error, or
        one of the failure's class carrying the check's words."""
        if self.error is not None:
            return self.error
        error_class = _ERROR_FOR_EXIT_CODE.get(self.exit_code or 1, StsyncError)
        return error_class(f"{self.name}: {self.message}", hint=self.fix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            "category": self.category,
            "exit_code": self.exit_code,
        }


def count_statuses(checks: list[Check]) -> dict[str, int]:
    """``{"pass": n, "warn": n, "fail": n}``: the counts a report shows."""
    counts: dict[str, int] = {PASS: 0, WARN: 0, FAIL: 0}
    for check in checks:
        counts[check.status] += 1
    return counts


@dataclass(frozen=True)
class NotRun:
    """A check that did not run, and why (a failed prerequisite, something missing, ``--offline``)."""

    name: str
    reason: str
    blocked_by: str | None = None  # the check that stopped it; None for --offline

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "blocked_by": self.blocked_by}
