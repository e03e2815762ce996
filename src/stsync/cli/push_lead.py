"""`stsync push-lead`: leads (or referrers) become ServiceTitan bookings, exactly once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.storage.states import UNKNOWN_LABEL, AttemptOutcome, RunJob
from stsync.vocabulary import Kind

if TYPE_CHECKING:
    from stsync.cli.terminal import Terminal
    from stsync.services.push import PushReport, PushResult

INPUTS = "--email/--first-name, --file, --code, --rf-user-id or --new"
PHONE_HELP = (
    'The lead\'s phone, filed as the form field "Phone Number" (mapped by: stsync map set phone --from "meta.Phone Number").'
)


EXAMPLES = examples(
    ("stsync push-lead --new", "every referred lead of the campaign without a booking yet (cron runs this with -q)"),
    ("stsync push-lead --code ueONFmUp", "one lead, fetched from Referral Factory by its referral code"),
    ("stsync push-lead --email jane@example.com --first-name Jane --referral-code ueONFmUp", "one lead typed in"),
    ("stsync push-lead --file leads.json --dry-run", "the exact bodies it would POST, on stdout; nothing sent"),
    ("stsync --json push-lead --new", "one JSON object for a script (docs/json.md)"),
)


def register(app: typer.Typer) -> None:
    app.command(
        "push-lead",
        help=(
            "Send referred leads to ServiceTitan as bookings (never twice for one externalId). "
            f"One input: {INPUTS}."
        ),
        epilog=EXAMPLES,
        rich_help_panel=EVERYDAY,
    )(push_lead_command)


def push_lead_command(
    ctx: typer.Context,
    email: str | None = typer.Option(None, "--email", metavar="EMAIL", help="The lead's e-mail (with --first-name)."),
    first_name: str | None = typer.Option(None, "--first-name", metavar="NAME", help="The lead's first name."),
    referral_code: str | None = typer.Option(
        None, "--referral-code", metavar="CODE", help="The lead's referral code (the booking's External Id by default)."
    ),
    campaign_name: str | None = typer.Option(
        None, "--campaign-name", metavar="NAME", help="The campaign name (the booking's Source by default; fetched when omitted)."
    ),
    phone: str | None = typer.Option(None, "--phone", metavar="PHONE", help=PHONE_HELP),
    field: list[str] | None = typer.Option(
        None, "--field", metavar="K=V", help="Another lead field, K=V (e.g. meta.Last Name=Doe); repeatable."
    ),
    file: str | None = typer.Option(
        None,
        "--file",
        metavar="PATH",
        help="A Referral Factory user object, a webhook payload, or a JSON list of them; - for stdin.",
    ),
    code: str | None = typer.Option(
        None, "--code", metavar="CODE", help="Fetch the lead with this referral code from Referral Factory."
    ),
    rf_user_id: int | None = typer.Option(
        None, "--rf-user-id", metavar="ID", help="Fetch the lead with this Referral Factory user id."
    ),
    new: bool = typer.Option(False, "--new", help="Every referred lead of the campaign without a booking yet."),
    referrer: bool = typer.Option(False, "--referrer", help="Use the referrers' action and fields instead of the leads'."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the exact JSON body that would be POSTed (an object, or a list for --new and list files); "
        "send and record nothing.",
    ),
) -> None:
    from stsync.errors import UsageError

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    kind = Kind.REFERRER if referrer else Kind.LEAD

    flags = {"--email": email, "--first-name": first_name, "--referral-code": referral_code,
             "--campaign-name": campaign_name, "--phone": phone, "--field": field or None}
    given = [name for name, value in (
        ("--email/--first-name", any(v is not None for v in flags.values())),
        ("--file", file is not None),
        ("--code", code is not None),
        ("--rf-user-id", rf_user_id is not None),
        ("--new", new),
    ) if value]
    if not given:
        raise UsageError(f"nothing to push: give one input ({INPUTS})", hint="see `stsync push-lead --help`")
    if len(given) > 1:
        raise UsageError(f"give one input, not {' and '.join(given)}", hint=f"the inputs are {INPUTS}")

    # Read local input first: a malformed file is a usage error before anything is opened.
    leads: list = []
    rejected: list = []
    refused: list = []
    batch = new
    typed_fields = _parse_fields(field or [])
    if given[0] == "--email/--first-name":
        from stsync.leads import lead_from_flags

        if not (email or "").strip():
            raise UsageError(
                "--email is required: every lead needs an e-mail (the booking's contact, and how "
                "`history` and `diagnose --email` find it)",
                hint="e.g. stsync push-lead --email jane@example.com --first-name Jane --referral-code ueONFmUp",
            )

        leads = [lead_from_flags(email, first_name, referral_code=referral_code, campaign_name=campaign_name,
                                 phone=phone, fields=typed_fields)]
    elif file is not None:
        from stsync.leads import leads_from_input

        obj = _read_json(file)
        leads, rejected = leads_from_input(obj)
        batch = isinstance(obj, list) or len(leads) + len(rejected) > 1

    from stsync.services import lead_sources
    from stsync.services import push as service

    if not dry_run:
        # A run like cron's: its exit code recorded, the alerts told; --new is the scheduled one.
        app_ctx.begin_job(RunJob.PUSH, "push-lead " + given[0].split("/")[0] + (" --referrer" if referrer else ""), scheduled=new)
    conn = app_ctx.connection()
    # Checked once for the whole command: "Nothing to action", then "Setup Required".
    target = service.push_target(conn, kind)
    if target.notice is not None:
        nothing = service.PushReport(kind=kind, dry_run=dry_run, notice=target.notice)
        _record(app_ctx, nothing)
        term.warning(target.notice)
        term.info(f"→ {target.notice_hint}")
        return

    for warning in lead_sources.unread_values(target, phone=phone, fields=typed_fields):
        term.warning(warning)
    if not dry_run:
        # The campaign, once for the run: paused, draft or unknown → exit 3 before anything is read or sent.
        target = service.ready_to_create(conn, target)

    if new:
        with term.progress("Pushing new leads" if kind == Kind.LEAD else "Pushing referrers") as bar:
            report = service.push_new(conn, target, progress=bar, dry_run=dry_run)
    else:
        if code is not None or rf_user_id is not None:
            leads = [lead_sources.fetch_lead(conn, code=code, rf_user_id=rf_user_id, kind=kind, known=target.campaign)]
        else:
            if file is not None:
                leads, refused = lead_sources.own_leads(conn, leads, kind)
            leads = lead_sources.complete_leads(conn, leads, target)
        if not dry_run:
            lead_sources.record_seen(conn, leads, target)
        if batch:
            with term.progress("Pushing leads", total=len(leads)) as bar:
                report = service.push_leads(
                    conn, leads, target, progress=bar, dry_run=dry_run, rejected=rejected, refused=refused
                )
        else:
            report = service.push_leads(conn, leads, target, dry_run=dry_run, refused=refused)

    _record(app_ctx, report)
    if new and not report.results and not dry_run:
        who = "referred lead" if kind == Kind.LEAD else "referrer"
        if not term.quiet:  # -q: nothing to do, nothing said
            term.summary(f"No new {who}s to push: every {who} of campaign {conn.campaign_id} has a booking")
    else:
        _render(term, report, dry_run=dry_run, batch=batch, json_mode=app_ctx.json_mode)
    _raise_for_failures(report, batch=batch)


def _record(app_ctx: AppContext, report: PushReport) -> None:
    """The --json object: the report, its counts, and each lead that failed or whose booking is
    in doubt (key: its External Id)."""
    from stsync.cli.envelope import failure

    data = report.to_dict()
    counts = data.pop("counts")
    failures = [
        failure(r.external_id or r.lead.describe(), r.message or "failed", error=r.error, email=r.lead.email)
        for r in report.failed
    ]
    failures += [
        failure(
            r.external_id or r.lead.describe(),
            r.message or UNKNOWN_LABEL,
            error=r.error or {"type": "AnswerLost", "message": r.message or UNKNOWN_LABEL, "hint": None, "exit_code": 6},
            email=r.lead.email,
        )
        for r in report.unknown
    ]
    app_ctx.result(counts=counts, failures=failures, **data)


def _parse_fields(pairs: list[str]) -> dict[str, str]:
    from stsync.errors import UsageError

    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--field {pair!r} is not K=V", hint="e.g. --field 'meta.Last Name=Doe'")
        fields[key.strip()] = value
    return fields


def _read_json(file: str) -> Any:
    from stsync.errors import UsageError
    from stsync.webhooks.payload import UnreadableJson, parse_json

    data: bytes | str
    if file == "-":
        # Bytes: text that is not UTF-8 is the parser's to refuse, not a decoding crash here.
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read()
        where = "standard input"
    else:
        path = Path(file).expanduser()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"--file {file}: no such file") from None
        except OSError as exc:
            raise UsageError(f"--file {file}: cannot read it ({exc.__class__.__name__}: {exc})") from None
        where = str(path)
    if not data.strip():
        raise UsageError(f"{where} is empty: expected a lead as JSON")
    try:
        return parse_json(data, what=where)
    except UnreadableJson as exc:
        raise UsageError(
            str(exc), hint="pass a Referral Factory user object, a webhook payload, or a JSON list of them"
        ) from None


def _render(term: Terminal, report: PushReport, *, dry_run: bool, batch: bool, json_mode: bool) -> None:
    """stdout: each lead's line and the batch's summary (with -q: the summary and each
    failure); a dry run's stdout is the body alone, its talk on stderr."""
    from rich.markup import escape

    if dry_run:
        bodies = [r.body for r in report.results if r.body is not None]
        booked = [r for r in report.results if r.outcome == AttemptOutcome.ALREADY_BOOKED]
        if not json_mode and (batch or bodies):
            # stdout carries exactly what would be POSTed, nothing else (nothing when a single
            # lead cannot be sent or is booked already: the lines on stderr say why).
            term.data(bodies if batch else bodies[0])
        for result in report.results:
            if result.failed and batch:  # a single lead's failure is the command's error
                term.always(f"[red]✗[/] {escape(result.lead.describe())}: {escape(result.message or 'failed')}")
            elif result.outcome == AttemptOutcome.ALREADY_BOOKED:
                term.print(f"[cyan]•[/] {escape(result.lead.describe())}: {escape(result.message or '')} (#{result.booking_id})")
        term.always(
            f"Dry run: {len(bodies)} booking(s) would be sent to ServiceTitan; nothing was sent or recorded"
            + (f"; {len(booked)} already booked" if booked else "")
            + (f"; {len(report.failed)} lead(s) cannot be sent" if report.failed else "")
        )
        return
    counts = report.counts
    with_summary = batch or counts["total"] != 1
    # One print per run of ordinary lines: rich renders a thousand lines joined in a third of
    # the time it takes line by line, and this runs after the pushes, on the user's clock.
    pending: list[str] = []
    for result in report.results:
        if result.failed and not batch:
            continue  # raised as the command's error, with its hint
        line, loud = _line_for(result, escape)
        if not loud and term.quiet and with_summary:
            continue  # -q: the summary line counts them
        if not loud:
            pending.append(line)
            continue
        if pending:
            term.summary("\n".join(pending))
            pending = []
        term.summary(line)  # failures stay visible with -q: cron mail must show them
    if pending:
        term.summary("\n".join(pending))
    if with_summary and not (term.quiet and counts["total"] == 0):
        term.summary(
            f"{counts['total']} lead(s): {counts['created']} created, {counts['already_booked']} already booked, "
            f"{counts['skipped']} skipped, {counts['failed']} failed"
            + (f", {counts['unknown']} unknown — will be checked again" if counts["unknown"] else "")
        )


def _line_for(result: PushResult, escape) -> tuple[str, bool]:
    """One result as a line, and whether it is loud (a failure: shown even with -q)."""
    who = escape(result.lead.describe())
    if result.outcome == AttemptOutcome.CREATED:
        return f"[green]✓[/] {who}: created booking #{result.booking_id}", False
    if result.outcome == AttemptOutcome.ALREADY_BOOKED:
        return f"[cyan]•[/] {who}: already booked #{result.booking_id}", False
    if result.outcome == AttemptOutcome.SKIPPED:
        return f"[yellow]-[/] {who}: skipped ({escape(result.message or '')})", False
    if result.outcome == AttemptOutcome.UNKNOWN:
        # Loud, like a failure: the next run settles it, and cron mail should say so.
        return f"[magenta]?[/] {who}: {escape(result.message or 'unknown')}", True
    return f"[red]✗[/] {who}: failed: {escape(result.message or 'failed')}", True


def _raise_for_failures(report: PushReport, *, batch: bool) -> None:
    from stsync.errors import InvalidRecord, PartialFailure, TemporaryError

    failed = report.failed
    if not failed and report.unknown:
        unknown = len(report.unknown)
        raise TemporaryError(
            f"{unknown} booking(s) {UNKNOWN_LABEL}: ServiceTitan lost the answer to the create and does not list "
            "the booking by its externalId yet",
            hint="run it again later (cron does): the next run looks each one up first and creates it only if it is "
            "still absent a grace period after the answer was lost (`stsync history --failed`)",
        )
    if not failed:
        return
    if not batch and len(report.results) == 1:
        result = failed[0]
        if isinstance(result.exception, InvalidRecord):
            raise result.exception
        raise PartialFailure(
            f"the booking for {result.lead.describe()} was not created: {result.message}",
            hint="`stsync diagnose --email <e-mail>` explains it; "
            "fix the mapping (`stsync map show`) or the data, then run again",
        )
    total = len(report.results)
    raise PartialFailure(
        f"{len(failed)} of {total} lead(s) failed; the rest is done and recorded",
        hint="`stsync history --failed` shows ServiceTitan's exact errors; fix the mapping or the data, then run again",
    )
