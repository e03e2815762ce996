"""`stsync history`: the ledger's push attempts, newest first.

The attempts are the data (stdout): on a terminal a table that keeps every e-mail, External
Id and booking number whole at any width (``cli.tables``); in a pipe, TSV with a header
(``started_at email external_id outcome booking_id error``), one attempt per line, for
``grep``, ``cut -f`` and spreadsheets. ``-q`` does not hide them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.text import Text

from stsync.cli.context import AppContext
from stsync.cli.help import SUPPORT, examples
from stsync.cli.tables import Column, Role
from stsync.errors import error_summary
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome

if TYPE_CHECKING:
    from stsync.storage.ledger import AttemptRecord

OUTCOME_STYLE: dict[str, str] = {
    AttemptOutcome.CREATED: "green",
    AttemptOutcome.ALREADY_BOOKED: "cyan",
    AttemptOutcome.SKIPPED: "yellow",
    AttemptOutcome.FAILED: "red",
    AttemptOutcome.LOST: "red",
    AttemptOutcome.INTENT: "magenta",
    AttemptOutcome.UNKNOWN: "magenta",
}
# An attempt whose answer was never recorded: a run in progress, or one that was killed.
# An answer lost, the booking not listed yet: the next run looks it up before creating it.
OUTCOME_LABEL: dict[str, str] = {
    AttemptOutcome.ALREADY_BOOKED: "already booked",
    AttemptOutcome.INTENT: "unfinished",
    AttemptOutcome.UNKNOWN: UNKNOWN_LABEL,
}


def register(app: typer.Typer) -> None:
    app.command(
        "history",
        help="The ledger's push attempts, newest first: booking ids and ServiceTitan's exact errors. "
        "On a terminal a table; in a pipe TSV with a header (started_at, email, external_id, outcome, booking_id, error).",
        epilog=examples(
            ("stsync history", "the last 50 attempts"),
            ("stsync history --failed", "only the attempts that failed, with ServiceTitan's words"),
            ("stsync history --email jo@example.com", "one lead's attempts"),
            ("stsync history | grep jo@example.com | cut -f1,4,5", "TSV in a pipe: when, outcome, booking"),
        ),
        rich_help_panel=SUPPORT,
    )(history_command)


def history_command(
    ctx: typer.Context,
    email: str | None = typer.Option(None, "--email", metavar="EMAIL", help="Only the attempts for this lead's e-mail."),
    failed: bool = typer.Option(False, "--failed", help="Only the attempts that failed."),
    limit: int = typer.Option(50, "--limit", metavar="N", help="At most this many attempts (newest first)."),
) -> None:
    from stsync.services.history import push_history

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    report = push_history(app_ctx.connection(), email=email, failed_only=failed, limit=limit)
    data = report.to_dict()
    del data["count"]  # counts.attempts says it
    app_ctx.result(counts={"attempts": len(report.entries)}, **data)

    if app_ctx.json_mode:
        pass  # the object is the data
    elif not term.data_to_terminal:
        term.tsv(list(TSV_HEADER), [_tsv_row(entry) for entry in report.entries])
    elif report.entries:
        term.table(list(COLUMNS), [_table_row(entry) for entry in report.entries], title="Push attempts")
    if not report.entries:
        which = " failed" if failed else ""
        whom = f" for {email}" if email else ""
        term.info(f"No{which} push attempts recorded{whom}.")
    if report.last_run is not None and not email:
        run = report.last_run
        counts = run.get("counts") or {}
        shown = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if k != "total" and n)
        term.info(
            f"Last push run #{run['id']} ({run.get('command') or 'push'}): {run.get('outcome')}, started "
            f"{_short_time(run.get('started_at'))}" + (f" — {shown}" if shown else "")
        )


# Identifiers stay whole; at a narrow width the error moves under the table first, as a
# numbered note (read whole there, not wrapped in a narrow column), then "When" goes.
COLUMNS = (
    Column("When (UTC)", Role.LABEL, drop_order=2),
    Column("E-mail", Role.ID),
    Column("External Id", Role.ID),
    Column("Outcome", Role.LABEL),
    Column("Booking", Role.ID),
    Column("Error", Role.TEXT, min_width=24, drop_order=1, note=True),
)
TSV_HEADER = ("started_at", "email", "external_id", "outcome", "booking_id", "error")


def _table_row(entry: AttemptRecord) -> list[Text]:
    style = OUTCOME_STYLE.get(entry.outcome, "")
    return [
        Text(_short_time(entry.started_at)),
        Text(entry.email or "—"),
        Text(entry.external_id or "—"),
        Text(OUTCOME_LABEL.get(entry.outcome, entry.outcome), style=style),
        Text(f"#{entry.booking_id}" if entry.booking_id is not None else ""),
        Text(error_summary(entry.error)),
    ]


def _tsv_row(entry: AttemptRecord) -> list[object]:
    return [entry.started_at, entry.email, entry.external_id, entry.outcome, entry.booking_id, error_summary(entry.error)]


def _short_time(stamp: str | None) -> str:
    """``2025-05-30T18:22:11.123456+00:00`` → ``2025-05-30 18:22:11``."""
    if not stamp:
        return "—"
    return stamp.replace("T", " ")[:19]
