"""How ``validate`` and ``diagnose`` show their checks: one table shape, one failure shape.

A check is a row of three columns — Status, Check, Result — with its fix under the result
("→ …") when it did not pass: a PASS row spends no width on an empty Fix column, and the
result wraps at words at any width (``cli.tables``). A FAIL is one of the ``--json`` object's
``failures`` (key: the check's name), and the command's error names every failed check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.text import Text

from stsync.cli.envelope import failure
from stsync.cli.tables import Column, Role
from stsync.errors import CommandFailed

if TYPE_CHECKING:
    from stsync.checks.result import Check

STATUS_LABEL = {"pass": ("PASS", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "bold red")}

RESULT_MIN_WIDTH = 28
# What Status and Check take at least, with the gaps: the rest is the result's.
CHECK_MIN_WIDTH = 20
OTHER_COLUMNS_WIDTH = len("Status") + CHECK_MIN_WIDTH + 2 * 2


def check_columns(checks: Iterable[Check], width: int) -> list[Column]:
    """Status, Check, Result — the result as wide as the longest fix command shown, when the
    width allows: a command on one line can be copied."""
    room = width - OTHER_COLUMNS_WIDTH
    commands = [
        len(_fix_line(check.fix))
        for check in checks
        if check.fix and check.status != "pass" and check.fix.startswith("stsync ") and len(_fix_line(check.fix)) <= room
    ]
    return [
        Column("Status", Role.LABEL),
        Column("Check", Role.TEXT, min_width=CHECK_MIN_WIDTH),
        Column("Result", Role.TEXT, min_width=max([RESULT_MIN_WIDTH, *commands])),
    ]


def _fix_line(fix: str) -> str:
    return "→ " + fix


def check_row(check: Check) -> list[Text]:
    label, style = STATUS_LABEL.get(check.status, (check.status.upper(), ""))
    result = Text(check.message)
    if check.fix and check.status != "pass":
        result.append("\n" + _fix_line(check.fix), style="dim")
    return [Text(label, style=style), Text(check.name), result]


def checks_failed(checks: Iterable[Check]) -> list[dict[str, Any]]:
    """Each FAILed check as one of the ``--json`` object's failures."""
    return [failure(check.name, check.message, error=check.as_error().to_dict()) for check in checks if check.failed]


def checks_failure(checks: Iterable[Check], *, exit_code: int, hint: str | None) -> CommandFailed:
    """The command's error when checks FAILed, with the exit code the report chose."""
    names = [check.name for check in checks if check.failed]
    return CommandFailed(f"{len(names)} check(s) failed: {', '.join(names)}", exit_code=exit_code, hint=hint)
