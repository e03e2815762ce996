"""The report's page and spreadsheet (stsync.reporting.page, .spreadsheet): what they hold,
what they escape, and that they never reach out."""

from __future__ import annotations

import csv
import io
import re
from datetime import date

from stsync.reporting.funnel import Referral, Referrer, build_report
from stsync.reporting.page import page_html
from stsync.reporting.spreadsheet import COLUMNS, csv_text

HOSTILE = Referrer(key="rf:7", rf_user_id=7, email='eve"@example.com', name="<script>alert('x')</script>")
SYNCED = Referrer(key="rf:8", rf_user_id=8, email="cust@example.com", customer_id=10008)


def referrals() -> list[Referral]:
    return [
        Referral("A", date(2025, 1, 5), HOSTILE, booked=True, job=True, completed=True, qualified=True, total_cents=125_050),
        Referral("B", date(2025, 3, 9), SYNCED, booked=True, job=True, completed=True, total_cents=0, invoiced=True),
        Referral("C", date(2025, 3, 10), None, booked=True, dismissed=True),
        Referral("D", date(2025, 3, 11), SYNCED, booked=True, job=True, canceled=True, total_cents=9_900),
    ]


def page(by: str | None = "referrer") -> str:
    report = build_report(referrals(), since=date(2025, 1, 1), until=date(2025, 4, 30), by=by)
    report.notes = ["Revenue is each job's total <b>, not the invoice's."]
    return page_html(report, generated_at="2026-12-06T10:00:00.000Z", data_as_of=None, version="9.9")


def test_the_page_loads_nothing_and_escapes_what_the_ledger_holds():
    text = page()
    assert "//" not in text and "url(" not in text and "@import" not in text
    assert "<script" not in text and "&lt;script&gt;" in text and "eve&quot;@example.com" in text
    assert "<b>" not in text and "&lt;b&gt;" in text
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text


def test_the_page_draws_the_funnel_and_every_month_of_the_period():
    text = page()
    funnel = re.search(r'<svg id="funnel-chart".*?</svg>', text, re.S).group(0)
    assert [int(n) for n in re.findall(r'data-count="(\d+)"', funnel)] == [4, 4, 3, 2, 1]
    assert 'aria-labelledby="funnel-title funnel-desc"' in funnel and "Referred leads: 4" in funnel
    revenue = re.search(r'<svg id="revenue-chart".*?</svg>', text, re.S).group(0)
    assert re.findall(r'data-month="([\d-]+)"', revenue) == ["2025-01", "2025-02", "2025-03", "2025-04"]
    assert [int(n) for n in re.findall(r'data-cents="(\d+)"', revenue)] == [125_050, 0, 0, 0]  # $0 and canceled add nothing
    assert "1,250.50" in text and "ServiceTitan data as of never read" in text
    assert "#10008" in text  # the synced customer who referred
    assert '<h2 id="groups">By referrer</h2>' in text


def test_a_period_without_revenue_says_so_rather_than_drawing_nothing():
    report = build_report([], since=date(2025, 1, 1), until=date(2025, 1, 31), by=None)
    text = page_html(report, generated_at="2026-12-06T10:00:00.000Z", data_as_of="2026-12-05T09:00:00.000Z", version="9.9")
    assert "No revenue from these referrals yet" in text and "5 Dec 2026, 09:00 UTC" in text
    assert '<h2 id="groups">' not in text


def test_the_spreadsheet_has_a_row_per_group_that_adds_up():
    for by, keys in ((None, ["2025-01-01..2025-04-30"]), ("month", ["2025-01", "2025-02", "2025-03", "2025-04"]),
                     ("referrer", ["rf:8", "rf:7", "none"])):
        report = build_report(referrals(), since=date(2025, 1, 1), until=date(2025, 4, 30), by=by)
        rows = list(csv.DictReader(io.StringIO(csv_text(report))))
        assert tuple(rows[0]) == COLUMNS
        assert [row["group"] for row in rows] == keys
        assert {row["group_by"] for row in rows} == {by or "period"}
        assert sum(int(row["referred"]) for row in rows) == 4 and sum(int(row["completed"]) for row in rows) == 2
        assert sum(float(row["revenue"]) for row in rows) == 1250.50
        assert sum(float(row["canceled_total"]) for row in rows) == 99.0
    by_referrer = list(csv.DictReader(io.StringIO(csv_text(build_report(referrals(), since=date(2025, 1, 1),
                                                                        until=date(2025, 4, 30), by="referrer")))))
    assert by_referrer[0]["referrer_customer_id"] == "10008" and by_referrer[1]["referrer_name"] == HOSTILE.name
