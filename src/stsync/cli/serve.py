"""`stsync serve`: an HTTP endpoint for Referral Factory's outbound webhooks.

The service (``services.serve.WebhookServer``) knows nothing of signals: this module runs it
until SIGINT or SIGTERM, then stops it — bounded: open connections are closed, the workers
get a few seconds, and what they leave stays recorded for the next start — and records the run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from stsync import envvars
from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.storage.states import DeliveryOutcome, RunJob

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.services.serve import WebhookServer
    from stsync.webhooks.deliveries import DeliveryEvent


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        help="Receive Referral Factory webhooks: a new lead becomes a booking (exactly once), "
        "a qualified lead is recorded. Needs a shared token. Every delivery is recorded before it is answered; "
        "Ctrl-C or SIGTERM stops within seconds and the next start processes what was left.",
        epilog=examples(
            (
                "STSYNC_WEBHOOK_TOKEN=$(openssl rand -hex 24) stsync serve --port 8080",
                "behind a TLS proxy; Referral Factory posts to https://hooks.example.com/hooks/<token>/lead-created",
            ),
        ),
        rich_help_panel=EVERYDAY,
    )(serve_command)


def serve_command(
    ctx: typer.Context,
    host: str = typer.Option(
        "127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on (put a TLS reverse proxy in front)."
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, metavar="PORT", help="Port to listen on (0 picks a free one)."),
    token: str | None = typer.Option(
        None,
        "--token",
        help="Shared secret: in the webhook URL (/hooks/<token>) or the X-Stsync-Token header. "
        f"Prefer the env variable. \\[env var: {envvars.WEBHOOK_TOKEN.name}]",
    ),
) -> None:
    from stsync.services.metrics import metrics_route
    from stsync.services.serve import WebhookServer
    from stsync.services.watching import PeriodicWatch
    from stsync.webhooks.tokens import check_token

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    token = check_token(envvars.resolve(envvars.WEBHOOK_TOKEN, option=token))
    app_ctx.begin_job(RunJob.SERVE, "serve")
    conn = app_ctx.connection()
    app_ctx.log_to_stderr()
    # Fail now, not at the first delivery, when the connection cannot work.
    conn.require("tenant_id", "client_id", "booking_provider", "campaign_id")
    # Build both clients now (no request yet): a missing secret is exit 3 here, not a
    # failure at the first delivery.
    _ = (conn.servicetitan, conn.referral_factory)

    def started(server: WebhookServer) -> None:
        term.success(f"listening on {server.url}<token> (also POST /hooks with the X-Stsync-Token header; GET /metrics with it)")
        if server.stats.resumed:
            term.info(f"processing {server.stats.resumed} delivery(ies) received before the last stop")
        term.info("Press Ctrl-C (or send SIGTERM) to stop; what is still queued then is processed at the next start.")

    server = WebhookServer(
        conn,
        token=token,
        host=host,
        port=port,
        observer=delivery_observer(term),
        routes={"metrics": metrics_route(conn.paths, conn.config, conn.ledger)},
    )
    watch = PeriodicWatch(conn.paths, conn.config, default_config=app_ctx.is_default_config, ledger=conn.ledger)
    with conn.run_lock(RunJob.SERVE, command="serve"):
        watch.start()
        try:
            serve_until_signalled(server, on_started=started)
        finally:
            watch.stop()
    stats = server.stats
    app_ctx.result(counts=stats.as_counts(), run_id=server.run_id)
    if term.quiet and not stats.received:
        return  # -q: nothing was done, nothing is said
    left = f", {stats.left_waiting} left for the next start" if stats.left_waiting else ""
    term.summary(
        f"serve stopped: {stats.received} delivery(ies) received, {stats.duplicates} duplicate(s), "
        f"{stats.rejected} rejected, {stats.processed} processed, {stats.failed} failed{left}."
    )


def delivery_observer(term: Terminal) -> Callable[[DeliveryEvent], None] | None:
    """Each delivery as a line for a person; None in structured mode (the log's JSON lines
    already carry each one)."""
    if term.structured:
        return None

    def show(event: DeliveryEvent) -> None:
        who = f" {event.who}" if event.who else ""
        what = event.event or "request"
        if event.stage == "received":
            if event.outcome == DeliveryOutcome.REJECTED:
                term.warning(f"{event.status} {what}: {event.message}")
            else:
                term.info(f"← {event.status} {what}{who}: {event.message}")
        elif event.outcome == DeliveryOutcome.FAILED:
            term.error(f"{what}{who}: {event.message}")
        else:
            booking = f" (booking {event.booking_id})" if event.booking_id else ""
            term.success(f"{what}{who}: {event.outcome}{booking}")

    return show


def serve_until_signalled(
    server: WebhookServer,
    *,
    stop: threading.Event | None = None,
    on_started: Callable[[WebhookServer], None] | None = None,
) -> None:
    """Run ``server`` until SIGINT/SIGTERM (or ``stop`` is set), then stop it.

    Signal handlers can only be installed from the main thread; elsewhere (tests) only
    ``stop`` ends it. The previous handlers are restored afterwards.
    """
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
        if on_started is not None:
            on_started(server)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            server.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
