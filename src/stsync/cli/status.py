"""`stsync status`: is it working? Exit 0 when healthy, 1 when something needs attention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.context import AppContext
from stsync.cli.help import SUPPORT, examples
from stsync.cli.tables import Column, Role

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.services.status import JobStatus, StatusReport


def register(app: typer.Typer) -> None:
    app.command(
        "status",
        help="Is it working? Each job's last run and whether it is overdue, open failures, the Referral Factory "
        "cool-down, the cached token, the webhook queue. Local state only (no request). Exit 0 when healthy, "
        "1 when something needs attention.",
        epilog=examples(
            ("stsync status", "each job, the open failures, the cool-down, the token, the webhook queue"),
            ("stsync -q status", "from cron or a monitor: nothing when healthy, else what needs attention"),
            ("stsync status --prometheus /var/lib/node_exporter/stsync", "also the figures for node_exporter"),
        ),
        rich_help_panel=SUPPORT,
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
    from stsync.errors import CommandFailed, ConfigError
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
    _record(app_ctx, report, written)
    _render(app_ctx.terminal, report)
    if written is not None:
        app_ctx.terminal.info(f"Prometheus textfile: {written}")
    if report.exit_code:
        raise app_ctx.exit_with(
            CommandFailed(
                "needs attention: " + "; ".join(report.attention),
                exit_code=report.exit_code,
                hint="`stsync diagnose` checks the setup live; `stsync history --failed` lists failed pushes",
            )
        )


def _record(app_ctx: AppContext, report: StatusReport, written: Any) -> None:
    """The --json object: open failures counted per kind, the newest of each among the
    failures, and the report (its own "failures" as "open_failures")."""
    from stsync.cli.envelope import failure

    data = report.to_dict()
    open_failures = data.pop("failures")
    counts = {"attention": len(report.attention)}
    counts.update({f"open_failures_{kind}": found["count"] for kind, found in open_failures.items()})
    newest = [
        failure(_who(item), str(item.get("error") or "failed"), error=None, email=item.get("email"))
        for found in open_failures.values()
        for item in found["newest"]
    ]
    prometheus = str(written) if written else None
    app_ctx.result(counts=counts, failures=newest, open_failures=open_failures, **data, prometheus=prometheus)


def _who(item: dict[str, Any]) -> Any:
    return item.get("external_id") or item.get("customer_id") or item.get("delivery") or item.get("email")


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
    from rich.text import Text

    from stsync.durations import describe_duration

    def ago(seconds: Any) -> str:
        return f"{describe_duration(seconds)} ago" if isinstance(seconds, (int, float)) else ""

    if term.quiet:  # -q: nothing when healthy; what needs attention otherwise
        if not report.healthy:
            term.summary("[bold red]Needs attention[/]:")
            for reason in report.attention:
                term.summary(f"  • {escape(reason)}")
        return
    rows = []
    for job in report.jobs:
        last = job.last_run or {}
        outcome = last.get("outcome") or ""
        if last.get("exit_code") is not None:
            outcome += f" (exit {last['exit_code']})"
        every = describe_duration(job.interval_seconds) if job.interval_seconds else ""
        rows.append(
            [
                job.job,
                Text.from_markup(_STATE.get(job.state, job.state) + _running(job)),
                last.get("command") or "",
                outcome,
                ago(last.get("age_seconds")),
                every,
            ]
        )
    term.table(list(JOB_COLUMNS), rows, title=f"stsync status — connection '{report.connection}'")

    failures = report.failures
    counts = ", ".join(f"{kind} {found['count']}" for kind, found in failures.items())
    term.show(f"Open failures: {escape(counts)}")
    for kind, found in failures.items():
        for item in found["newest"]:
            who = item.get("email") or item.get("external_id") or item.get("customer_id") or item.get("delivery")
            term.show(f"  [red]✗[/] {escape(kind)}: {escape(str(who))}: {escape(item.get('error') or '')}")
    rf = report.referral_factory
    cooldown = rf.get("cooldown")
    if cooldown and cooldown.get("active"):
        why = "IP blocked" if rf.get("blocked") else "rate-limited (HTTP 429)"
        term.show(f"Referral Factory: [bold red]{why}: no call before {escape(cooldown['until'])}[/]")
    elif rf.get("rate_factor", 1.0) < 1.0:
        term.show(f"Referral Factory: [yellow]{rf['rate_factor']:.0%} of the rate[/] after a 429 this hour")
    else:
        term.show("Referral Factory: full speed, no cool-down")
    token = report.token
    if token.get("valid"):
        term.show(f"ServiceTitan token: valid for {describe_duration(token['seconds_left'])} (cached)")
    elif token.get("cached"):
        term.show(f"ServiceTitan token: expired at {escape(token['expires_at'])} (a new one is fetched on the next request)")
    else:
        term.show("ServiceTitan token: none cached")
    hooks = report.webhooks
    waiting = f"{hooks['waiting']} waiting" + (
        f", oldest {ago(hooks['oldest_age_seconds'])}" if hooks.get("oldest_age_seconds") else ""
    )
    term.show(f"Webhook deliveries: {waiting}; receiver {'running' if hooks['receiver_running'] else 'not running'}")
    if report.healthy:
        term.summary("[green]Healthy[/]: nothing needs attention.")
    else:
        term.summary("[bold red]Needs attention[/]:")
        for reason in report.attention:
            term.summary(f"  • {escape(reason)}")


JOB_COLUMNS = (
    Column("Job", Role.LABEL),
    Column("State", Role.LABEL),
    Column("Last run", Role.TEXT, min_width=14, drop_order=2),
    Column("Outcome", Role.LABEL),
    Column("When", Role.LABEL, drop_order=3),
    Column("Every", Role.LABEL, drop_order=1),
)


def _running(job: JobStatus) -> str:
    if job.running and job.state != "running":
        return f" [cyan](running, pid {job.running.get('pid')})[/]"
    return ""
