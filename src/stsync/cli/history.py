"""`stsync history`: everything the ledger knows, newest first — push attempts, qualifications,
customer sync outcomes, webhook deliveries — and `history --ack ID` for a failed record a
person has seen.

The records are the data (stdout): on a terminal a table that keeps every identifier whole at
any width (``cli.tables``) — every kind in one table with the columns they share, or one kind
(``--kind``) with its own; in a pipe, TSV with a header, one record per line, for ``grep``,
``cut -f`` and spreadsheets. ``-q`` does not hide them. The acknowledgement's confirmation is
talk (stderr).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.text import Text

from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import SUPPORT, examples
from stsync.cli.tables import Column, Role
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
KIND_WORD = choice(HistoryKind)
HELP = (
    "Everything the ledger knows, newest first: push attempts (booking ids and ServiceTitan's exact errors), "
    "qualifications, customer sync outcomes and webhook deliveries — in one table, or one kind (--kind) with its own "
    "columns. On a terminal a table; in a pipe TSV with a header. A failed record you have seen (a test lead) is "
    "acknowledged with --ack ID (the Id column): diagnose, status and the alerts stop counting it until it fails again."
)


def register(app: typer.Typer) -> None:
    app.command(
        "history",
        help=HELP,
        epilog=examples(
            ("stsync history", "the last 50 records of every kind, newest first"),
            ("stsync history --failed", "only what failed, with ServiceTitan's or Referral Factory's words"),
            ("stsync history --kind sync", "customer sync outcomes only, with their own columns"),
            ("stsync history --email jo@example.com", "everything about one e-mail"),
            ('stsync history --ack p12 --note "test lead"', "diagnose stops failing on this failed push"),
            ("stsync history | grep jo@example.com | cut -f1,2,6", "TSV in a pipe: when, kind, outcome"),
        ),
        rich_help_panel=SUPPORT,
    )(history_command)


def history_command(
    ctx: typer.Context,
    kind: list[HistoryKind] | None = typer.Option(
        None, "--kind", metavar="KIND", parser=KIND_WORD, help="Only this kind: push, qualify, sync or webhook (repeatable)."
    ),
    email: str | None = typer.Option(None, "--email", metavar="EMAIL", help="Only the records of this e-mail."),
    failed: bool = typer.Option(False, "--failed", help="Only the records that failed."),
    limit: int = typer.Option(50, "--limit", metavar="N", help="At most this many records (newest first)."),
    ack: str | None = typer.Option(
        None, "--ack", metavar="ID", help="Acknowledge this failed record (an id of the Id column: p12, q3, s20017, w4)."
    ),
    note: str | None = typer.Option(None, "--note", metavar="TEXT", help="With --ack: why (kept with it)."),
) -> None:
    from stsync.errors import UsageError

    app_ctx = AppContext.from_typer(ctx)
    if ack is not None:
        if kind or email or failed:
            raise UsageError("--ack takes only the id (and --note)", hint="e.g. stsync history --ack p12")
        _acknowledge(app_ctx, ack, note)
        return
    if note is not None:
        raise UsageError("--note goes with --ack", hint='e.g. stsync history --ack p12 --note "test record"')

    from stsync.services.history import history

    term = app_ctx.terminal
    report = history(app_ctx.connection(), kinds=kind or tuple(HistoryKind), email=email, failed_only=failed, limit=limit)
    data = report.to_dict()
    del data["count"]  # counts.entries says it
    app_ctx.result(
        counts={
            "entries": len(report.entries),
            "attempts": len(data["attempts"]),
            **{k.value: sum(e.kind == k for e in report.entries) for k in report.kinds},
        },
        **data,
    )

    single = report.kinds[0] if len(report.kinds) == 1 else None
    if app_ctx.json_mode:
        pass  # the object is the data
    elif not term.data_to_terminal:
        header, rows = _tsv(single, report.entries)
        term.tsv(header, rows)
    elif report.entries:
        columns, rows = _table(single, report.entries)
        term.table(columns, rows, title=KIND_TITLE[single] if single is not None else "History")
    if not report.entries:
        which = " failed" if failed else ""
        what = " and ".join(KIND_TITLE[k].lower() for k in report.kinds) if kind else "records"
        whom = f" for {email}" if email else ""
        term.info(f"No{which} {what} recorded{whom}.")
    _render_last_runs(term, report)


def _acknowledge(app_ctx: AppContext, ident: str, note: str | None) -> None:
    from stsync.services.history import acknowledge

    result = acknowledge(app_ctx.connection(), ident, note=note)
    app_ctx.result(counts={"acknowledged": 1}, acknowledged=result.to_dict())
    app_ctx.terminal.success(
        f"acknowledged {result.id}: {result.what} — `stsync diagnose` no longer fails on it (unless it fails again); "
        "it stays in `stsync history`, marked acknowledged"
    )


# == the data ===================================================================================

# Identifiers stay whole; at a narrow width the detail or error moves under the table first, as
# numbered notes, then "When" goes.
ALL_COLUMNS = (
    Column("When (UTC)", Role.LABEL, drop_order=2),
    Column("Kind", Role.LABEL),
    Column("Id", Role.ID),
    Column("E-mail", Role.ID),
    Column("Record", Role.ID),
    Column("Outcome", Role.LABEL),
    Column("Detail", Role.TEXT, min_width=24, drop_order=1, note=True),
)
KIND_COLUMNS: dict[HistoryKind, tuple[Column, ...]] = {
    HistoryKind.PUSH: (
        Column("When (UTC)", Role.LABEL, drop_order=2),
        Column("Id", Role.ID),
        Column("E-mail", Role.ID),
        Column("External Id", Role.ID),
        Column("Outcome", Role.LABEL),
        Column("Booking", Role.ID),
        Column("Error", Role.TEXT, min_width=24, drop_order=1, note=True),
    ),
    HistoryKind.QUALIFY: (
        Column("When (UTC)", Role.LABEL, drop_order=2),
        Column("Id", Role.ID),
        Column("E-mail", Role.ID),
        Column("External Id", Role.ID),
        Column("Action", Role.LABEL),
        Column("Result", Role.LABEL),
        Column("Reason / error", Role.TEXT, min_width=24, drop_order=1, note=True),
    ),
    HistoryKind.SYNC: (
        Column("When (UTC)", Role.LABEL, drop_order=2),
        Column("Id", Role.ID),
        Column("Customer", Role.ID),
        Column("E-mail", Role.ID),
        Column("Outcome", Role.LABEL),
        Column("Referrer / error", Role.TEXT, min_width=24, drop_order=1, note=True),
    ),
    HistoryKind.WEBHOOK: (
        Column("When (UTC)", Role.LABEL, drop_order=2),
        Column("Id", Role.ID),
        Column("Event", Role.LABEL),
        Column("E-mail", Role.ID),
        Column("External Id", Role.ID),
        Column("Outcome", Role.LABEL),
        Column("Error", Role.TEXT, min_width=24, drop_order=1, note=True),
    ),
}
TSV_HEADERS: dict[HistoryKind | None, tuple[str, ...]] = {
    None: ("at", "kind", "id", "email", "record", "outcome", "detail"),
    HistoryKind.PUSH: ("started_at", "id", "email", "external_id", "outcome", "booking_id", "error"),
    HistoryKind.QUALIFY: ("at", "id", "email", "external_id", "action", "state", "reason_or_error"),
    HistoryKind.SYNC: ("updated_at", "id", "customer_id", "email", "outcome", "referrer_or_error"),
    HistoryKind.WEBHOOK: ("received_at", "id", "event", "email", "external_id", "outcome", "error"),
}


def _outcome(entry: HistoryEntry) -> Text:
    label = OUTCOME_LABEL.get(entry.outcome, entry.outcome.replace("_", " "))
    text = Text(label, style=OUTCOME_STYLE.get(entry.outcome, "red" if entry.failed else ""))
    if entry.acknowledged_at:
        text.append(" (acknowledged)", style="dim")
    return text


def _outcome_word(entry: HistoryEntry) -> str:
    """The outcome as TSV has it: the stored word, marked when acknowledged."""
    return entry.outcome + (" (acknowledged)" if entry.acknowledged_at else "")


def _detail(entry: HistoryEntry) -> str:
    """What the kind says besides its outcome: the booking, the action's reason, the referrer,
    the event — or the error, which is what matters when there is one."""
    if entry.error:
        return entry.error_text
    details = entry.details
    if entry.kind == HistoryKind.PUSH:
        return f"booking #{details['booking_id']}" if details.get("booking_id") is not None else ""
    if entry.kind == HistoryKind.QUALIFY:
        return str(details.get("reason") or "")
    if entry.kind == HistoryKind.SYNC:
        if details.get("skip_reason"):
            return f"skipped: {str(details['skip_reason']).replace('_', ' ')}"
        referrer = f"referrer {details['code']}" if details.get("code") else ""
        written = len(details.get("return_fields") or {})
        return referrer + (f", {written} return field(s) written" if written else "")
    return str(details.get("event") or "")


def _cells(kind: HistoryKind | None, entry: HistoryEntry, *, table: bool) -> list:
    """One record's cells in the columns of ``kind`` (None: every kind's shared columns);
    ``table``: for the terminal (short times, styled outcomes), else for TSV (raw values)."""
    when = _short_time(entry.at) if table else entry.at
    outcome = _outcome(entry) if table else _outcome_word(entry)
    details = entry.details
    if kind is None:
        return [when, entry.kind.value, entry.id, entry.email or ("—" if table else None), entry.key or ("—" if table else None),
                outcome, _detail(entry)]  # fmt: skip
    if kind == HistoryKind.PUSH:
        booking = details.get("booking_id")
        shown_booking = (f"#{booking}" if booking is not None else "") if table else booking
        return [when, entry.id, entry.email or ("—" if table else None), entry.key, outcome, shown_booking, entry.error_text]
    if kind == HistoryKind.QUALIFY:
        state = Text(str(details.get("state")), style="red" if entry.failed else "") if table else str(details.get("state"))
        if table and entry.acknowledged_at:
            assert isinstance(state, Text)
            state.append(" (acknowledged)", style="dim")
        email = entry.email or ("—" if table else None)
        return [when, entry.id, email, entry.key, str(details.get("action")), state, _detail(entry)]
    if kind == HistoryKind.SYNC:
        return [when, entry.id, entry.key, entry.email or ("—" if table else None), outcome, _detail(entry)]
    return [when, entry.id, str(details.get("event") or ("—" if table else "")), entry.email or ("—" if table else None),
            entry.key or ("—" if table else None), outcome, entry.error_text]  # fmt: skip


def _table(kind: HistoryKind | None, entries: list[HistoryEntry]) -> tuple[list[Column], list[list]]:
    columns = list(ALL_COLUMNS if kind is None else KIND_COLUMNS[kind])
    return columns, [_cells(kind, entry, table=True) for entry in entries]


def _tsv(kind: HistoryKind | None, entries: list[HistoryEntry]) -> tuple[list[str], list[list]]:
    return list(TSV_HEADERS[kind]), [_cells(kind, entry, table=False) for entry in entries]


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
