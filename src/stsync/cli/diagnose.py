"""`stsync diagnose`: the troubleshooting checklist, one referral's story, a support bundle."""

from __future__ import annotations

import typer

from stsync.cli.checks import check_columns, check_row, checks_failed, checks_failure
from stsync.cli.context import AppContext
from stsync.cli.help import SUPPORT, examples

HELP = (
    "The troubleshooting checklist, live: each check PASS / WARN / FAIL with its fix.\n\n"
    "Checks the config, the secret store (which keyring backend) and the secrets, the ServiceTitan token, app key, "
    "tenant and Booking Provider Value, the Referral Factory key and campaign, the Leads action (\"Nothing to "
    "action\"), the required fields (\"Setup Required\"), the qualification rule, the return-field custom fields, "
    "the run locks and last runs, and every push that failed to book, with the lead's e-mail and ServiceTitan's "
    "exact error.\n\n"
    "--email E tells that referral's whole story. --bundle PATH writes a report for a support ticket, secrets "
    "removed: PATH.md and PATH.json (a .md or .json suffix is dropped first), or, when PATH is a directory (or ends "
    "with /), stsync-diagnose-<connection>-<time>.md and .json inside it.\n\n"
    "Exit code: 0 when nothing fails (warnings allowed); 1 when a check fails; 3 (configuration) or 4 "
    "(authentication) when every failure is of that kind and it kept other checks from running."
)


def register(app: typer.Typer) -> None:
    app.command(
        "diagnose",
        help=HELP,
        epilog=examples(
            ("stsync diagnose", "every check, PASS / WARN / FAIL, each with its fix"),
            ("stsync diagnose --email jo@example.com", "one referral's whole story and its exact error"),
            ("stsync diagnose --bundle support", "support.md and support.json for a ticket, secrets removed"),
            ("stsync -q diagnose", "only what is not PASS (nothing when every check passes)"),
        ),
        rich_help_panel=SUPPORT,
    )(diagnose_command)


def diagnose_command(
    ctx: typer.Context,
    email: str | None = typer.Option(None, "--email", metavar="EMAIL", help="Tell the story of the referral with this e-mail."),
    bundle: str | None = typer.Option(
        None,
        "--bundle",
        metavar="PATH",
        help="Write a redacted report for a support ticket: PATH.md and PATH.json (or into the directory PATH).",
    ),
    offline: bool = typer.Option(False, "--offline", help="Only the checks that need no network."),
) -> None:
    from pathlib import Path

    from stsync.errors import UsageError
    from stsync.services.diagnose import diagnose

    app_ctx = AppContext.from_typer(ctx)
    if email is not None and not email.strip():
        raise UsageError("--email needs an e-mail address")
    if bundle is not None and not bundle.strip():
        raise UsageError("--bundle needs a path")
    report = diagnose(app_ctx.paths, app_ctx.config_path, offline=offline, email=email, consent=app_ctx.consent())
    written: list[Path] = []
    if bundle is not None:
        from stsync.services.bundle import bundle_paths, write_bundle
        from stsync.services.diagnose import closing_hint

        markdown, _ = bundle_paths(bundle, connection=app_ctx.paths.name, generated_at=report.generated_at)
        report.hint = closing_hint(report, bundle=markdown)
        written = write_bundle(report, app_ctx.paths, bundle)

    data = report.to_dict()
    for key in ("ok", "exit_code"):  # the envelope says how the command ended
        data.pop(key)
    app_ctx.result(
        counts=data.pop("counts"),
        failures=checks_failed(report.checks),
        **data,
        bundle=[str(p) for p in written] or None,
    )
    _render(app_ctx, report, written)
    if report.exit_code:
        raise app_ctx.exit_with(checks_failure(report.checks, exit_code=report.exit_code, hint=report.hint))


# == rendering ==================================================================================

def _render(app_ctx: AppContext, report, written) -> None:
    from rich.markup import escape

    term = app_ctx.terminal
    counts = report.counts()
    title = f"stsync diagnose — connection '{report.connection}'" + (" (offline)" if report.offline else "")
    # -q: only what needs attention; nothing at all when every check passes.
    shown = [check for check in report.checks if not term.quiet or check.status != "pass"]
    if shown:
        term.table(check_columns(shown, term.data_width), [check_row(check) for check in shown], title=title)
    if report.not_run:
        term.print("[dim]Not run: " + escape("; ".join(f"{item.name} ({item.reason})" for item in report.not_run)) + "[/]")
    if report.story is not None:
        _render_story(term, report.story)
    if written:
        term.success("support bundle (secrets removed): " + ", ".join(str(p) for p in written))
    if term.quiet and not shown:
        return
    summary = f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
    style = "red" if counts["fail"] else ("yellow" if counts["warn"] else "green")
    term.summary(f"[{style}]{summary}[/] — {escape(report.hint)}")


def _render_story(term, story) -> None:
    from rich.markup import escape

    lines = [escape(line) for line in story.summary]
    if story.next_steps:
        lines.append("")
        lines.append("[bold]Next:[/]")
        lines.extend(f"  • {escape(step)}" for step in story.next_steps)
    term.boxed(f"Referral {escape(story.email)}", lines or ["nothing known"])
