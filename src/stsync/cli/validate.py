"""`stsync validate [--online]`: is the connection set up right? A table of checks."""

from __future__ import annotations

import typer

from stsync.cli.checks import check_columns, check_row, checks_failed, checks_failure
from stsync.cli.context import AppContext
from stsync.cli.help import SETUP, examples


def register(app: typer.Typer) -> None:
    app.command(
        "validate",
        help=(
            "Check the config offline (syntax, schema, required fields per action, qualification rule, "
            "secrets present); with --online also the token, booking provider, campaign and return-field "
            "custom fields. Exit 0 when nothing fails, 3 for config or mapping, 4 for credentials."
        ),
        epilog=examples(
            ("stsync validate", "the config file, the mapping and the secrets, offline"),
            ("stsync validate --online", "also the credentials, booking provider, campaign and custom fields, live"),
        ),
        rich_help_panel=SETUP,
    )(validate_command)


def validate_command(
    ctx: typer.Context,
    online: bool = typer.Option(False, "--online", help="Also check live against ServiceTitan and Referral Factory."),
) -> None:
    from stsync.services.validate import validate

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    report = validate(app_ctx.config_path, app_ctx.paths, online=online, consent=app_ctx.consent())
    data = report.to_dict()
    for key in ("ok", "exit_code"):  # the envelope says how the command ended
        data.pop(key)
    app_ctx.result(counts=data.pop("counts"), failures=checks_failed(report.checks), **data)

    title = "Validation (offline and online)" if online else "Validation (offline; --online checks the live connection)"
    # -q: only what needs attention; nothing at all when every check passes.
    shown = [check for check in report.checks if not term.quiet or check.status != "pass"]
    if shown:
        term.table(check_columns(shown, term.data_width), [check_row(check) for check in shown], title=title)
    if report.online_skipped:
        term.warning(f"online checks not run: {report.online_skipped}")
    counts = report.counts()
    line = f"{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed"
    if report.exit_code == 0:
        if shown or not term.quiet:
            term.summary(f"[green]✓[/] {line}")
        return
    term.summary(f"[bold red]✗[/] {line} (exit {report.exit_code})")
    failed = [check for check in report.checks if check.failed]
    hint = failed[0].fix if len(failed) == 1 else "fix each FAIL as its fix says, then run `stsync validate` again"
    raise app_ctx.exit_with(checks_failure(report.checks, exit_code=report.exit_code, hint=hint))
