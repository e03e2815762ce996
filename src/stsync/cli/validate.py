"""`stsync validate [--online]`: is the connection set up right? A table of checks."""

from __future__ import annotations

import typer

from stsync.cli.context import AppContext

STATUS_STYLE = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}


def register(app: typer.Typer) -> None:
    app.command(
        "validate",
        help=(
            "Check the config offline (syntax, schema, required fields per action, qualification rule, "
            "secrets present); with --online also the token, booking provider, campaign and return-field "
            "custom fields. Exit 0 when nothing fails, 3 for config or mapping, 4 for credentials."
        ),
    )(validate_command)


def validate_command(
    ctx: typer.Context,
    online: bool = typer.Option(False, "--online", help="Also check live against ServiceTitan and Referral Factory."),
) -> None:
    from rich.markup import escape

    from stsync.services.validate import validate

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    report = validate(app_ctx.config_path, app_ctx.paths, online=online, consent=app_ctx.consent())

    title = "Validation (offline and online)" if online else "Validation (offline; --online checks the live connection)"
    table = term.table("Check", "Result", "Details", title=title)
    for check in report.checks:
        details = escape(check.message)
        if check.fix and check.status != "pass":
            details += f"\n[dim]→ {escape(check.fix)}[/]"
        table.add_row(escape(check.name), STATUS_STYLE[check.status], details)
    term.print(table)
    if term.quiet:  # -q keeps what needs attention
        for check in report.checks:
            if check.status == "fail":
                term.error(f"{check.name}: {check.message}", check.fix)
            elif check.status == "warn":
                term.warning(f"{check.name}: {check.message}")
    if report.online_skipped:
        term.warning(f"online checks not run: {report.online_skipped}")
    counts = report.counts()
    line = f"{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed"
    if report.exit_code == 0:
        term.summary(f"[green]✓[/] {line}")
    else:
        term.summary(f"[bold red]✗[/] {line} (exit {report.exit_code})")
    app_ctx.emit(report.to_dict())
    if report.exit_code:
        raise typer.Exit(report.exit_code)
