"""`stsync demo`: the whole job on an in-process sandbox, with no credentials.

It ends with the report an owner reads (``stsync report``: the funnel and the revenue of the
campaign's referrals, one job completed with a total). It runs the very commands an admin,
support and cron would run — printed as `$ stsync …`
before each — against a simulator of both APIs over local sockets, in a temporary config
and state directory (removed afterwards unless ``--keep``). Nothing touches the OS keyring.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.text import Text

from stsync import envvars
from stsync.cli.context import AppContext
from stsync.cli.help import TOOLS, examples
from stsync.cli.tables import Column, Role
from stsync.credentials import SECRETS


def register(app: typer.Typer) -> None:
    app.command(
        "demo",
        help="Run the whole job on a local sandbox (no credentials needed).",
        epilog=examples(
            ("stsync demo", "connect, map, validate, push, sync, qualify, diagnose — against a simulator"),
            ("stsync demo --keep", "keep the demo's config and state directory to look at"),
        ),
        rich_help_panel=TOOLS,
    )(demo_command)


@dataclass
class Step:
    title: str
    argv: list[str]
    code: int | None = None
    seconds: float = 0.0


def demo_command(
    ctx: typer.Context,
    keep: bool = typer.Option(False, "--keep", help="Keep the demo's config and state directory afterwards."),
    customers: int = typer.Option(60, "--customers", help="ServiceTitan customers in the sandbox."),
    leads: int = typer.Option(6, "--leads", help="Referred leads waiting in the campaign."),
) -> None:
    from rich.panel import Panel
    from rich.rule import Rule

    from stsync.cli.app import run
    from stsync.sandbox import Sandbox

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="stsync-demo-"))
    term.print(
        Panel.fit(
            "A simulated ServiceTitan tenant and Referral Factory campaign are starting on this machine.\n"
            "Each step below is a real stsync command; nothing leaves localhost.",
            title="stsync demo",
        )
    )
    steps: list[Step] = []
    summary: dict = {}
    try:
        with Sandbox(customers=customers, leads=leads, seed=7) as sandbox, _demo_environment(workdir, sandbox) as cfg:
            creds = sandbox.credentials
            baseline = _summary(sandbox)
            plan = [
                Step(
                    "Connect: verify credentials, store them, write the default mapping",
                    [
                        "connect", "--environment", "integration",
                        "--tenant-id", str(creds.tenant_id), "--client-id", creds.client_id,
                        "--client-secret", creds.client_secret, "--app-key", creds.app_key,
                        "--booking-provider", str(creds.booking_provider),
                        "--rf-api-key", creds.rf_api_key, "--campaign-id", str(creds.campaign_id),
                        "--secrets-store", "file",
                    ],
                ),
                Step("Review the mapping (the setup guide's Step 5 table)", ["map", "show"]),
                Step(
                    "Qualify referrals when their job is Completed (Step 6)",
                    ["map", "qualify", "job-status", "--status", "Completed"],
                ),
                Step("Validate the setup, live", ["validate", "--online"]),
                Step("Push the campaign's new referred leads as bookings", ["push-lead", "--new"]),
                Step("Push them again: nothing is booked twice", ["push-lead", "--new"]),
                Step("Sync ServiceTitan customers as referrers, with return fields", ["sync-customers", "--once"]),
                Step("Qualify: nothing yet, no booking has become a job", ["qualify"]),
            ]
            for step in plan:
                if not _run_step(term, run, step, steps, cfg):
                    break
            else:
                bookings = sorted(sandbox.bookings(), key=lambda b: b["id"])
                if bookings:
                    booking = bookings[0]
                    term.print(Rule(style="dim"))
                    term.print(
                        f"[bold]ServiceTitan side:[/] a CSR converts booking {booking['id']} "
                        f"({booking['name']}) into a job, and the technician completes it ($1,250.00)."
                    )
                    job = sandbox.convert_booking_to_job(booking["id"])
                    sandbox.complete_job(job["id"], total="1250.00")
                    if len(bookings) > 2:
                        term.print(
                            f"Booking {bookings[1]['id']} becomes a job scheduled for next week; "
                            f"booking {bookings[2]['id']} is dismissed."
                        )
                        sandbox.convert_booking_to_job(bookings[1]["id"])
                        sandbox.dismiss_booking(bookings[2]["id"])
                    since = min(
                        (u["signed_up_at"][:10] for u in sandbox.rf_users(campaign_id=creds.campaign_id, type="person_invited")),
                        default=None,
                    )
                    later = [
                        Step("Qualify: the referral whose job completed is qualified", ["qualify"]),
                        Step("Troubleshooting checklist", ["diagnose"]),
                        Step("The ledger: every push, newest first", ["history", "--limit", "5"]),
                        Step(
                            "What referrals brought in: the funnel and the revenue",
                            ["report", "--refresh", *(["--since", since] if since else [])],
                        ),
                    ]
                    for step in later:
                        if not _run_step(term, run, step, steps, cfg):
                            break
                # What the demo did, not what the seeded campaign already held.
                summary = {key: value - baseline[key] for key, value in _summary(sandbox).items()}
    finally:
        if keep:
            kept = kept_files(workdir)
            term.info(
                f"kept the demo's files in {workdir}\n"
                f"  the config {kept['config']} and the state directory {kept['state_dir']} (ledger, log, secrets).\n"
                "  The simulator stopped with the demo, so use them offline, e.g.:\n"
                + "\n".join(f"    {command}" for command in kept["commands"])
                + f"\n  Remove them with: {kept['remove']}"
            )
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    failed = [s for s in steps if s.code not in (0, None)]
    rows = [
        [
            step.title,
            _short("stsync " + _shown(step.argv)),
            Text("✓", style="green") if step.code == 0 else Text(f"exit {step.code}", style="red"),
            f"{step.seconds:.1f}s",
        ]
        for step in steps
    ]
    term.table(list(SUMMARY_COLUMNS), rows, title="Demo summary")
    if not failed:
        term.summary(
            f"[green]All {len(steps)} steps passed[/] in {time.monotonic() - started:.1f}s: "
            f"{summary['bookings']} bookings created, {summary['referrers']} customers joined as referrers "
            f"({summary['customers_with_link']} carry a referral link: a household shares one), "
            f"{summary['return_fields']} return fields written, {summary['qualified']} referral(s) qualified."
        )
        term.summary("Next: `stsync connect` with your own credentials (see README), or `stsync sandbox` to explore.")
    counts = {"steps": len(steps), "steps_failed": len(failed), **(summary if not failed else {})}
    app_ctx.result(
        counts=counts,
        steps=[{"title": s.title, "argv": _redacted(s.argv), "exit_code": s.code, "seconds": round(s.seconds, 3)} for s in steps],
        summary=summary if not failed else None,
        kept=kept_files(workdir) if keep else None,
    )
    if failed:
        from stsync.errors import CommandFailed

        step = failed[0]
        raise app_ctx.exit_with(
            CommandFailed(f"demo step {steps.index(step) + 1} ({step.title}) exited {step.code}", exit_code=step.code or 1)
        )


SUMMARY_COLUMNS = (
    Column("Step", Role.TEXT, min_width=20, drop_order=2),
    Column("Command", Role.TEXT, min_width=24),
    Column("Result", Role.LABEL),
    Column("Time", Role.LABEL, drop_order=1),
)


def kept_files(workdir: Path) -> dict:
    """What ``--keep`` kept and the commands that read it: the demo's own config and state
    directory (its ledger, log and file-store secrets), offline — the simulator is gone."""
    config, state = workdir / "demo.toml", workdir / "state"
    prefix = f"{envvars.STATE_DIR.name}={shlex.quote(str(state))} stsync --config {shlex.quote(str(config))}"
    return {
        "dir": str(workdir),
        "config": str(config),
        "state_dir": str(state),
        "commands": [f"{prefix} history", f"{prefix} diagnose --offline", f"{prefix} map show"],
        "remove": f"rm -rf {shlex.quote(str(workdir))}",
    }


def _run_step(term, run, step: Step, done: list[Step], cfg: Path) -> bool:
    from rich.rule import Rule

    term.print(Rule(f"[bold]{len(done) + 1}. {step.title}[/]", align="left"))
    term.print(f"[cyan]$ stsync {_shown(step.argv)}[/]")
    started = time.monotonic()
    if term.json_mode:
        # stdout is the demo's JSON object alone: each step's output is talk here.
        with contextlib.redirect_stdout(sys.stderr):
            step.code = run(["--config", str(cfg), *step.argv])
    else:
        step.code = run(["--config", str(cfg), *step.argv])
    step.seconds = time.monotonic() - started
    done.append(step)
    if step.code != 0:
        term.error(f"step {len(done)} exited {step.code}")
        return False
    return True


def _redacted(argv: list[str]) -> list[str]:
    """The command as shown: secrets are the sandbox's, but they still are not shown."""
    hidden = {"--client-secret", "--app-key", "--rf-api-key"}
    out: list[str] = []
    redact_next = False
    for arg in argv:
        out.append("***" if redact_next else arg)
        redact_next = arg in hidden
    return out


def _shown(argv: list[str]) -> str:
    return " ".join(_redacted(argv))


def _short(command: str, limit: int = 40) -> str:
    """A step's command in the summary table (each step printed it whole above)."""
    return command if len(command) <= limit else command[: limit - 2].rstrip() + " …"


@contextmanager
def _demo_environment(workdir: Path, sandbox) -> Iterator[Path]:
    """Point stsync at the sandbox and at a throwaway state dir, then restore the environment."""
    env = {envvars.STATE_DIR.name: str(workdir / "state"), **sandbox.env()}
    # Secrets given to `connect` must be the ones stored, not ones inherited from the shell.
    drop = (*(secret.env_var.name for secret in SECRETS), envvars.CONFIG.name)
    saved = {k: os.environ.get(k) for k in (*env, *drop)}
    os.environ.update(env)
    for key in drop:
        os.environ.pop(key, None)
    try:
        yield workdir / "demo.toml"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _summary(sandbox) -> dict:
    state = sandbox.snapshot()
    customers = state["servicetitan"]["customers"]
    return_fields = sum(
        1
        for c in customers
        for f in c.get("customFields", [])
        if f.get("name") in ("Referral Link", "Referral Code") and f.get("value")
    )
    with_link = sum(
        1 for c in customers if any(f.get("name") == "Referral Link" and f.get("value") for f in c.get("customFields", []))
    )
    rf_users = state["referral_factory"]["users"]
    return {
        "bookings": len(state["servicetitan"]["bookings"]),
        "referrers": sum(1 for u in rf_users if u.get("type") == "person_referring" and u.get("source") == "Api"),
        "customers_with_link": with_link,
        "return_fields": return_fields,
        "qualified": sum(1 for u in rf_users if u.get("qualified_at")),
    }

