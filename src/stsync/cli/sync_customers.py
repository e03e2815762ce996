"""`stsync sync-customers`: ServiceTitan customers become campaign referrers, with return fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.text import Text

from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.cli.tables import Column, Role
from stsync.storage.states import UNKNOWN_LABEL, RunJob
from stsync.vocabulary import RunMode

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.customersync.report import SyncReport

FAILURES_SHOWN = 5


def register(app: typer.Typer) -> None:
    app.command(
        "sync-customers",
        help=(
            "Enroll ServiceTitan customers as Referral Factory referrers and write their referral link and "
            "code back to the customers (return fields). Resumable; safe to run again; cron runs --ongoing."
        ),
        epilog=examples(
            ("stsync sync-customers --dry-run", "the seed's Confirm step: what would be created and written"),
            ("stsync sync-customers --once", "One-Time Sync: every customer"),
            ("stsync -q sync-customers --ongoing", "from cron: one line when something changed, and each failure"),
            ("stsync sync-customers --full", "reconcile every customer again"),
        ),
        rich_help_panel=EVERYDAY,
    )(sync_customers_command)


def sync_customers_command(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="One-Time Sync: every customer, from the beginning, then stop."),
    ongoing: bool = typer.Option(
        False, "--ongoing", help="Ongoing Sync: only changes since the last run (the first run is a full pass)."
    ),
    full: bool = typer.Option(False, "--full", help="Reconcile every customer again, from the beginning."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="The Confirm step: count and show what would be created and written; send and record nothing.",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, metavar="N", help="Read at most N customers from the feed in this run (the next run carries on)."
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Also retry customers ServiceTitan refused because of their own custom field, though they did not "
        "change (after you fixed the field).",
    ),
) -> None:
    from stsync.customersync.pipeline import SyncOptions
    from stsync.errors import PartialFailure, TemporaryError, UsageError
    from stsync.services.sync import sync_customers

    if once and ongoing:
        raise UsageError("give --once or --ongoing, not both")
    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    mode = RunMode.ONCE if once else RunMode.ONGOING if ongoing else None
    # The run's name in the ledger says how it ran: `stsync run` finds its last --full by it.
    command = " ".join(
        ["sync-customers", *(["--once"] if once else []), *(["--ongoing"] if ongoing else []), *(["--full"] if full else []),
         *([f"--limit {limit}"] if limit else [])]
    )
    options = SyncOptions(mode=mode, full=full, dry_run=dry_run, limit=limit, retry_failed=retry_failed, command=command)
    if not dry_run:
        app_ctx.begin_job(RunJob.SYNC, command, scheduled=True)
    conn = app_ctx.connection()
    with term.progress("Syncing customers" if not dry_run else "Checking customers") as bar:
        report = sync_customers(conn, options, progress=bar)

    _record(app_ctx, report)
    if term.quiet:
        _render_quiet(term, report)
    else:
        _render(term, report, limit)
    if report.failed:
        raise PartialFailure(
            f"{report.failed} customer(s) could not be synced; the others are done and recorded",
            hint="see `stsync diagnose` and the log file; the next run retries them",
        )
    if report.unknown:
        raise TemporaryError(
            f"{report.unknown} customer(s) {UNKNOWN_LABEL}: Referral Factory lost the answer to their referrer's create "
            "and search does not find the user yet",
            hint="run it again later (cron does): the next run searches first and creates the referrer only if it "
            "is still absent a grace period after the answer was lost",
        )


def _record(app_ctx: AppContext, report: SyncReport) -> None:
    """The --json object: flat counts (skips per reason beside them), each failed customer and
    each whose referrer is in doubt."""
    from stsync.cli.envelope import failure

    counts = dict(report.counts)
    skipped_by_reason = counts.pop("skipped_by_reason")
    data = {key: value for key, value in report.to_dict().items() if key not in counts and key != "skipped_by_reason"}
    data.pop("failures")
    failures = [
        failure(item["customer_id"], (item.get("error") or {}).get("message") or "failed", error=item.get("error"),
                email=item.get("email"))
        for item in report.failures
    ]
    failures += [
        failure(
            item["customer_id"],
            UNKNOWN_LABEL,
            error=item.get("error") or {"type": "AnswerLost", "message": UNKNOWN_LABEL, "hint": None, "exit_code": 6},
            email=item.get("email"),
        )
        for item in report.unknown_customers.values()
    ]
    app_ctx.result(counts=counts, failures=failures, skipped_by_reason=skipped_by_reason, **data)


def _render_quiet(term: Terminal, report: SyncReport) -> None:
    """-q (cron): one line when something was done or failed, then each failure; nothing
    when nothing changed."""
    done = report.created + report.adopted + report.updated + report.return_fields_written + report.failed + report.unknown
    if done:
        term.summary(summary_line(report))
    _render_waiting(term, report)
    _render_failures(term, report)


def summary_line(report: SyncReport) -> str:
    how = {RunMode.ONCE: "one-time", RunMode.ONGOING: "ongoing"}[RunMode(report.mode)] + (", full" if report.full else "")
    verb = "would create" if report.dry_run else "created"
    return (
        f"Customer sync ({how}{', dry run' if report.dry_run else ''}): {report.examined} customer(s) read — "
        f"{verb} {report.created}, adopted {report.adopted}, updated {report.updated}, unchanged {report.unchanged}, "
        f"skipped {report.skipped}, failed {report.failed}"
        + (f", {report.unknown} {UNKNOWN_LABEL}" if report.unknown else "")
        + f"; {report.return_fields_written} return field value(s) "
        + ("to write" if report.dry_run else "written")
    )


def _render_waiting(term: Terminal, report: SyncReport) -> None:
    waiting = [item for item in report.needs_fix_customers.values() if not item["refused_in_this_run"]]
    if waiting:
        term.warning(
            f"{len(waiting)} customer(s) still wait for a custom-field fix in ServiceTitan and were left alone "
            "(`stsync diagnose` lists them; after fixing, `stsync sync-customers --retry-failed`)"
        )


def _render_failures(term: Terminal, report: SyncReport) -> None:
    """Each failed customer on stdout (shown with -q: cron mails them), its fix on stderr."""
    from rich.markup import escape

    for failure in report.failures[:FAILURES_SHOWN]:
        error = failure.get("error") or {}
        term.summary(
            f"[red]✗[/] customer {failure['customer_id']} ({escape(failure.get('email') or 'no e-mail')}): "
            f"{escape(str(error.get('message')))}"
        )
        if error.get("type") == "CustomFieldRefused" and error.get("hint"):
            term.info(f"→ {error['hint']}")
    if report.failed > FAILURES_SHOWN:
        term.summary(f"… and {report.failed - FAILURES_SHOWN} more (`stsync diagnose`, the log file)")


def _render(term: Terminal, report: SyncReport, limit: int | None) -> None:
    dry = report.dry_run
    how = {RunMode.ONCE: "one-time", RunMode.ONGOING: "ongoing"}[report.mode] + (", full pass" if report.full else "")
    if dry:
        term.info(f"Confirm ({how} sync, dry run): nothing was sent to Referral Factory or written anywhere.")
    rows: list[list[object]] = []
    verbs = (
        ("created", "would become referrers" if dry else "became referrers (created)"),
        ("adopted", "adopted an existing Referral Factory user"),
        ("updated", "referrer would be updated" if dry else "referrer updated"),
        ("unchanged", "unchanged"),
        ("shared", "would share another customer's referrer" if dry else "share another customer's referrer (same e-mail)"),
    )
    for name, label in verbs:
        rows.append([label, str(getattr(report, name))])
    for reason, count in sorted(report.skipped_by_reason.items()):
        rows.append([f"skipped: {reason.replace('_', ' ')}", str(count)])
    rows.append([Text("failed", style="red" if report.failed else ""), str(report.failed)])
    if report.needs_fix:
        rows.append([Text("waiting for a fix in ServiceTitan", style="yellow"), str(report.needs_fix)])
    if report.unknown:
        rows.append([Text(UNKNOWN_LABEL, style="magenta"), str(report.unknown)])
    rows.append(["return field values " + ("to write" if dry else "written"), str(report.return_fields_written)])
    term.table(list(COUNT_COLUMNS), rows, title="What would happen" if dry else "Customer sync")

    if dry and report.sample:
        sample = []
        for item in report.sample:
            referrer = item.get("referrer") or {}
            fields = item.get("return_fields") or {}
            sample.append([
                item["action"].replace("_", " "),
                f"{item['customer_id']} {item.get('customer_name') or ''}".strip(),
                item.get("email") or "",
                str(referrer.get("first_name", "")),
                ", ".join(f"{name} = {value}" for name, value in fields.items()),
            ])
        term.table(list(SAMPLE_COLUMNS), sample, title="Sample")
        term.info("Run it for real without --dry-run.")

    shared = list(report.shared_customers.values())
    for item in shared[:FAILURES_SHOWN]:
        term.info(
            f"customer {item['customer_id']} shares the referrer of customer {item['shares_referrer_of']} ({item['email']})"
        )
    if len(shared) > FAILURES_SHOWN:
        term.info(f"… and {len(shared) - FAILURES_SHOWN} more customers share a referrer (`--json` lists them)")
    _render_waiting(term, report)
    _render_failures(term, report)
    if not report.complete:
        term.info(f"Stopped after --limit {limit} customers; the next run carries on from there.")


COUNT_COLUMNS = (Column("Customers", Role.TEXT, min_width=20), Column("Count", Role.ID))
SAMPLE_COLUMNS = (
    Column("Action", Role.LABEL),
    Column("Customer", Role.TEXT, min_width=12),
    Column("E-mail", Role.ID),
    Column("First name", Role.TEXT, min_width=10, drop_order=1),
    Column("Return fields", Role.TEXT, min_width=24, drop_order=2, note=True),
)
