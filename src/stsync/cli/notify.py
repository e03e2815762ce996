"""`stsync notify --test`: send one test alert to [notify] webhook_url (and a log line to ping_url)."""

from __future__ import annotations

import typer

from stsync.cli.context import AppContext
from stsync.cli.help import SUPPORT, examples


def register(app: typer.Typer) -> None:
    app.command(
        "notify",
        help="Check the alerts: --test sends one test message to \\[notify] webhook_url and a log line to "
        "ping_url (healthchecks.io's /log: the check's state does not change).",
        epilog=examples(("stsync notify --test", "one test message to the configured alert webhook (and ping URL)")),
        rich_help_panel=SUPPORT,
    )(notify_command)


def notify_command(
    ctx: typer.Context,
    test: bool = typer.Option(False, "--test", help="Send one test message now."),
) -> None:
    from stsync import envvars
    from stsync.errors import ConfigError, TemporaryError, UsageError
    from stsync.services.alerts import send_test

    if not test:
        raise UsageError("nothing to do: `stsync notify --test` sends a test alert", hint="stsync notify --test")
    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    config = app_ctx.load_config()
    result = send_test(app_ctx.paths, config)
    if not result.configured:
        raise ConfigError(
            "no alert destination is configured",
            key_path="notify.webhook_url",
            hint=f"set [notify] webhook_url (a Slack or Teams incoming webhook) or the {envvars.NOTIFY_WEBHOOK_URL.name} "
            "environment variable; ping_url for a healthchecks.io check",
        )
    app_ctx.result(**result.to_dict())
    for line in result.lines():
        (term.success if line.startswith("sent") else term.warning)(line)
    if not result.ok:
        raise TemporaryError(
            "the test alert did not get through (the log file says why)",
            hint="check the URL and that this machine can reach it; then `stsync notify --test` again",
        )
