"""`stsync status`: is it working? Exit 0 when healthy, 1 when something needs attention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.context import AppContext

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.services.status import JobStatus, StatusReport


def register(app: typer.Typer) -> None:
    app.command(
        "status",
        help="Is it working? Each job's last run and whether it is overdue, open failures, the Referral Factory "
        "cool-down, the cached token, the webhook queue. Local state only (no request). Exit 0 when healthy, "
        "1 when something needs attention.",
    )(status_command)


def status_command(
    ctx: typer.Context,
    prometheus: str | None = typer.Option(
        None,
        "--prometheus",
        metavar="PATH",
        help="Also write the figures for node_exporter's textfile collector (PATH.prom, replaced atomically).",
    ),
) -> None:
    from stsync.errors import ConfigError
    from stsync.services.metrics import write_textfile
    from stsync.services.status import connection_status

    app_ctx = AppContext.from_typer(ctx)
    config, problem = None, None
    try:
        config = app_ctx.load_config()
    except ConfigError as exc:
        problem = exc  # status still reads the ledger: monitoring must see a broken config
    report = connection_status(app_ctx.paths, config, config_error=problem)
    written = write_textfile(report, prometheus) if prometheus else None
    _render(app_ctx.terminal, report)
    if written is not None:
        app_ctx.terminal.info(f"Prometheus textfile: {written}")
    app_ctx.emit(
        {"ok": report.healthy, "exit_code": report.exit_code, **report.to_dict(), "prometheus": str(written) if written else None}
    )
    if report.exit_code:
        raise typer.Exit(report.exit_code)


_STATE = {
    "ok": "[green]ok[/]",
    "running": "[cyan]running[/]",
    "overdue": "[bold red]overdue[/]",
    "failing": "[bold red]failing[/]",
    "never": "[yellow]never ran[/]",
    "off": "[dim]off[/]",
    "idle": "[dim]nothing to do[/]",
    "stopped": "[dim]not running[/]",
}


def _render(term: Terminal, report: StatusReport) -> None:
    from rich.markup import escape

    from stsync.durations import describe_duration

    def ago(seconds: Any) -> str:
        return f"{describe_duration(seconds)} ago" if isinstance(seconds, (int, float)) else ""

    table = term.table(
        "Job", "State", "Last run", "Outcome", "When", "Every", title=f"stsync status — connection '{report.connection}'"
    )
    for job in report.jobs:
        last = job.last_run or {}
        outcome = last.get("outcome") or ""
        if last.get("exit_code") is not None:
            outcome += f" (exit {last['exit_code']})"
        every = describe_duration(job.interval_seconds) if job.interval_seconds else ""
        table.add_row(
            escape(job.job),
            _STATE.get(job.state, job.state) + _running(job),
            escape(last.get("command") or ""),
            escape(outcome),
            ago(last.get("age_seconds")),
            every,
        )
    term.print(table)

    failures = report.failures
    counts = ", ".join(f"{kind} {found['count']}" for kind, found in failures.items())
    term.print(f"Open failures: {escape(counts)}")
    for kind, found in failures.items():
        for item in found["newest"]:
            who = item.get("email") or item.get("external_id") or item.get("customer_id") or item.get("delivery")
            term.print(f"  [red]✗[/] {escape(kind)}: {escape(str(who))}: {escape(item.get('error') or '')}")
    rf = report.referral_factory
    cooldown = rf.get("cooldown")
    if cooldown and cooldown.get("active"):
        why = "IP blocked" if rf.get("blocked") else "rate-limited (HTTP 429)"
        term.print(f"Referral Factory: [bold red]{why}: no call before {escape(cooldown['until'])}[/]")
    elif rf.get("rate_factor", 1.0) < 1.0:
        term.print(f"Referral Factory: [yellow]{rf['rate_factor']:.0%} of the rate[/] after a 429 this hour")
    else:
        term.print("Referral Factory: full speed, no cool-down")
    token = report.token
    if token.get("valid"):
        term.print(f"ServiceTitan token: valid for {describe_duration(token['seconds_left'])} (cached)")
    elif token.get("cached"):
        term.print(f"ServiceTitan token: expired at {escape(token['expires_at'])} (a new one is fetched on the next request)")
    else:
        term.print("ServiceTitan token: none cached")
    hooks = report.webhooks
    waiting = f"{hooks['waiting']} waiting" + (
        f", oldest {ago(hooks['oldest_age_seconds'])}" if hooks.get("oldest_age_seconds") else ""
    )
    term.print(f"Webhook deliveries: {waiting}; receiver {'running' if hooks['receiver_running'] else 'not running'}")
    if report.healthy:
        term.summary("[green]Healthy[/]: nothing needs attention.")
    else:
        term.summary("[bold red]Needs attention[/]:")
        for reason in report.attention:
            term.summary(f"  • {escape(reason)}")


def _running(job: JobStatus) -> str:
    if job.running and job.state != "running":
        return f" [cyan](running, pid {job.running.get('pid')})[/]"
    return ""
