"""`stsync serve`: an HTTP endpoint for Referral Factory's outbound webhooks."""

from __future__ import annotations

from typing import Optional

import typer

from stsync import envvars
from stsync.cli.context import AppContext
from stsync.storage.states import DeliveryOutcome, RunJob


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        help="Receive Referral Factory webhooks: a new lead becomes a booking (exactly once), "
        "a qualified lead is recorded. Needs a shared token; Ctrl-C or SIGTERM finishes the queue and exits.",
    )(serve_command)


def serve_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (put a TLS reverse proxy in front)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port to listen on (0 picks a free one)."),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        help="Shared secret: in the webhook URL (/hooks/<token>) or the X-Stsync-Token header. "
        f"Prefer the env variable. \\[env var: {envvars.WEBHOOK_TOKEN.name}]",
    ),
) -> None:
    from stsync.services.webhooks import DeliveryEvent, WebhookServer, check_token, serve_until_signalled

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    token = check_token(envvars.resolve(envvars.WEBHOOK_TOKEN, option=token))
    conn = app_ctx.connection()
    # Fail now, not at the first delivery, when the connection cannot work.
    conn.require("tenant_id", "client_id", "booking_provider", "campaign_id")
    # Build both clients now (no request yet): a missing secret is exit 3 here, not a
    # failure at the first delivery.
    _ = (conn.servicetitan, conn.referral_factory)

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

    def started(server: WebhookServer) -> None:
        term.success(f"listening on {server.url}<token> (also POST /hooks with the X-Stsync-Token header)")
        term.info("Press Ctrl-C (or send SIGTERM) to stop; queued deliveries are finished first.")

    server = WebhookServer(conn, token=token, host=host, port=port, observer=show)
    with conn.run_lock(RunJob.SERVE, command="serve"):
        serve_until_signalled(server, on_started=started)
    stats = server.stats
    term.summary(
        f"serve stopped: {stats.received} delivery(ies) received, {stats.duplicates} duplicate(s), "
        f"{stats.rejected} rejected, {stats.processed} processed, {stats.failed} failed."
    )
    app_ctx.emit({"ok": True, "run_id": server.run_id, "counts": stats.as_counts()})
