"""The report as one self-contained HTML page (``report --html PATH``), to open or to e-mail.

Self-contained means it loads nothing, ever: the CSS is inline, the two charts are inline SVG
written here (no script, no font, no image, no link to anywhere — not even the SVG namespace,
which HTML does not need), so it shows the same offline, in a mail client that blocks remote
content, or printed. Accessible: each chart is an ``<svg role="img">`` labelled by its
``<title>`` and ``<desc>``, each bar carries its own ``<title>`` (a tooltip, read by screen
readers), and the funnel's numbers are also a table.

``page_html(report, generated_at=…, data_as_of=…, version=…)`` → the page's text. Every value
taken from the ledger (names, e-mails) is escaped.
"""

from __future__ import annotations

from datetime import date
from html import escape

from stsync.reporting.funnel import OUTCOMES, Group, Report, Tally, cents_to_money
from stsync.storage.ledger import parse_utc

FUNNEL_WIDTH = 760
FUNNEL_LABEL = 170
FUNNEL_ROW = 46
REVENUE_HEIGHT = 290
REVENUE_BAR = 60

CSS = """
:root { --ink: #1d2433; --muted: #5b6478; --line: #dde2ea; --bar: #2f6fde; --bar2: #18a07a; --bg: #f6f8fb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 28px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; }
p.sub { color: var(--muted); margin: 0 0 20px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { flex: 1 1 180px; background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.card .value { font-size: 26px; font-weight: 650; }
.card .what { color: var(--muted); font-size: 13px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px; overflow-x: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
svg text { font: 13px -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--ink); }
svg .bar { fill: var(--bar); }
svg .bar.revenue { fill: var(--bar2); }
svg .track { fill: #edf1f7; }
svg .axis { stroke: var(--line); }
svg .muted { fill: var(--muted); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); margin-top: 16px; }
caption { text-align: left; color: var(--muted); font-size: 13px; padding: 0 0 6px; caption-side: top; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: .03em; color: var(--muted); }
tbody tr:last-child td { border-bottom: 0; }
ul.notes { color: var(--muted); font-size: 13px; padding-left: 18px; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
@media print { body { background: #fff; } figure, .card, table { break-inside: avoid; } }
"""


def money(cents: int) -> str:
    """Whole cents as the page writes an amount: ``1,234.50`` (in the tenant's currency)."""
    return f"{cents_to_money(cents):,.2f}"


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.0f}%"


def page_html(report: Report, *, generated_at: str, data_as_of: str | None, version: str) -> str:
    """The whole page (see the module docstring)."""
    total = report.total
    title = f"Referral report: {report.since.isoformat()} to {report.until.isoformat()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        "<h1>What referrals brought in</h1>",
        f'<p class="sub">Referrals that joined the campaign from {_day(report.since)} to {_day(report.until)}'
        f" (by their sign-up day). Made {_when(generated_at)}; ServiceTitan data as of "
        f"{_when(data_as_of) if data_as_of else 'never read'}.</p>",
        _cards(total),
        '<h2 id="funnel">The funnel</h2>',
        _funnel_svg(total),
        _funnel_table(total),
        _outcomes(total),
        '<h2 id="revenue">Revenue by month</h2>',
        _revenue_svg(report.months),
        _revenue_table(total),
        '<h2 id="top">Top referrers</h2>',
        _referrer_table(report.top_by_revenue, caption="By revenue", empty="No referrer's referrals brought revenue yet."),
        _referrer_table(
            report.top_by_completed, caption="By completed jobs", empty="No referrer's referrals completed a job yet."
        ),
        '<h2 id="synced">Customers who became referrers and referred someone</h2>',
        _referrer_table(
            report.synced_referrers,
            caption="ServiceTitan customers enrolled as referrers by customer sync",
            empty="None of the customers enrolled by customer sync has referred anyone in this period.",
            customer=True,
        ),
    ]
    if report.by is not None:
        parts += [f'<h2 id="groups">By {escape(report.by)}</h2>', _groups_table(report.groups, by=report.by)]
    parts += [
        '<h2 id="notes">Notes</h2>',
        '<ul class="notes">' + "".join(f"<li>{escape(note)}</li>" for note in report.notes) + "</ul>",
        f"<footer>Made by stsync {escape(version)}. This page is self-contained: it loads nothing from the network.</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _day(day: date) -> str:
    return escape(day.strftime("%d %b %Y").lstrip("0"))


def _when(iso: str) -> str:
    """A ledger timestamp as a person reads it: ``6 Dec 2026, 10:39 UTC``."""
    moment = parse_utc(iso)
    if moment is None:
        return escape(iso)
    return f"{_day(moment.date())}, {moment:%H:%M} UTC"


def _cards(total: Tally) -> str:
    cards = [
        (str(total.referred), "referred leads"),
        (str(total.completed), "jobs completed"),
        (money(total.revenue_cents), "revenue (job totals)"),
        (str(total.qualified_all), "referrals qualified"),
    ]
    return (
        '<div class="cards">'
        + "".join(f'<div class="card"><div class="value">{v}</div><div class="what">{w}</div></div>' for v, w in cards)
        + "</div>"
    )


def _funnel_svg(total: Tally) -> str:
    stages = total.stages()
    height = FUNNEL_ROW * len(stages) + 10
    track = FUNNEL_WIDTH - FUNNEL_LABEL - 150
    widest = max(total.referred, 1)
    rows = []
    for i, stage in enumerate(stages):
        y = 6 + i * FUNNEL_ROW
        width = round(track * stage["count"] / widest, 1)
        rate = "" if stage["rate_from_previous"] is None else f" ({percent(stage['rate_from_previous'])} of the stage before)"
        label = escape(stage["label"])
        rows.append(
            f'<g class="stage" data-stage="{stage["stage"]}">'
            f'<text x="0" y="{y + 22}">{label}</text>'
            f'<rect class="track" x="{FUNNEL_LABEL}" y="{y}" width="{track}" height="30" rx="4"></rect>'
            f'<rect class="bar" x="{FUNNEL_LABEL}" y="{y}" width="{width}" height="30" rx="4" data-count="{stage["count"]}">'
            f"<title>{label}: {stage['count']}{escape(rate)}</title></rect>"
            f'<text x="{FUNNEL_LABEL + track + 10}" y="{y + 20}">{stage["count"]}'
            f'<tspan class="muted"> {percent(stage["rate_of_referred"])}</tspan></text>'
            "</g>"
        )
    description = "; ".join(f"{s['label']}: {s['count']}" for s in stages)
    return (
        "<figure>"
        f'<svg id="funnel-chart" role="img" aria-labelledby="funnel-title funnel-desc" width="{FUNNEL_WIDTH}" '
        f'height="{height}" viewBox="0 0 {FUNNEL_WIDTH} {height}">'
        '<title id="funnel-title">Referral funnel</title>'
        f'<desc id="funnel-desc">{escape(description)}</desc>' + "".join(rows) + "</svg>"
        "<figcaption>Each stage counts the referrals that reached it and every stage before it; the percentage is "
        "of the referred leads.</figcaption></figure>"
    )


def _funnel_table(total: Tally) -> str:
    rows = "".join(
        f"<tr><td>{escape(s['label'])}</td><td>{s['count']}</td><td>{percent(s['rate_from_previous'])}</td>"
        f"<td>{percent(s['rate_of_referred'])}</td></tr>"
        for s in total.stages()
    )
    return (
        '<table class="funnel"><caption>The funnel in numbers</caption><thead><tr><th scope="col">Stage</th>'
        '<th scope="col">Referrals</th><th scope="col">Of the stage before</th><th scope="col">Of referred leads</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _outcomes(total: Tally) -> str:
    items = "".join(f"<li>{escape(label)}: {total.stage_count(name)}</li>" for name, label in OUTCOMES)
    before = total.qualified_all - total.qualified
    extra = f" ({before} qualified before their job was completed)" if before > 0 else ""
    return f'<ul class="notes outcomes">{items}</ul><p class="sub">Outcomes are counted each on its own{escape(extra)}.</p>'


def _revenue_svg(months: list[Group]) -> str:
    width = max(FUNNEL_WIDTH, 60 + REVENUE_BAR * len(months))
    plot_top, plot_bottom = 30, REVENUE_HEIGHT - 48
    highest = max((g.tally.revenue_cents for g in months), default=0)
    bars = []
    for i, group in enumerate(months):
        cents = group.tally.revenue_cents
        bar_height = round((plot_bottom - plot_top) * cents / highest, 1) if highest else 0
        x = 40 + i * REVENUE_BAR
        y = plot_bottom - bar_height
        name = _month_name(group.key)
        middle = x + REVENUE_BAR / 2
        year = (
            f'<text class="muted" x="{middle}" y="{plot_bottom + 34}" text-anchor="middle">{group.key[:4]}</text>'
            if i == 0 or group.key.endswith("-01")
            else ""
        )
        value = (
            f'<text class="muted" x="{middle}" y="{y - 6}" text-anchor="middle">{_short_money(cents)}</text>' if cents else ""
        )
        bars.append(
            f'<g class="month" data-month="{group.key}">'
            f'<rect class="bar revenue" x="{x + 8}" y="{y}" width="{REVENUE_BAR - 16}" height="{bar_height}" '
            f'data-cents="{cents}"><title>{name}: {money(cents)} from {group.tally.jobs_with_total} job(s)</title></rect>'
            f'<text x="{middle}" y="{plot_bottom + 18}" text-anchor="middle">{name[:3]}</text>{year}{value}'
            "</g>"
        )
    empty = (
        f'<text class="muted" x="{width / 2}" y="{(plot_top + plot_bottom) / 2}" text-anchor="middle">'
        "No revenue from these referrals yet</text>"
        if highest == 0
        else ""
    )
    description = "; ".join(f"{_month_name(g.key)}: {money(g.tally.revenue_cents)}" for g in months)
    return (
        "<figure>"
        f'<svg id="revenue-chart" role="img" aria-labelledby="revenue-title revenue-desc" width="{width}" '
        f'height="{REVENUE_HEIGHT}" viewBox="0 0 {width} {REVENUE_HEIGHT}">'
        '<title id="revenue-title">Revenue by month the referrals joined</title>'
        f'<desc id="revenue-desc">{escape(description)}</desc>'
        f'<line class="axis" x1="30" y1="{plot_bottom}" x2="{width - 10}" y2="{plot_bottom}"></line>'
        + "".join(bars)
        + empty
        + "</svg><figcaption>The job totals of each month's referrals (by the month they joined), canceled jobs "
        "left out.</figcaption></figure>"
    )


def _month_name(key: str) -> str:
    year, month = key.split("-")
    return escape(date(int(year), int(month), 1).strftime("%b %Y"))


def _short_money(cents: int) -> str:
    amount = cents / 100
    if amount >= 1_000_000:
        return f"{amount / 1_000_000:.1f}M"
    if amount >= 10_000:
        return f"{amount / 1000:.0f}k"
    if amount >= 1000:
        return f"{amount / 1000:.1f}k"
    return f"{amount:.0f}"


def _revenue_table(total: Tally) -> str:
    average = total.average_per_paid_job
    rows = [
        ("Revenue (job totals, canceled jobs left out)", money(total.revenue_cents)),
        ("Jobs with a total", str(total.jobs_with_total)),
        ("… of which $0 jobs", str(total.zero_total_jobs)),
        ("Jobs without a total yet", str(total.jobs_without_total)),
        ("Jobs with an invoice", str(total.jobs_with_invoice)),
        ("Totals of canceled jobs (not counted)", money(total.canceled_total_cents)),
        ("Average per paid job", money(round(average * 100)) if average is not None else "—"),
    ]
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="revenue"><caption>The money</caption><tbody>{body}</tbody></table>'


def _referrer_table(groups: list[Group], *, caption: str, empty: str, customer: bool = False) -> str:
    if not groups:
        return f'<p class="sub">{escape(caption)}: {escape(empty)}</p>'
    head = "<th scope=\"col\">Referrer</th>" + ('<th scope="col">Customer</th>' if customer else "")
    head += "".join(f'<th scope="col">{h}</th>' for h in ("Referred", "Booked", "Jobs", "Completed", "Qualified", "Revenue"))
    rows = []
    for g in groups:
        t = g.tally
        cells = [escape(g.label)]
        if customer:
            cells.append(f"#{g.referrer.customer_id}" if g.referrer is not None and g.referrer.customer_id else "")
        cells += [str(t.referred), str(t.booked), str(t.jobs), str(t.completed), str(t.qualified_all), money(t.revenue_cents)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        f'<table class="referrers"><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _groups_table(groups: list[Group], *, by: str) -> str:
    head = f'<th scope="col">{escape(by.capitalize())}</th>' + "".join(
        f'<th scope="col">{h}</th>' for h in ("Referred", "Booked", "Jobs", "Completed", "Qualified", "Revenue")
    )
    rows = "".join(
        f"<tr><td>{escape(g.label)}</td><td>{g.tally.referred}</td><td>{g.tally.booked}</td><td>{g.tally.jobs}</td>"
        f"<td>{g.tally.completed}</td><td>{g.tally.qualified_all}</td><td>{money(g.tally.revenue_cents)}</td></tr>"
        for g in groups
    )
    return f'<table class="groups"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
