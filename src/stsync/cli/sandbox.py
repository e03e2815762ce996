"""`stsync sandbox`: run the local simulator of both APIs until Ctrl-C."""

from __future__ import annotations

import typer

from stsync.cli.context import AppContext


def register(app: typer.Typer) -> None:
    app.command(
        "sandbox",
        help="Run a local simulator of ServiceTitan and Referral Factory, and print how to point stsync at it.",
    )(sandbox_command)


def sandbox_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0 = any free port)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data and credentials (same seed, same data)."),
    customers: int = typer.Option(40, "--customers", help="ServiceTitan customers to generate."),
    leads: int = typer.Option(8, "--leads", help="Referred leads to generate in the launched campaign."),
    latency: float = typer.Option(0.0, "--latency", help="Seconds added to every API answer."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Share of API requests answered 503 before any change."),
    commit_then_500_rate: float = typer.Option(
        0.0, "--commit-then-500-rate", help="Share of API writes applied, then answered 500 (a lost answer)."
    ),
    st_per_second: int = typer.Option(60, "--st-per-second", help="ServiceTitan rate limit (calls per second)."),
    rf_per_minute: int = typer.Option(600, "--rf-per-minute", help="Referral Factory rate limit (calls per minute)."),
    token_ttl: int = typer.Option(900, "--token-ttl", help="Lifetime of ServiceTitan access tokens, in seconds."),
) -> None:
    import time

    from stsync.errors import UsageError
    from stsync.sandbox import Faults, Sandbox

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    for name, value in (("--error-rate", error_rate), ("--commit-then-500-rate", commit_then_500_rate)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be between 0 and 1, not {value}")
    for name, number in (("--customers", customers), ("--leads", leads), ("--latency", latency)):
        if number < 0:
            raise UsageError(f"{name} must not be negative")
    for name, number in (
        ("--st-per-second", st_per_second),
        ("--rf-per-minute", rf_per_minute),
        ("--token-ttl", token_ttl),
    ):
        if number < 1:
            raise UsageError(f"{name} must be at least 1")
    sb = Sandbox(
        seed=seed,
        customers=customers,
        leads=leads,
        st_per_second=st_per_second,
        rf_per_minute=rf_per_minute,
        latency=latency,
        token_ttl=token_ttl,
        faults=Faults(error_rate=error_rate, commit_then_500_rate=commit_then_500_rate, seed=seed),
        host=host,
        port=port,
    )
    try:
        sb.start()
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another port with --port (0 picks any free port)",
        ) from None
    try:
        creds = sb.credentials
        term.success(f"sandbox running at {sb.base_url} (ServiceTitan and Referral Factory); Ctrl-C stops it")
        term.info("Point stsync at it (in the shell where you run stsync):")
        for name, value in sb.env().items():
            term.info(f"  export {name}={value}")
        term.info("Then connect with the sandbox's credentials (they are fake):")
        term.info("  stsync " + " ".join(sb.connect_args()))
        term.info(
            f"Admin operations: {sb.base_url}/_sandbox/… "
            "(e.g. POST /_sandbox/bookings/<id>/convert turns a booking into a job)"
        )
        # Last: a script that waits for this object knows everything above is printed too.
        app_ctx.emit(
            {"url": sb.base_url, "env": sb.env(), "secret_env": sb.secret_env(), "credentials": creds.to_dict()}
        )
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        term.info("stopping the sandbox")
    finally:
        sb.stop()
