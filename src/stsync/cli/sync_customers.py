"""`stsync sync-customers`: ServiceTitan customers become campaign referrers, with return fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from stsync.cli.context import AppContext
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
        None, "--limit", min=1, help="Read at most N customers from the feed in this run (the next run carries on)."
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

    _render(term, report, limit)
    app_ctx.emit({"ok": report.failed == 0 and report.unknown == 0, **report.to_dict()})
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


def _render(term: Terminal, report: SyncReport, limit: int | None) -> None:
    dry = report.dry_run
    how = {RunMode.ONCE: "one-time", RunMode.ONGOING: "ongoing"}[report.mode] + (", full pass" if report.full else "")
    if dry:
        term.info(f"Confirm ({how} sync, dry run): nothing was sent to Referral Factory or written anywhere.")
    table = term.table("Customers", "Count", title="What would happen" if dry else "Customer sync")
    verbs = (
        ("created", "would become referrers" if dry else "became referrers (created)"),
        ("adopted", "adopted an existing Referral Factory user"),
        ("updated", "referrer would be updated" if dry else "referrer updated"),
        ("unchanged", "unchanged"),
        ("shared", "would share another customer's referrer" if dry else "share another customer's referrer (same e-mail)"),
    )
    for name, label in verbs:
        table.add_row(label, str(getattr(report, name)))
    for reason, count in sorted(report.skipped_by_reason.items()):
        table.add_row(f"skipped: {reason.replace('_', ' ')}", str(count))
    table.add_row("failed" if not report.failed else "[red]failed[/]", str(report.failed))
    if report.needs_fix:
        table.add_row("[yellow]waiting for a fix in ServiceTitan[/]", str(report.needs_fix))
    if report.unknown:
        table.add_row(f"[magenta]{UNKNOWN_LABEL}[/]", str(report.unknown))
    table.add_row("return field values " + ("to write" if dry else "written"), str(report.return_fields_written))
    term.summary(table)

    if dry and report.sample:
        sample = term.table("Action", "Customer", "E-mail", "First name", "Return fields", title="Sample")
        for item in report.sample:
            referrer = item.get("referrer") or {}
            fields = item.get("return_fields") or {}
            sample.add_row(
                item["action"].replace("_", " "),
                f"{item['customer_id']} {item.get('customer_name') or ''}".strip(),
                item.get("email") or "",
                str(referrer.get("first_name", "")),
                ", ".join(f"{name} = {value}" for name, value in fields.items()),
            )
        term.print(sample)
        term.info("Run it for real without --dry-run.")

    shared = list(report.shared_customers.values())
    for item in shared[:FAILURES_SHOWN]:
        term.info(
            f"customer {item['customer_id']} shares the referrer of customer {item['shares_referrer_of']} ({item['email']})"
        )
    if len(shared) > FAILURES_SHOWN:
        term.info(f"… and {len(shared) - FAILURES_SHOWN} more customers share a referrer (`--json` lists them)")
    waiting = [item for item in report.needs_fix_customers.values() if not item["refused_in_this_run"]]
    if waiting:
        term.warning(
            f"{len(waiting)} customer(s) still wait for a custom-field fix in ServiceTitan and were left alone "
            "(`stsync diagnose` lists them; after fixing, `stsync sync-customers --retry-failed`)"
        )
    for failure in report.failures[:FAILURES_SHOWN]:
        error = failure.get("error") or {}
        term.warning(f"customer {failure['customer_id']} ({failure.get('email') or 'no e-mail'}): {error.get('message')}")
        if error.get("type") == "CustomFieldRefused" and error.get("hint"):
            term.info(f"→ {error['hint']}")
    if report.failed > FAILURES_SHOWN:
        term.warning(f"… and {report.failed - FAILURES_SHOWN} more (`stsync diagnose`, the log file)")
    if not report.complete:
        term.info(f"Stopped after --limit {limit} customers; the next run carries on from there.")
