"""`stsync qualify [--dry-run] [--full]`: pushed bookings → jobs → referrals qualified in Referral
Factory. Shows the referrals being held (``hold_days``) and until when."""

from __future__ import annotations

import typer
from rich.text import Text

from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.cli.tables import Column, Role
from stsync.storage.states import RunJob


def register(app: typer.Typer) -> None:
    app.command(
        "qualify",
        help="Apply the qualification rule to pushed bookings (booking → job → status) and qualify "
        "the referrals in Referral Factory. Idempotent: a referral is never qualified twice.",
        epilog=examples(
            ("stsync qualify --dry-run", "read ServiceTitan, show what would be qualified; write nothing"),
            ("stsync qualify", "qualify the referrals whose booking met the rule (`stsync map qualify` sets it)"),
            ("stsync -q qualify", "from cron: one line when something was qualified, and each failure"),
            ("stsync qualify --full", "re-read every booking and open job, not only what changed"),
        ),
        rich_help_panel=EVERYDAY,
    )(qualify_command)


# How each outcome reads in the table, and in the summary line.
_OUTCOME_LABELS = {
    "qualified": "[green]qualified[/]",
    "unqualified": "[yellow]unqualified[/]",
    "already": "already done",
    "closed": "closed (not qualified)",
    "finished": "finished",
    "held": "[cyan]held[/]",
    "waiting": "waiting",
    "missing": "[yellow]missing[/]",
    "failed": "[red]failed[/]",
    "would_qualify": "would qualify",
    "would_unqualify": "would unqualify",
    "would_close": "would close",
}


def qualify_command(
    ctx: typer.Context,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Read ServiceTitan and show what would be qualified; write nothing."
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="Re-read every booking of the provider and every open job instead of what changed since the last run "
        "(done by itself on the first run and when the last full read is over a week old).",
    ),
) -> None:
    from rich.markup import escape

    from stsync.errors import PartialFailure
    from stsync.services.qualify import qualify

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    if not dry_run:
        app_ctx.begin_job(RunJob.QUALIFY, "qualify", scheduled=True)
    conn = app_ctx.connection()

    if conn.config.leads.qualification.rule == "none":
        report = qualify(conn, dry_run=dry_run, full=full)  # reads and sends nothing: no lock needed
        _record(app_ctx, report)
        if not term.quiet:  # -q: nothing to do, nothing said
            term.summary(
                'Qualification rule is "none" ("Do not qualify my referrals"): nothing to do; nothing was read or sent.'
            )
        term.info("To qualify referrals: `stsync map qualify job-created` or `stsync map qualify job-status --status Completed`.")
        return

    def run():
        with term.progress("Checking open bookings") as progress:
            return qualify(conn, dry_run=dry_run, full=full, progress=progress)

    if dry_run:
        report = run()  # writes nothing, so it needs no lock
    else:
        with conn.run_lock(RunJob.QUALIFY, command="qualify"):
            report = run()
    _record(app_ctx, report)

    counts = report.counts()
    shown = [d for d in report.decisions if d.outcome != "waiting" or term.verbosity > 0]
    if shown and not term.quiet:
        term.table(
            list(DECISION_COLUMNS),
            [_decision_row(decision) for decision in shown],
            title="Qualification" + (" (dry run)" if dry_run else ""),
        )
    target = f' (job status "{report.job_status}")' if report.job_status else ""
    if report.hold_days:
        target += f", held {report.hold_days} day{'s' if report.hold_days != 1 else ''}"
    if dry_run:
        summary = (
            f"Dry run, rule {report.rule}{target}: {counts['open_bookings']} open booking(s); would qualify "
            f"{counts['qualified']}, unqualify {counts['unqualified']}, close {counts['closed']}, hold {counts['held']}; "
            "nothing was sent."
        )
    elif not report.open_bookings:
        summary = f"Rule {report.rule}{target}: no open bookings to check."
    else:
        summary = (
            f"Rule {report.rule}{target}: {counts['open_bookings']} open booking(s) checked — "
            f"qualified {counts['qualified']}, unqualified {counts['unqualified']}, already done {counts['already']}, "
            f"closed {counts['closed'] + counts['finished']}, held {counts['held']}, waiting {counts['waiting']}, "
            f"failed {counts['failed']}; {counts['still_open']} still open."
        )
    if report.open_bookings:
        reads = report.reads
        how = f"full read ({reads.full_reason})" if reads.full else "read what changed since the last run"
        term.info(escape(f"ServiceTitan: {how}; {reads.requests} request(s)."))
    changed = sum(counts[name] for name in ("qualified", "unqualified", "closed", "finished", "failed", "missing"))
    if not term.quiet or changed:  # -q: one line when something happened
        term.summary(escape(summary))
    if term.quiet:
        for decision in report.decisions:
            if decision.outcome == "failed":
                term.summary(f"[red]✗[/] {escape(decision.email or decision.external_id)}: {escape(_why(decision))}")
    held = report.held
    if held:
        first = held[0]
        term.info(
            escape(
                f"Held: {len(held)} referral(s) qualify when their hold ends; the first, "
                f"{first.email or first.external_id}, on {_when(first.held_until)}."
            )
        )
    for note in report.reads.notes:
        term.warning(escape(note))
    if counts["missing"]:
        term.warning(
            f"{counts['missing']} booking(s) or job(s) were not returned by ServiceTitan; they stay open "
            "(see `stsync diagnose --email <e-mail>`)"
        )
    if report.failed:
        raise PartialFailure(
            f"{report.failed} referral(s) could not be (un)qualified in Referral Factory; the rest is done and recorded",
            hint="`stsync diagnose --email <e-mail>` shows the exact error; the next `stsync qualify` retries those still open",
        )


DECISION_COLUMNS = (
    Column("Referral", Role.ID),
    Column("Booking", Role.ID),
    Column("Job", Role.ID, drop_order=2),
    Column("Job status", Role.LABEL, drop_order=3),
    Column("Outcome", Role.LABEL),
    Column("Why", Role.TEXT, min_width=24, drop_order=1, note=True),
)


def _why(decision) -> str:
    why = decision.reason
    if decision.error:
        why += f" — {decision.error.get('title') or decision.error.get('message')}"
    if decision.held_until:
        why = f"held until {_when(decision.held_until)} — {why}"
    return why


def _decision_row(decision) -> list[Text]:
    return [
        Text(decision.email or decision.external_id),
        Text(str(decision.booking_id or "")),
        Text(str(decision.job_id or "")),
        Text(decision.job_status or decision.booking_status or ""),
        Text.from_markup(_OUTCOME_LABELS.get(decision.outcome, decision.outcome)),
        Text(_why(decision)),
    ]


def _record(app_ctx: AppContext, report) -> None:
    """The --json object: the report, its counts, and each referral that failed (key: its External Id)."""
    from stsync.cli.envelope import failure

    data = report.to_dict()
    counts = data.pop("counts")
    failures = [
        failure(d.external_id, _why(d), error=d.error, email=d.email) for d in report.decisions if d.outcome == "failed"
    ]
    app_ctx.result(counts=counts, failures=failures, **data)


def _when(iso: str | None) -> str:
    """A held_until timestamp as a person reads it: the minute, in UTC."""
    if not iso:
        return "?"
    return iso[:16].replace("T", " ") + " UTC"
