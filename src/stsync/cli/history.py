"""`stsync history`: everything the ledger knows, newest first — pushes, qualifications,
customer sync outcomes, webhook deliveries — and `history --ack ID` for a failed record a
person has seen."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from stsync.cli.context import AppContext
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome
from stsync.vocabulary import HistoryKind

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.services.history import HistoryEntry, HistoryReport

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
KIND_TITLE = {
    HistoryKind.PUSH: "Push attempts",
    HistoryKind.QUALIFY: "Qualifications",
    HistoryKind.SYNC: "Customer sync",
    HistoryKind.WEBHOOK: "Webhook deliveries",
}
HELP = (
    "Everything the ledger knows, newest first, in one table: push attempts (booking ids and ServiceTitan's exact "
    "errors), qualifications, customer sync outcomes and webhook deliveries. --kind lists one kind with its own "
    "columns. A failed record you have seen can be acknowledged with --ack ID (the Id column): diagnose stops "
    "failing on it until it fails again."
)


def register(app: typer.Typer) -> None:
    app.command("history", help=HELP)(history_command)


def history_command(
    ctx: typer.Context,
    kind: list[HistoryKind] | None = typer.Option(
        None, "--kind", case_sensitive=False, help="Only this kind: push, qualify, sync or webhook (repeatable)."
    ),
    email: str | None = typer.Option(None, "--email", help="Only the records of this e-mail."),
    failed: bool = typer.Option(False, "--failed", help="Only the records that failed."),
    limit: int = typer.Option(50, "--limit", help="At most this many records (newest first)."),
    ack: str | None = typer.Option(
        None, "--ack", metavar="ID", help="Acknowledge this failed record (an id of the Id column: p12, q3, s20017, w4)."
    ),
    note: str | None = typer.Option(None, "--note", help="With --ack: why (kept with the acknowledgement)."),
) -> None:
    from stsync.errors import UsageError

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    if ack is not None:
        if kind or email or failed:
            raise UsageError("--ack takes only the id (and --note)", hint="e.g. stsync history --ack p12")
        _acknowledge(app_ctx, ack, note)
        return
    if note is not None:
        raise UsageError("--note goes with --ack", hint='e.g. stsync history --ack p12 --note "test record"')

    from stsync.services.history import history

    report = history(app_ctx.connection(), kinds=kind or tuple(HistoryKind), email=email, failed_only=failed, limit=limit)
    if not report.entries:
        which = " failed" if failed else ""
        what = " and ".join(KIND_TITLE[k].lower() for k in report.kinds) if kind else "records"
        whom = f" for {email}" if email else ""
        term.info(f"No{which} {what} recorded{whom}.")
    elif len(report.kinds) == 1:
        _render_kind(term, report.kinds[0], report.entries)
    else:
        _render_all(term, report)
    _render_last_runs(term, report)
    app_ctx.emit({"ok": True, **report.to_dict()})


def _acknowledge(app_ctx: AppContext, ident: str, note: str | None) -> None:
    from stsync.services.history import acknowledge

    result = acknowledge(app_ctx.connection(), ident, note=note)
    app_ctx.terminal.success(
        f"acknowledged {result.id}: {result.what} — `stsync diagnose` no longer fails on it (unless it fails again); "
        "it stays in `stsync history`, marked acknowledged"
    )
    app_ctx.emit({"ok": True, "acknowledged": result.to_dict()})


# == rendering ==================================================================================


def _outcome(entry: HistoryEntry) -> str:
    from rich.markup import escape

    label = OUTCOME_LABEL.get(entry.outcome, entry.outcome.replace("_", " "))
    style = OUTCOME_STYLE.get(entry.outcome, "red" if entry.failed else "")
    text = f"[{style}]{escape(label)}[/]" if style else escape(label)
    return text + (" [dim](acknowledged)[/]" if entry.acknowledged_at else "")


def _detail(entry: HistoryEntry) -> str:
    """What the kind says besides its outcome: the booking, the action's reason, the referrer,
    the event — or the error, which is what matters when there is one."""
    if entry.error:
        return entry.error_text
    details = entry.details
    if entry.kind == HistoryKind.PUSH:
        return f"booking #{details['booking_id']}" if details.get("booking_id") is not None else ""
    if entry.kind == HistoryKind.QUALIFY:
        return details.get("reason") or ""
    if entry.kind == HistoryKind.SYNC:
        if details.get("skip_reason"):
            return f"skipped: {str(details['skip_reason']).replace('_', ' ')}"
        referrer = f"referrer {details['code']}" if details.get("code") else ""
        written = len(details.get("return_fields") or {})
        return referrer + (f", {written} return field(s) written" if written else "")
    return details.get("event") or ""


def _render_all(term: Terminal, report: HistoryReport) -> None:
    from rich.markup import escape

    table = term.table("When (UTC)", "Kind", "Id", "E-mail", "Record", "Outcome", "Detail", title="History")
    for entry in report.entries:
        table.add_row(
            escape(_short_time(entry.at)), entry.kind.value, entry.id, escape(entry.email or "—"),
            escape(entry.key or "—"), _outcome(entry), escape(_detail(entry)),
        )  # fmt: skip
    term.print(table)


def _render_kind(term: Terminal, kind: HistoryKind, entries: list[HistoryEntry]) -> None:
    from rich.markup import escape

    if kind == HistoryKind.PUSH:
        table = term.table("When (UTC)", "Id", "E-mail", "External Id", "Outcome", "Booking", "Error", title=KIND_TITLE[kind])
        for entry in entries:
            booking = entry.details.get("booking_id")
            table.add_row(
                escape(_short_time(entry.at)), entry.id, escape(entry.email or "—"), escape(entry.key or "—"),
                _outcome(entry), f"#{booking}" if booking is not None else "", escape(entry.error_text),
            )  # fmt: skip
    elif kind == HistoryKind.QUALIFY:
        table = term.table(
            "When (UTC)", "Id", "E-mail", "External Id", "Action", "Result", "Reason / error", title=KIND_TITLE[kind]
        )
        for entry in entries:
            table.add_row(
                escape(_short_time(entry.at)), entry.id, escape(entry.email or "—"), escape(entry.key or "—"),
                escape(str(entry.details.get("action"))), _outcome_of_state(entry), escape(_detail(entry)),
            )  # fmt: skip
    elif kind == HistoryKind.SYNC:
        table = term.table("When (UTC)", "Id", "Customer", "E-mail", "Outcome", "Referrer / error", title=KIND_TITLE[kind])
        for entry in entries:
            table.add_row(
                escape(_short_time(entry.at)), entry.id, escape(entry.key or "—"), escape(entry.email or "—"),
                _outcome(entry), escape(_detail(entry)),
            )  # fmt: skip
    else:
        table = term.table("When (UTC)", "Id", "Event", "E-mail", "External Id", "Outcome", "Error", title=KIND_TITLE[kind])
        for entry in entries:
            table.add_row(
                escape(_short_time(entry.at)), entry.id, escape(str(entry.details.get("event") or "—")),
                escape(entry.email or "—"), escape(entry.key or "—"), _outcome(entry), escape(entry.error_text),
            )  # fmt: skip
    term.print(table)


def _outcome_of_state(entry: HistoryEntry) -> str:
    from rich.markup import escape

    state = str(entry.details.get("state"))
    text = f"[red]{escape(state)}[/]" if entry.failed else escape(state)
    return text + (" [dim](acknowledged)[/]" if entry.acknowledged_at else "")


def _render_last_runs(term: Terminal, report: HistoryReport) -> None:
    if report.email:
        return
    for job, run in report.last_runs.items():
        counts = run.get("counts") or {}
        shown = ", ".join(
            f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if k != "total" and isinstance(n, int) and n
        )
        term.info(
            f"Last {job} run #{run['id']} ({run.get('command') or job}): {run.get('outcome')}, started "
            f"{_short_time(run.get('started_at'))}" + (f" — {shown}" if shown else "")
        )


def _short_time(stamp: str | None) -> str:
    """``2025-05-30T18:22:11.123456+00:00`` → ``2025-05-30 18:22:11``."""
    if not stamp:
        return "—"
    return stamp.replace("T", " ")[:19]
