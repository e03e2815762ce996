"""`stsync report [--since D] [--until D] [--by referrer|month] [--refresh] [--csv PATH|-] [--html PATH]`:
what referrals brought in, and who brought it (``services.report``).

Output: the report on stdout — Rich tables with a bar per funnel stage on a terminal, the
same as plain aligned text in a pipe (``#`` bars, no colour, no borders) — or, with ``--json``,
the one JSON object (its keys: docs/report.md). ``--csv PATH`` writes the spreadsheet rows
(``-``: on stdout, instead of the tables); ``--html PATH`` writes the self-contained page.
What was written, and the notes, go to stderr.
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from stsync.cli.choices import choice
from stsync.cli.context import AppContext
from stsync.cli.help import EVERYDAY, examples
from stsync.storage.states import RunJob
from stsync.vocabulary import ReportGroup

if TYPE_CHECKING:
    from stsync.reporting.funnel import Group, Report, Tally
    from stsync.services.report import ReferralReport

BAR_WIDTH = 32
TOP_SHOWN = 5
GROUP_WORD = choice(ReportGroup)


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        help="What referrals brought in, and who brought it: the funnel (referred leads → bookings → jobs → completed → "
        "qualified) and the revenue of the referrals that joined in a period (by sign-up day; default the last 90 "
        "days), from the ledger. --refresh reads what changed in ServiceTitan first.",
        epilog=examples(
            ("stsync report", "the funnel and the money of the last 90 days' referrals, from the ledger alone"),
            ("stsync report --since 2025-01-01 --until 2025-12-31 --by month", "a row per month the referrals joined"),
            ("stsync report --by referrer --refresh", "read what changed in ServiceTitan first; a row per referrer"),
            ("stsync report --html referrals.html --csv referrals.csv", "a page to open or e-mail, and a spreadsheet"),
        ),
        rich_help_panel=EVERYDAY,
    )(report_command)


def _day(option: str, value: str | None) -> date | None:
    from stsync.errors import UsageError

    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a date", hint=f"write it as YYYY-MM-DD, e.g. {option} 2025-01-31") from None


def report_command(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="YYYY-MM-DD",
        help="First day of the period (by the referral's sign-up day). Default: 89 days before --until.",
    ),
    until: str | None = typer.Option(
        None, "--until", metavar="YYYY-MM-DD", help="Last day of the period, included. Default: today (UTC)."
    ),
    by: ReportGroup | None = typer.Option(
        None, "--by", parser=GROUP_WORD, help="A row per referrer, or per month the referrals joined."
    ),
    refresh: bool = typer.Option(
        False, "--refresh", help="Read what changed in ServiceTitan first (qualify's incremental reads; nothing is qualified)."
    ),
    csv_path: str | None = typer.Option(
        None, "--csv", metavar="PATH|-", help="Write one CSV row per group (period, referrer or month); '-' for stdout."
    ),
    html_path: str | None = typer.Option(
        None, "--html", metavar="PATH", help="Write the report as one self-contained HTML page (no network needed to view it)."
    ),
) -> None:
    from stsync import __version__
    from stsync.errors import UsageError
    from stsync.reporting.page import page_html
    from stsync.reporting.spreadsheet import csv_text
    from stsync.services.report import referral_report
    from stsync.storage.ledger import utc_now

    app_ctx = AppContext.from_typer(ctx)
    term = app_ctx.terminal
    first, last = _day("--since", since), _day("--until", until)
    if csv_path == "-" and app_ctx.json_mode:
        raise UsageError("--csv - and --json both want stdout", hint="give --csv a file path, or leave out --json")

    conn = app_ctx.connection()
    if refresh:
        with conn.run_lock(RunJob.QUALIFY, command="report --refresh"), term.progress("Reading what changed in ServiceTitan"):
            result = referral_report(conn, since=first, until=last, by=by, refresh=True)
    else:
        result = referral_report(conn, since=first, until=last, by=by)
    # The --json object (written when the invocation ends): counts in the envelope, the rest as its keys.
    data = result.to_dict()
    app_ctx.result(counts=data.pop("counts"), **data)

    if csv_path is not None:
        text = csv_text(result.report)
        if csv_path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            _write(Path(csv_path), text, newline="")
            term.info(f"Wrote {len(result.report.groups)} row(s) to {csv_path}")
    if html_path is not None:
        page = page_html(result.report, generated_at=utc_now(), data_as_of=result.data_as_of, version=__version__)
        _write(Path(html_path), page)
        term.info(f"Wrote the report page to {html_path} (self-contained: open it, or attach it to an e-mail)")
    if not app_ctx.json_mode and csv_path != "-":
        _render(result, out=_Output(term.out if term.data_to_terminal else None))
    if result.refreshed is not None:
        reads = result.refreshed
        how = f"full read ({reads.full_reason})" if reads.full else "read what changed since the last read"
        term.info(f"ServiceTitan: {how}; {reads.requests} request(s).")


def _write(path: Path, text: str, *, newline: str | None = None) -> None:
    from stsync.errors import UsageError

    try:
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        with path.expanduser().open("w", encoding="utf-8", newline=newline) as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", hint="choose a path you can write to") from None


# -- rendering -------------------------------------------------------------------------------------


def _render(result: ReferralReport, *, out: _Output) -> None:
    """The report on stdout: Rich on a terminal, plain aligned text otherwise."""
    report = result.report
    total = report.total
    out.line(f"Referrals that joined from {report.since} to {report.until} (by sign-up day)", style="bold")
    widest = max(total.referred, 1)
    out.table(
        "The funnel",
        ["Stage", "Referrals", "", "Of the stage before", "Of referred"],
        [
            [s["label"], str(s["count"]), out.bar(s["count"], widest), _percent(s["rate_from_previous"]),
             _percent(s["rate_of_referred"])]
            for s in total.stages()
        ],
        right=(1, 3, 4),
    )
    before = total.qualified_all - total.qualified
    out.line(
        f"Qualified {total.qualified_all}" + (f" ({before} before their job was completed)" if before > 0 else "")
        + f" · held {total.held} · jobs canceled {total.canceled} · bookings dismissed {total.dismissed}"
    )
    average = total.average_per_paid_job
    out.table(
        "The money (job totals)",
        ["", "Amount"],
        [
            ["Revenue (canceled jobs left out)", _money(total.revenue_cents)],
            ["Jobs with a total", f"{total.jobs_with_total} ({total.zero_total_jobs} at $0)"],
            ["Jobs without a total yet", str(total.jobs_without_total)],
            ["Jobs with an invoice", str(total.jobs_with_invoice)],
            ["Totals of canceled jobs (not counted)", _money(total.canceled_total_cents)],
            ["Average per paid job", _money(round(average * 100)) if average is not None else "—"],
        ],
        right=(1,),
    )
    _referrers(out, "Top referrers by revenue", report.top_by_revenue[:TOP_SHOWN])
    _referrers(out, "Top referrers by completed jobs", report.top_by_completed[:TOP_SHOWN])
    if report.synced_referrers:
        _referrers(out, "Customers who became referrers (customer sync) and referred someone", report.synced_referrers)
    if report.by is not None:
        _groups(out, report)
    out.line("")
    out.line("Notes:", style="dim")
    for note in result.notes:
        out.line(f"- {note}", style="dim")
    out.flush()


def _referrers(out: _Output, title: str, groups: list[Group]) -> None:
    if not groups:
        out.line(f"{title}: none yet")
        return
    out.table(
        title,
        ["Referrer", "Referred", "Completed", "Qualified", "Revenue"],
        [[g.label, str(g.tally.referred), str(g.tally.completed), str(g.tally.qualified_all), _money(g.tally.revenue_cents)]
         for g in groups],
        right=(1, 2, 3, 4),
    )


def _groups(out: _Output, report: Report) -> None:
    rows = [_group_row(g.label, g.tally) for g in report.groups]
    rows.append(_group_row("Total", report.total))
    out.table(
        f"By {report.by}",
        [report.by.capitalize() if report.by else "", "Referred", "Booked", "Jobs", "Completed", "Qualified", "Revenue"],
        rows,
        right=(1, 2, 3, 4, 5, 6),
    )


def _group_row(label: str, t: Tally) -> list[str]:
    return [label, str(t.referred), str(t.booked), str(t.jobs), str(t.completed), str(t.qualified_all), _money(t.revenue_cents)]


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.0f}%"


def _money(cents: int) -> str:
    return f"{cents / 100:,.2f}"


class _Output:
    """Tables and lines on stdout: Rich on the terminal's data console when stdout is a
    terminal (``console``), plain aligned text in a pipe or a file (``None``)."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.terminal = console is not None
        self.lines: list[str] = []

    def bar(self, count: int, widest: int) -> Any:
        cells = round(BAR_WIDTH * count / widest) if widest else 0
        if count and not cells:
            cells = 1  # a stage with someone in it is never drawn empty
        if self.terminal:
            from rich.text import Text

            return Text("█" * cells, style="blue")
        return "#" * cells

    def line(self, text: str, *, style: str = "") -> None:
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))
        else:
            self.lines.append(text)

    def table(self, title: str, header: list[str], rows: list[list[Any]], *, right: tuple[int, ...] = ()) -> None:
        if self.console is not None:
            from rich.table import Table
            from rich.text import Text

            table = Table(title=title, title_justify="left", header_style="bold")
            for i, name in enumerate(header):
                table.add_column(name, justify="right" if i in right else "left")
            for row in rows:
                table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in row))
            self.console.print(table)
            return
        cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

        def fmt(row: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

        self.lines += ["", title, fmt(cells[0]).rstrip(), *(fmt(row).rstrip() for row in cells[1:])]

    def flush(self) -> None:
        if self.console is None:
            sys.stdout.write("\n".join(self.lines) + "\n")
            sys.stdout.flush()
