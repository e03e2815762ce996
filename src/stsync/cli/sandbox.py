"""`stsync sandbox`: run the local simulator of both APIs until Ctrl-C."""

from __future__ import annotations

import sys

import typer

from stsync.cli.context import AppContext
from stsync.cli.help import TOOLS, examples

# The closed set of --variant spellings with one line each, equal to
# stsync.sandbox.variants.describe() (tests/sandbox/test_cli_sandbox.py checks it): importing the
# sandbox here would slow the start of every command.
VARIANTS = (
    (
        "rf-cursor-paging",
        "RF lists and search page by an opaque cursor in links.next; no meta.last_page; page=N is ignored",
    ),
    ("rf-search-refuses-type", "RF search answers 422 to a filter on the type field"),
    ("rf-search-max-per-page[=N]", "RF search answers 422 to a per_page above N (bare name: 100)"),
    ("rf-mixed-meta", "some RF users carry list or object meta[].value, and may be given them"),
    (
        "lookup-lag[=N]",
        "a new booking is not listed by ?externalId=, a new RF user not found by search, for N s (bare name: 5)",
    ),
    ("html-route-404", "a path outside both APIs answers a proxy's HTML 404 page"),
    ("st-429[=STYLE]", "ST 429 without Retry-After: apim-body (bare name: the gateway's JSON body) or bare (no body)"),
    ("st-gateway-401", "a missing or wrong ST-App-Key gets the API gateway's 401 about a subscription key"),
    ("token-per-minute[=N]", "ST's token endpoint answers 429 past N token requests a minute (bare name: 10)"),
    (
        "refuse-invalid-existing-custom-fields",
        "a customer PATCH echoing an invalid custom-field value the customer holds is refused",
    ),
)
HELP = "\n\n".join(
    [
        "Run a local simulator of ServiceTitan and Referral Factory, and print how to point stsync at it. "
        "GET <url>/_sandbox/ lists its admin operations.",
        "Variants (--variant NAME, repeatable; every = all at once; docs/sandbox.md has their sources):",
        *(f"[bold]{name}[/]: {text}" for name, text in VARIANTS),
    ]
)


def register(app: typer.Typer) -> None:
    app.command(
        "sandbox",
        help=HELP,
        epilog=examples(
            ("stsync sandbox --port 8765 --customers 500", "then copy the export and connect lines it prints"),
            ("stsync sandbox --variant rf-cursor-paging --error-rate 0.05", "another reading of the API, with faults"),
        ),
        rich_help_panel=TOOLS,
    )(sandbox_command)


def sandbox_command(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8765, "--port", help="Port to listen on (0 = any free port)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data and credentials (same seed, same data)."),
    customers: int = typer.Option(40, "--customers", help="ServiceTitan customers to generate."),
    leads: int = typer.Option(8, "--leads", help="Referred leads to generate in the launched campaign."),
    bookings: int = typer.Option(
        0, "--bookings", help="Bookings with a past to generate (open, dismissed, jobs in every state)."
    ),
    variant: list[str] = typer.Option(
        [], "--variant", metavar="NAME[=VALUE]", help="A variant of the API contracts, listed above (repeatable)."
    ),
    latency: float = typer.Option(0.0, "--latency", help="Seconds added to every API answer."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Share of API requests answered 503 before any change."),
    commit_then_500_rate: float = typer.Option(
        0.0, "--commit-then-500-rate", help="Share of API writes applied, then answered 500 (a lost answer)."
    ),
    maintenance_rate: float = typer.Option(
        0.0,
        "--maintenance-rate",
        help='Share of ServiceTitan requests answered 409 "The service is suspended for maintenance".',
    ),
    st_per_second: int = typer.Option(60, "--st-per-second", help="ServiceTitan rate limit (calls per second)."),
    rf_per_minute: int = typer.Option(600, "--rf-per-minute", help="Referral Factory rate limit (calls per minute)."),
    token_ttl: int = typer.Option(900, "--token-ttl", help="Lifetime of ServiceTitan access tokens, in seconds."),
) -> None:
    import shlex
    import time

    from stsync.errors import UsageError
    from stsync.sandbox import Faults, Sandbox, Variants

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    for name, value in (
        ("--error-rate", error_rate),
        ("--commit-then-500-rate", commit_then_500_rate),
        ("--maintenance-rate", maintenance_rate),
    ):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be between 0 and 1, not {value}")
    for name, number in (
        ("--customers", customers),
        ("--leads", leads),
        ("--bookings", bookings),
        ("--latency", latency),
    ):
        if number < 0:
            raise UsageError(f"{name} must not be negative")
    for name, number in (
        ("--st-per-second", st_per_second),
        ("--rf-per-minute", rf_per_minute),
        ("--token-ttl", token_ttl),
    ):
        if number < 1:
            raise UsageError(f"{name} must be at least 1")
    try:
        variants = Variants.parse(variant)
    except ValueError as exc:
        raise UsageError(f"--variant: {exc}", hint="`stsync sandbox --help` lists the variants") from None
    sb = Sandbox(
        seed=seed,
        customers=customers,
        leads=leads,
        bookings=bookings,
        variants=variants,
        st_per_second=st_per_second,
        rf_per_minute=rf_per_minute,
        latency=latency,
        token_ttl=token_ttl,
        faults=Faults(
            error_rate=error_rate,
            commit_then_500_rate=commit_then_500_rate,
            maintenance_rate=maintenance_rate,
            seed=seed,
        ),
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
        if variants.names():
            term.info("Variants: " + ", ".join(variants.names()))
        term.info("Point stsync at it (in the shell where you run stsync):")
        # Commands to copy go out as plain lines, never wrapped by the terminal renderer: a
        # hard line break inside them would break the copy at a narrow terminal.
        for variable, setting in sb.env().items():
            _plain(term, f"  export {variable}={shlex.quote(setting)}")
        term.info("Then connect with the sandbox's credentials (they are fake):")
        _plain(term, "  " + shlex.join(["stsync", *sb.connect_args()]))
        term.info(f"Admin operations: GET {sb.base_url}/_sandbox/ lists them")
        # Last: a script that waits for this object knows everything above is printed too.
        app_ctx.result(
            url=sb.base_url,
            env=sb.env(),
            secret_env=sb.secret_env(),
            credentials=creds.to_dict(),
            variants=variants.names(),
            admin=sb.base_url + "/_sandbox/",
        )
        app_ctx.emit_now()
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        term.info("stopping the sandbox")
    finally:
        sb.stop()


def _plain(term, line: str) -> None:
    if not term.quiet:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
