"""`stsync history`: the ledger's push attempts, newest first."""

from __future__ import annotations

import typer

from stsync.cli.context import AppContext
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome

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
    app.command("history", help="The ledger's push attempts, newest first: booking ids and ServiceTitan's exact errors.")(
        history_command
    )


def history_command(
    ctx: typer.Context,
    email: str | None = typer.Option(None, "--email", help="Only the attempts for this lead's e-mail."),
    failed: bool = typer.Option(False, "--failed", help="Only the attempts that failed."),
    limit: int = typer.Option(50, "--limit", help="At most this many attempts (newest first)."),
) -> None:
    from rich.markup import escape

    from stsync.errors import error_summary
    from stsync.services.history import push_history

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    report = push_history(app_ctx.connection(), email=email, failed_only=failed, limit=limit)

    if not report.entries:
        which = " failed" if failed else ""
        whom = f" for {email}" if email else ""
        term.info(f"No{which} push attempts recorded{whom}.")
    else:
        table = term.table("When (UTC)", "E-mail", "External ID", "Outcome", "Booking", "Error", title="Push attempts")
        for entry in report.entries:
            style = OUTCOME_STYLE.get(entry.outcome, "")
            label = OUTCOME_LABEL.get(entry.outcome, entry.outcome)
            table.add_row(
                escape(_short_time(entry.started_at)),
                escape(entry.email or "—"),
                escape(entry.external_id or "—"),
                f"[{style}]{escape(label)}[/]" if style else escape(label),
                f"#{entry.booking_id}" if entry.booking_id is not None else "",
                escape(error_summary(entry.error)),
            )
        term.print(table)
    if report.last_run is not None and not email:
        run = report.last_run
        counts = run.get("counts") or {}
        shown = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if k != "total" and n)
        term.info(
            f"Last push run #{run['id']} ({run.get('command') or 'push'}): {run.get('outcome')}, started "
            f"{_short_time(run.get('started_at'))}" + (f" — {shown}" if shown else "")
        )
    app_ctx.emit({"ok": True, **report.to_dict()})


def _short_time(stamp: str | None) -> str:
    """``2025-05-30T18:22:11.123456+00:00`` → ``2025-05-30 18:22:11``."""
    if not stamp:
        return "—"
    return stamp.replace("T", " ")[:19]
