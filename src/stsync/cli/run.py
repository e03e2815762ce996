"""`stsync run`: the three cron lines as one long-running process (a container, a systemd
service), optionally receiving webhooks too.

The schedule is ``services.scheduler``; this module adds the signals (the first SIGTERM or
Ctrl-C finishes the running steps and exits 0; a second one interrupts them, each recording
what it did), the webhook server (``--webhooks``), the periodic look at the alerts and the
Prometheus textfile, and the rendering of each step's output.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Any

import typer

from stsync import envvars
from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.storage.states import RunJob

if TYPE_CHECKING:
    from stsync.services.scheduler import Job, StepResult
    from stsync.storage.config import Config


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        help="Run the jobs on their \\[schedule] in one long-running process: push-lead --new (every 5 min), "
        "qualify (10 min), sync-customers --ongoing (15 min, --full weekly); --webhooks receives Referral "
        "Factory webhooks too. Same locks as cron (both can run). SIGTERM finishes the running steps and exits 0.",
        epilog=examples(
            ("stsync run", "the three jobs on their schedule, in the foreground (a container, a systemd service)"),
            (
                "STSYNC_WEBHOOK_TOKEN=$(openssl rand -hex 24) stsync run --webhooks --port 8080",
                "and receive Referral Factory's webhooks, with GET /metrics",
            ),
            ("stsync --log-format json run --prometheus /var/lib/node_exporter/stsync", "JSON log lines and a textfile"),
        ),
        rich_help_panel=EVERYDAY,
    )(run_command)


def run_command(
    ctx: typer.Context,
    webhooks: bool = typer.Option(
        False, "--webhooks", help="Also receive Referral Factory webhooks (as `stsync serve`), and answer GET /metrics."
    ),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="With --webhooks: the address to listen on."),
    port: int = typer.Option(
        8080, "--port", min=0, max=65535, metavar="PORT", help="With --webhooks: the port to listen on (0 picks a free one)."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        help=f"With --webhooks: the shared token. Prefer the env variable. \\[env var: {envvars.WEBHOOK_TOKEN.name}]",
    ),
    prometheus: str | None = typer.Option(
        None, "--prometheus", metavar="PATH", help="Rewrite this node-exporter textfile after each step and each minute."
    ),
) -> None:
    from stsync.errors import ConfigError
    from stsync.services.metrics import metrics_route, write_textfile
    from stsync.services.scheduler import ChildLauncher, Scheduler
    from stsync.services.status import connection_status
    from stsync.services.watching import PeriodicWatch
    from stsync.webhooks.tokens import check_token

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    webhook_token = check_token(envvars.resolve(envvars.WEBHOOK_TOKEN, option=token)) if webhooks else ""
    command = "run --webhooks" if webhooks else "run"
    app_ctx.begin_job(RunJob.RUN, command)
    conn = app_ctx.connection()
    app_ctx.log_to_stderr()
    config = conn.config
    jobs = scheduled_jobs(config, qualify_has_full=_command_has_option(ctx, "qualify", "--full"))
    if not jobs and not webhooks:
        raise ConfigError(
            "every job is off in [schedule]: `stsync run` has nothing to do",
            key_path="schedule",
            hint='give push, qualify or sync an interval (e.g. push = "5m"), or add --webhooks',
        )
    if webhooks:
        conn.require("tenant_id", "client_id", "booking_provider", "campaign_id")
        _ = (conn.servicetitan, conn.referral_factory)  # a missing secret is exit 3 now, not at the first delivery

    def write_metrics() -> None:
        if prometheus:
            write_textfile(connection_status(conn.paths, config, ledger=conn.ledger), prometheus)

    def show_output(job: str, line: str) -> None:
        from rich.markup import escape

        from stsync.logs import log_context

        with log_context(job=job):  # a JSON line says whose step spoke
            term.summary(f"[dim]\\[{escape(job)}][/] {escape(line)}")

    def after_step(result: StepResult) -> None:
        what = {0: "ok", 5: "partly failed", 7: "skipped: another run holds its lock", 130: "interrupted"}.get(
            result.exit_code, "failed"
        )
        line = f"{result.job}: `{result.command}` exited {result.exit_code} ({what}) after {result.seconds:.1f} s"
        (term.info if result.exit_code in (0, 7) else term.warning)(line)
        try:
            write_metrics()
        except ConfigError as exc:
            term.warning(str(exc))

    global_options = ["-q"] + (["--log-format", app_ctx.log_format_option] if app_ctx.log_format_option else [])
    scheduler = Scheduler(
        jobs,
        ledger=conn.ledger,
        launcher=ChildLauncher(app_ctx.config_path, global_options=global_options),
        jitter=config.schedule.jitter,
        on_output=show_output,
        on_step=after_step,
    )
    smallest = min([job.interval for job in jobs] or [60.0])
    watch = PeriodicWatch(
        conn.paths,
        config,
        every=min(60.0, smallest),
        default_config=app_ctx.is_default_config,
        after_look=write_metrics,
        ledger=conn.ledger,
    )

    server = None
    if webhooks:
        from stsync.cli.serve import delivery_observer
        from stsync.services.serve import WebhookServer

        server = WebhookServer(
            conn,
            token=webhook_token,
            host=host,
            port=port,
            observer=delivery_observer(term),
            routes={"metrics": metrics_route(conn.paths, config, conn.ledger)},
        )

    with conn.run_lock(RunJob.RUN, command=command), conn.run_lock(RunJob.SERVE, command=command) if webhooks else _nothing():
        run_id = conn.ledger.start_run(RunJob.RUN, command)
        from stsync.logs import bind

        bind(run_id=run_id)
        outcome = "failed"
        try:
            if server is not None:
                server.start()
                term.success(f"receiving webhooks on {server.url}<token>; GET /metrics with the token header")
            term.success(
                "running: "
                + ", ".join(f"{job.command} every {_every(job.interval)}" for job in jobs)
                + ". SIGTERM or Ctrl-C finishes the running steps and stops; a second one interrupts them."
            )
            with _signals(scheduler, term):
                scheduler.start()
                watch.start()
                # In slices, never one unbounded wait: a SIGTERM the kernel hands to another
                # thread only flags it, and a main thread blocked without a timeout would never
                # run the handler (stsync run went on scheduling after a service manager's stop).
                while not scheduler.stop.wait(0.5):
                    pass
                running = scheduler.running
                if running:
                    term.info(f"stopping: waiting for {', '.join(running)} to finish")
                scheduler.join()
            outcome = "ok"
        finally:
            watch.stop()
            if server is not None:
                server.stop()
            conn.ledger.finish_run(run_id, outcome, scheduler.report.counts())
    counts = scheduler.report.counts()
    app_ctx.result(counts=counts, run_id=run_id)
    if term.quiet and not counts["steps"]:
        return  # -q: nothing was done, nothing is said
    term.summary(
        f"run stopped: {counts['steps']} step(s): {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['skipped']} skipped (lock held), {counts['interrupted']} interrupted."
    )


def scheduled_jobs(config: Config, *, qualify_has_full: bool) -> list[Job]:
    """The jobs ``[schedule]`` turns on, with their full variants."""
    from stsync.services.scheduler import Job

    schedule = config.schedule
    jobs = []
    if schedule.push is not None:
        jobs.append(Job(RunJob.PUSH, ("push-lead", "--new"), schedule.push))
    if schedule.qualify is not None:
        full_qualify: tuple[str, ...] | None = None
        if qualify_has_full and schedule.full_qualify is not None:
            full_qualify = ("qualify", "--full")
        full_every = schedule.full_qualify if full_qualify else None
        jobs.append(Job(RunJob.QUALIFY, ("qualify",), schedule.qualify, full_qualify, full_every))
    if schedule.sync is not None:
        full_sync = ("sync-customers", "--ongoing", "--full") if schedule.full_sync is not None else None
        jobs.append(Job(RunJob.SYNC, ("sync-customers", "--ongoing"), schedule.sync, full_sync, schedule.full_sync))
    return jobs


def _command_has_option(ctx: typer.Context, command: str, option: str) -> bool:
    """Whether this stsync's ``command`` takes ``option`` (read from Click's tree)."""
    group: Any = ctx.find_root().command
    found = getattr(group, "commands", {}).get(command)
    return found is not None and any(option in getattr(param, "opts", ()) for param in found.params)


def _every(seconds: float) -> str:
    from stsync.durations import describe_duration

    return describe_duration(seconds)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


class _signals:
    """SIGTERM / SIGINT (Ctrl-C): the first stops scheduling and lets the running steps finish;
    the second interrupts them. Only the main thread can install handlers; elsewhere (tests
    driving it from a thread) ``scheduler.request_stop`` is the way to stop."""

    def __init__(self, scheduler: Any, term: Any) -> None:
        self.scheduler = scheduler
        self.term = term
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.scheduler.stop.is_set():
            self.scheduler.request_stop(force=True)
        else:
            self.scheduler.request_stop()

    def __enter__(self) -> _signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
