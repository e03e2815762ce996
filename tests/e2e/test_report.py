"""`stsync report`: the real CLI against the sandbox, its numbers checked against what the
sandbox itself holds — its referred leads, its bookings and jobs, who is qualified — computed
here, independently of stsync's ledger and arithmetic.

The world: the seeded campaign's leads, booked by the seeded booking history (open for ever,
dismissed, converted, completed with a total, $0, canceled after completion, Completed for
five seconds) — plus leads referred by ServiceTitan customers that ``sync-customers`` enrolled
as referrers, whose jobs the test completes (one with a total, one at $0) or cancels.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
from sandbox_world import raise_limits

from stsync.reporting.spreadsheet import COLUMNS

pytestmark = pytest.mark.e2e

RATE = 5_000
SINCE, UNTIL = date(2025, 1, 1), date(2025, 12, 31)
PERIOD = ("--since", SINCE.isoformat(), "--until", UNTIL.isoformat())


@pytest.fixture
def world(make_sandbox, cli, isolated, monkeypatch):
    """A campaign with a past, pushed and qualified; → the sandbox."""
    sb = make_sandbox(leads=30, bookings=30, customers=8, st_per_second=RATE, rf_per_minute=600_000)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    raise_limits(st_per_second=RATE, rf_per_minute=600_000)
    assert cli("map", "qualify", "job-status", "--status", "Completed").exit_code == 0
    synced = cli("--json", "sync-customers", "--once")
    assert synced.exit_code == 0, str(synced)
    enrolled = [u for u in sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_referring") if u["source"] == "Api"]
    assert len(enrolled) >= 2
    # Customers who became referrers, then referred friends.
    sb.add_leads(3, referrer_email=enrolled[0]["email"], signed_up_at="2025-10-03")
    sb.add_leads(1, referrer_email=enrolled[1]["email"], signed_up_at="2025-11-13")
    pushed = cli("--json", "push-lead", "--new")
    assert pushed.exit_code == 0, str(pushed)
    friends = sorted(
        (b for b in sb.bookings() if b["externalId"] in {u["code"] for u in sb.rf_users() if "2025-10" <= u["signed_up_at"] < "2025-12"}),
        key=lambda b: b["id"],
    )
    assert len(friends) == 4  # those of October and November
    first = sb.convert_booking_to_job(friends[0]["id"])
    sb.complete_job(first["id"], total="1999.99")
    second = sb.convert_booking_to_job(friends[1]["id"])
    sb.complete_job(second["id"], total="0")
    third = sb.convert_booking_to_job(friends[2]["id"])
    sb.complete_job(third["id"], total="300.50")
    sb.cancel_job(third["id"], memo="refund")
    qualified = cli("--json", "qualify")
    assert qualified.exit_code == 0, str(qualified)
    # Two more friends join, but ServiceTitan refuses stsync (a rotated client secret): seen,
    # not pushed — referred leads all the same. The new secret then lets stsync in again.
    sb.add_leads(2, referrer_email=enrolled[0]["email"], signed_up_at="2025-12-01")
    sb.expire_tokens()
    secret = sb.rotate_client_secret()
    refused = cli("push-lead", "--new")
    assert refused.exit_code == 4, str(refused)
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", secret)
    return sb


# -- what the sandbox says, computed here --------------------------------------------------------


def joined_on(user: dict) -> date:
    try:
        return date.fromisoformat(user["signed_up_at"])
    except ValueError:  # e.g. the seed's 2025-02-29: stsync places such a lead by the day it saw it
        return datetime.now(UTC).date()


def expected(sb, since: date = SINCE, until: date = UNTIL) -> dict:
    """The funnel, outcomes and money of the sandbox's referrals, from the sandbox's own state."""
    provider = sb.credentials.booking_provider
    bookings: dict[str, dict] = {}
    for booking in sorted(sb.bookings(), key=lambda b: b["id"]):
        if booking["bookingProviderId"] == provider:
            bookings.setdefault(booking["externalId"], booking)
    jobs = {job["id"]: job for job in sb.jobs()}
    leads = [u for u in sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")
             if since <= joined_on(u) <= until]
    total: dict[str, Decimal | int] = defaultdict(int)
    per_referrer: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    per_month: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for user in leads:
        booking = bookings.get(user["code"])
        job = jobs.get(booking["jobId"]) if booking is not None and booking.get("jobId") else None
        canceled = job is not None and job["jobStatus"] == "Canceled"
        completed = job is not None and not canceled and bool(job["completedOn"] or job["jobStatus"] == "Completed")
        qualified = sb.qualified(user["id"])
        counted = {
            "referred": 1,
            "booked": booking is not None,
            "jobs": job is not None,
            "completed": completed,
            "qualified": completed and qualified,
            "qualified_all": qualified,
            "canceled": canceled,
            "dismissed": booking is not None and job is None and booking["status"] == "Dismissed",
            "jobs_with_invoice": job is not None and job["invoiceId"] is not None,
            "jobs_with_total": job is not None and not canceled and job["total"] is not None,
            "zero_total_jobs": job is not None and not canceled and job["total"] is not None and Decimal(str(job["total"])) == 0,
            "revenue": Decimal(str(job["total"])) if job is not None and not canceled and job["total"] is not None else Decimal(0),
        }
        for bucket in (total, per_referrer[f"rf:{user['referrer_id']}"], per_month[joined_on(user).strftime("%Y-%m")]):
            for name, value in counted.items():
                bucket[name] += value
    return {"total": total, "referrers": per_referrer, "months": per_month}


def as_expected(group: dict) -> dict:
    return {name: (Decimal(str(group["revenue"])) if name == "revenue" else group[name]) for name in EXPECTED_KEYS}


EXPECTED_KEYS = ("referred", "booked", "jobs", "completed", "qualified", "qualified_all", "canceled", "dismissed",
                 "jobs_with_invoice", "jobs_with_total", "zero_total_jobs", "revenue")


def test_the_reports_numbers_are_the_sandboxs(world, cli):
    sb = world
    want = expected(sb)

    result = cli("--json", "report", *PERIOD)

    assert result.exit_code == 0, str(result)
    report = result.json
    funnel = {stage["stage"]: stage["count"] for stage in report["funnel"]}
    assert funnel == {name: want["total"][name] for name in ("referred", "booked", "jobs", "completed", "qualified")}
    assert report["outcomes"]["qualified_all"] == want["total"]["qualified_all"]
    assert report["outcomes"]["canceled"] == want["total"]["canceled"]
    assert report["outcomes"]["dismissed"] == want["total"]["dismissed"]
    money = report["revenue"]
    assert Decimal(str(money["total"])) == want["total"]["revenue"]
    assert (money["jobs_with_total"], money["zero_total_jobs"], money["jobs_with_invoice"]) == (
        want["total"]["jobs_with_total"], want["total"]["zero_total_jobs"], want["total"]["jobs_with_invoice"])
    # The world has every case the report counts apart.
    assert funnel["referred"] > funnel["booked"] > funnel["jobs"] > funnel["completed"] > 0
    assert want["total"]["canceled"] and want["total"]["dismissed"] and want["total"]["zero_total_jobs"]

    by_referrer = cli("--json", "report", *PERIOD, "--by", "referrer").json
    assert {g["key"]: as_expected(g) for g in by_referrer["groups"]} == {
        key: {name: counts[name] for name in EXPECTED_KEYS} for key, counts in want["referrers"].items()}

    by_month = cli("--json", "report", *PERIOD, "--by", "month").json
    assert [g["key"] for g in by_month["groups"]] == [f"2025-{m:02d}" for m in range(1, 13)]
    for group in by_month["groups"]:
        counts = want["months"].get(group["key"], {})
        assert as_expected(group) == {name: counts.get(name, 0) for name in EXPECTED_KEYS}, group["key"]

    top = by_referrer["top_referrers"]["by_revenue"]
    assert [Decimal(str(g["revenue"])) for g in top] == sorted(
        (counts["revenue"] for counts in want["referrers"].values() if counts["revenue"] > 0), reverse=True)


def test_customers_enrolled_as_referrers_who_referred_are_named(world, cli):
    sb = world
    result = cli("--json", "report", *PERIOD)
    synced = result.json["synced_referrers"]
    friends = [u for u in sb.rf_users(type="person_invited") if u["signed_up_at"] >= "2025-10"]
    referred_by: dict[int, int] = defaultdict(int)
    for user in friends:
        referred_by[user["referrer_id"]] += 1
    customers = {c["id"]: c for c in sb.customers()}
    assert {g["referrer"]["rf_user_id"]: g["referred"] for g in synced} == dict(referred_by)
    for group in synced:
        referrer = next(u for u in sb.rf_users() if u["id"] == group["referrer"]["rf_user_id"])
        assert group["referrer"]["email"] == referrer["email"]
        customer = customers[group["referrer"]["customer_id"]]  # the ServiceTitan customer it came from
        assert referrer["email"].casefold() in {c["value"].casefold() for c in sb.contacts(customer["id"]) if c["type"] == "Email"}
    assert Decimal(str(sum(g["revenue"] for g in synced))) == Decimal("1999.99")  # $0 counted, the refund not
    assert sum(g["booked"] for g in synced) == 4 and sum(g["referred"] for g in synced) == 6  # two seen, not pushed
    assert result.json["counts"]["synced_referrers_who_referred"] == len(referred_by)


def test_the_report_reads_the_ledger_only_and_refresh_reads_what_changed(world, cli):
    sb = world
    sb.clear_request_log()
    before = cli("--json", "report", *PERIOD)
    assert before.exit_code == 0 and sb.request_log == [], "without --refresh nothing is requested"
    open_booking = next(b for b in sorted(sb.bookings(), key=lambda b: b["id"]) if b["status"] == "New" and not b.get("jobId")
                        and b["bookingProviderId"] == sb.credentials.booking_provider
                        and any(u["code"] == b["externalId"] and SINCE <= joined_on(u) <= UNTIL for u in sb.rf_users()))
    job = sb.convert_booking_to_job(open_booking["id"])
    sb.complete_job(job["id"], total="250.00")
    stale = cli("--json", "report", *PERIOD)
    assert stale.json["funnel"] == before.json["funnel"]  # the ledger has not seen it yet

    sb.clear_request_log()
    fresh = cli("--json", "report", *PERIOD, "--refresh")

    assert fresh.exit_code == 0, str(fresh)
    assert fresh.json["counts"]["completed"] == before.json["counts"]["completed"] + 1
    assert Decimal(str(fresh.json["revenue"]["total"])) == Decimal(str(before.json["revenue"]["total"])) + Decimal("250.00")
    assert sb.qualified(next(u for u in sb.rf_users() if u["code"] == open_booking["externalId"])["id"]) is False, (
        "a refresh qualifies nothing")
    st_requests = [r for r in sb.request_log if r.service == "servicetitan"]
    assert not [r for r in st_requests if re.search(r"/(bookings|jobs)/\d+$", r.path)], "no per-record read"
    # The referrers known only by id were named, by a search of the campaign's referrers.
    rf_requests = [r for r in sb.request_log if r.service == "referral_factory"]
    assert rf_requests and all(r.path.endswith("/users/search") for r in rf_requests)
    seeded = {g["referrer"]["rf_user_id"]: g["referrer"] for g in cli("--json", "report", *PERIOD, "--by", "referrer").json["groups"]
              if g["referrer"] is not None}
    for user in sb.rf_users(type="person_referring"):
        if user["id"] in seeded:
            assert seeded[user["id"]]["email"] == user["email"]

    sb.clear_request_log()
    again = cli("--json", "report", *PERIOD, "--refresh")
    assert again.exit_code == 0, str(again)
    assert again.json["funnel"] == fresh.json["funnel"] and again.json["counts"]["referrers_unnamed"] == 0
    made = [(r.service, r.path) for r in sb.request_log]
    assert len(made) <= 3 and {service for service, _ in made} <= {"servicetitan"}, made


def test_the_default_period_is_the_last_90_days_by_sign_up_day(world, cli):
    sb = world
    today = datetime.now(UTC).date()
    sb.add_leads(2, signed_up_at=today.isoformat())
    sb.add_leads(1, signed_up_at=(today - timedelta(days=89)).isoformat())
    sb.add_leads(1, signed_up_at=(today - timedelta(days=90)).isoformat())  # the 91st day back: outside
    assert cli("push-lead", "--new").exit_code == 0
    result = cli("--json", "report")
    assert result.json["period"] == {"since": (today - timedelta(days=89)).isoformat(), "until": today.isoformat(),
                                     "placed_by": "signed_up_at"}
    # The seed's leads with an impossible sign-up day (2025-02-29) are placed by the day stsync saw them: today.
    impossible = [u for u in sb.rf_users(type="person_invited", campaign_id=sb.credentials.campaign_id)
                  if joined_on(u) == today and not u["signed_up_at"].startswith(today.isoformat())]
    assert result.json["counts"]["referred"] == 3 + len(impossible)
    assert result.json["counts"]["placed_by_first_seen"] == len(impossible)


REPORT_SCHEMA = {
    "type": "object",
    "required": ["ok", "period", "by", "funnel", "outcomes", "revenue", "groups", "months", "top_referrers",
                 "synced_referrers", "notes", "data_as_of", "refresh", "counts"],
    "properties": {
        "ok": {"const": True},
        "period": {"type": "object", "required": ["since", "until", "placed_by"]},
        "funnel": {"type": "array", "minItems": 5, "maxItems": 5, "items": {
            "type": "object", "required": ["stage", "label", "count", "rate_from_previous", "rate_of_referred"],
            "properties": {"count": {"type": "integer", "minimum": 0},
                           "rate_from_previous": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                           "rate_of_referred": {"type": ["number", "null"], "minimum": 0, "maximum": 1}}}},
        "revenue": {"type": "object", "required": ["source", "total", "jobs_with_total", "zero_total_jobs",
                                                   "jobs_without_total", "jobs_with_invoice", "canceled_total"],
                    "properties": {"source": {"const": "job_total"}}},
        "groups": {"type": "array", "items": {"type": "object", "required": ["key", "label", "referred", "revenue"]}},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}


def test_json_is_one_object_that_validates_and_csv_parses_into_rows_that_add_up(world, cli, cli_subprocess, tmp_path):
    as_json = cli("--json", "report", *PERIOD, "--by", "month", "--csv", str(tmp_path / "months.csv"))
    assert as_json.exit_code == 0, str(as_json)
    jsonschema.validate(as_json.json, REPORT_SCHEMA)
    assert any("accounting API" in note for note in as_json.json["notes"])

    with open(tmp_path / "months.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [row["group"] for row in rows] == [g["key"] for g in as_json.json["groups"]]
    for column in ("referred", "booked", "jobs", "completed", "qualified", "qualified_all", "canceled", "dismissed"):
        assert sum(int(row[column]) for row in rows) == as_json.json["counts"][column], column
    assert sum(Decimal(row["revenue"]) for row in rows) == Decimal(str(as_json.json["revenue"]["total"]))

    piped = cli_subprocess("report", *PERIOD, "--by", "referrer", "--csv", "-")
    assert piped.exit_code == 0, str(piped)
    rows = list(csv.DictReader(io.StringIO(piped.stdout)))  # stdout holds the CSV and nothing else
    assert rows and all(row["group_by"] == "referrer" for row in rows)
    assert sum(int(row["referred"]) for row in rows) == as_json.json["counts"]["referred"]


def test_piped_it_is_plain_text_and_on_a_terminal_rich_tables_with_bars(world, cli_subprocess):
    piped = cli_subprocess("report", *PERIOD)
    assert piped.exit_code == 0, str(piped)
    assert "\x1b[" not in piped.stdout and "│" not in piped.stdout
    lines = piped.stdout.splitlines()
    referred = next(line for line in lines if line.startswith("Referred leads"))
    assert re.search(r"Referred leads\s+\d+\s+#{32}\s", referred)
    assert any(line.startswith("Jobs completed") and "#" in line for line in lines)
    assert "Revenue (canceled jobs left out)" in piped.stdout

    on_terminal = run_on_a_terminal("report", *PERIOD)
    assert "█" in on_terminal and "#" * 32 not in on_terminal
    assert any(border in on_terminal for border in "┃│━─"), "a Rich table's borders"
    assert "The funnel" in on_terminal and "Referred leads" in on_terminal


def run_on_a_terminal(*args: str) -> str:
    """``python -m stsync ARGS`` with stdout on a pseudo-terminal; → what it showed there."""
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"}
    done = subprocess.run([sys.executable, "-m", "stsync", *args], stdout=slave, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, env=env, timeout=60)
    os.close(slave)
    reader.join(10)
    os.close(master)
    assert done.returncode == 0, done.stderr
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "2025-13-01"), "is not a date"),
        (("--since", "2025-06-01", "--until", "2025-05-31"), "is before --since"),
        (("--by", "week"), "is not one of"),
        (("--json", "--csv", "-"), "both want stdout"),
    ],
)
def test_a_wrong_option_is_a_usage_error(connected, cli, args, message):
    result = cli("report", *args)
    assert result.exit_code == 2 and message in result.stderr, str(result)


# -- the HTML page ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FUNNEL_BLUE = (0x2F, 0x6F, 0xDE)
REVENUE_GREEN = (0x18, 0xA0, 0x7A)


def test_the_html_page_is_self_contained(world, cli, tmp_path):
    page_path = tmp_path / "out" / "report.html"
    result = cli("report", *PERIOD, "--by", "referrer", "--html", str(page_path))
    assert result.exit_code == 0, str(result)
    page = page_path.read_text(encoding="utf-8")
    lowered = page.lower()
    assert "//" not in page, "no URL of any kind: no http://, https:// or protocol-relative //"
    for external in ("<script", "<link", "<img", "<iframe", "<object", "<embed", "url(", "@import", "src=", "href="):
        assert external not in lowered, external
    assert page.count("<svg") == 2 and 'id="funnel-chart"' in page and 'id="revenue-chart"' in page
    assert 'role="img"' in page and "<title" in page and "<desc" in page
    assert "accounting API" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it with apt as root)")
def test_a_real_browser_renders_the_funnel_and_the_revenue_chart(world, cli, tmp_path):
    page_path = tmp_path / "report.html"
    report = cli("--json", "report", *PERIOD, "--html", str(page_path)).json

    dom = browser(tmp_path, "--dump-dom", page_path.as_uri()).decode("utf-8")
    funnel = re.search(r'<svg id="funnel-chart".*?</svg>', dom, re.S).group(0)
    counts = [int(n) for n in re.findall(r'<rect class="bar" [^>]*data-count="(\d+)"', funnel)]
    assert counts == [stage["count"] for stage in report["funnel"]]
    revenue = re.search(r'<svg id="revenue-chart".*?</svg>', dom, re.S).group(0)
    months = re.findall(r'<g class="month" data-month="([\d-]+)"', revenue)
    assert months == [f"2025-{m:02d}" for m in range(1, 13)]
    cents = [int(n) for n in re.findall(r'data-cents="(\d+)"', revenue)]
    assert sum(cents) == round(Decimal(str(report["revenue"]["total"])) * 100)

    shot = tmp_path / "report.png"
    browser(tmp_path, f"--screenshot={shot}", "--window-size=1000,1800", page_path.as_uri())
    width, height, pixels = decode_png(shot.read_bytes())
    colours = set(pixels)
    assert len(colours) > 20, "not a blank page"
    assert any(close(p, FUNNEL_BLUE) for p in colours), "the funnel's bars are drawn"
    assert any(close(p, REVENUE_GREEN) for p in colours), "the revenue chart's bars are drawn"


def browser(tmp_path: Path, *args: str) -> bytes:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", *args],
        capture_output=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    return done.stdout


def close(pixel: tuple[int, int, int], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(pixel, colour, strict=True))


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """An 8-bit RGB or RGBA PNG (what Chromium writes) → width, height, its pixels' RGB."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    assert header is not None
    width, height, depth, colour_type = header[0], header[1], header[2], header[3]
    assert depth == 8 and colour_type in (2, 6), header
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        if y % 4 == 0:  # every fourth row is plenty to see what is drawn
            pixels.extend(tuple(line[x : x + 3]) for x in range(0, stride, channels * 2))
        previous = line
    return width, height, pixels
