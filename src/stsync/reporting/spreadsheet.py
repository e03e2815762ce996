"""The report as spreadsheet rows (``report --csv PATH|-``): one row per group — the period,
each referrer (``--by referrer``) or each month (``--by month``) — with every stage count, every
outcome and the money. The rows of a ``--by`` add up to the period's row (no total row is
added: a spreadsheet sums them).

Columns (``COLUMNS``): ``group_by`` (period, referrer, month), ``group`` (the period
``since..until``, the referrer's key ``rf:<id>`` / ``email:<e-mail>`` / ``code:<code>`` /
``none``, or ``YYYY-MM``), ``label``, the referrer's ``referrer_rf_user_id``,
``referrer_email``, ``referrer_name``, ``referrer_customer_id`` (a customer enrolled by
customer sync), the funnel ``referred``, ``booked``, ``jobs``, ``completed``, ``qualified``
(cumulative stages), the outcomes ``qualified_all``, ``held``, ``canceled``, ``dismissed``,
the jobs ``jobs_with_total``, ``zero_total_jobs``, ``jobs_without_total``,
``jobs_with_invoice``, and the money as decimals with two places: ``revenue`` (job totals,
canceled jobs left out) and ``canceled_total``.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from stsync.reporting.funnel import Group, Report, cents_to_money

COLUMNS = (
    "group_by",
    "group",
    "label",
    "referrer_rf_user_id",
    "referrer_email",
    "referrer_name",
    "referrer_customer_id",
    "referred",
    "booked",
    "jobs",
    "completed",
    "qualified",
    "qualified_all",
    "held",
    "canceled",
    "dismissed",
    "jobs_with_total",
    "zero_total_jobs",
    "jobs_without_total",
    "jobs_with_invoice",
    "revenue",
    "canceled_total",
)


def csv_rows(report: Report) -> list[dict[str, Any]]:
    """The rows, each a dict of ``COLUMNS``."""
    group_by = report.by or "period"
    return [_row(group_by, group) for group in report.groups]


def _row(group_by: str, group: Group) -> dict[str, Any]:
    referrer = group.referrer
    tally = group.tally
    row: dict[str, Any] = {
        "group_by": group_by,
        "group": group.key,
        "label": group.label,
        "referrer_rf_user_id": referrer.rf_user_id if referrer is not None else None,
        "referrer_email": referrer.email if referrer is not None else None,
        "referrer_name": referrer.name if referrer is not None else None,
        "referrer_customer_id": referrer.customer_id if referrer is not None else None,
    }
    counts = tally.counts()
    for column in COLUMNS[7:-2]:
        row[column] = counts[column]
    row["revenue"] = f"{cents_to_money(tally.revenue_cents):.2f}"
    row["canceled_total"] = f"{cents_to_money(tally.canceled_total_cents):.2f}"
    return row


def csv_text(report: Report) -> str:
    """The rows as CSV (RFC 4180: a header, commas, CRLF line ends, quoted where needed)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()
