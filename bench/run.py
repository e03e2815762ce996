"""Run every benchmark and print one table: what was measured, the target, pass or fail.

    python bench/run.py            # full sizes (a few minutes)
    python bench/run.py --quick    # smaller N, for a quick look (under a minute)
    python bench/run.py --only push,startup --json

Benchmarks (each file also runs alone; see bench/README.md):

- ``bench_sync.py``: one-time sync wall ÷ floor at 1,000 and 10,000 customers; requests an
  ongoing sync makes when nothing changed (10,000 customers); peak RSS syncing 50,000
  customers ÷ 1,000.
- ``bench_push.py``: ``push-lead --new`` for 1,000 leads, wall ÷ the create floor (≤ 1.15).
- ``bench_qualify.py``: requests of a ``qualify`` with nothing changed at 100 and 10,000 open
  bookings (≤ 3 each).
- ``bench_serve.py``: ``serve`` with 500 connections held open (a delivery answered within
  1 s), 200 wrong-token 1 MB bodies (RSS), a flood of 1,000 deliveries (drain ÷ floor, each
  booked once), kill -9 mid-flood and a restart (no delivery answered 202 left without outcome).
- ``bench_report.py``: ``stsync report`` wall time over 10,000 referrals (the whole process,
  from the ledger; ``--by``, ``--html``/``--csv`` and ``--refresh`` beside it). Reports only.
- ``bench_startup.py``: ``stsync --version`` ÷ ``python -c "import httpx"``.

Exit code: 0 when every target is met, 1 when one is missed (a row without a target only
reports).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Row:
    """One line of the table. ``limit`` is the target's bound (``measured ≤ limit``)."""

    benchmark: str
    measured: float | None
    shown: str
    limit: float | None = None
    target: str = "report"
    note: str = ""
    details: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "ERROR"
        if self.limit is None:
            return "—"
        return "pass" if self.measured <= self.limit else "FAIL"


# --------------------------------------------------------------------------------------
# The benchmarks, as rows
# --------------------------------------------------------------------------------------
def startup_rows(quick: bool) -> list[Row]:
    import bench_startup

    result = bench_startup.measure(runs=5 if quick else 15)
    return [
        Row(
            "startup: stsync --version ÷ python -c 'import httpx'",
            result["ratio"],
            f"{result['ratio']:.2f}",
            limit=result["target"],
            target=f"≤ {result['target']}",
            note=f"{result['stsync_version_s'] * 1000:.0f} ms ÷ {result['import_httpx_s'] * 1000:.0f} ms",
            details=result,
        )
    ]


def push_rows(quick: bool) -> list[Row]:
    import bench_push

    result = bench_push.measure(200 if quick else 1_000)
    made = result["requests_made"]
    settings = result["settings"]
    return [
        Row(
            f"push-lead --new, {result['leads']:,} leads: wall ÷ create floor",
            result["ratio"] if result["exactly_once"] else None,
            f"{result['ratio']:.2f}" + ("" if result["exactly_once"] else " (NOT exactly once)"),
            # The target is for 1,000 leads; at --quick's 200, startup alone is a tenth of the floor.
            limit=None if quick else PUSH_TARGET,
            target="report (target at 1,000)" if quick else f"≤ {PUSH_TARGET}",
            note=(
                f"{result['wall_s']:.1f} s ÷ {result['floor_s']:.1f} s; sent ServiceTitan {made.get('servicetitan', 0):,} "
                f"(floor {result['floor_of_requests_made_s']:.1f} s), Referral Factory {made.get('referral_factory', 0)}; "
                f"ST {settings['st_per_second']}/s, {settings['latency_s'] * 1000:.0f} ms latency"
            ),
            details=result,
        )
    ]


def serve_rows(quick: bool) -> list[Row]:
    import bench_serve

    result = bench_serve.measure(200 if quick else 1_000)
    held, wrong, flood, kill = result["held_connections"], result["wrong_token_bodies"], result["flood"], result["kill_mid_flood"]
    settings = result["settings"]
    return [
        Row(
            f"serve: a delivery with {held['held_connections']} connections held open (s)",
            held["max_s"],
            f"{held['max_s']:.3f}",
            limit=1.0,
            target="≤ 1.0",
            note=(
                f"worst of {held['deliveries']}, median {held['median_s'] * 1000:.0f} ms; half idle, half dripping a byte "
                f"every 8 s; serve threads {held['threads_before']} → {held['threads_with_connections_held']}"
            ),
            details=held,
        ),
        Row(
            f"serve: RSS growth after {wrong['posts']} wrong-token 1 MB bodies (MiB)",
            wrong["rss_growth_mib"],
            f"{wrong['rss_growth_mib']:.1f}",
            limit=10.0,
            target="≤ 10",
            note=f"answers {wrong['answers']}: refused from the head, bodies never read",
            details=wrong,
        ),
        Row(
            f"serve: flood of {flood['deliveries']:,} deliveries, drain ÷ floor",
            flood["ratio"] if flood["exactly_once"] and flood["answers"] == {202: flood["deliveries"]} else None,
            f"{flood['ratio']:.2f}" + ("" if flood["exactly_once"] else " (NOT exactly once)"),
            note=(
                f"{flood['drain_s']:.1f} s ÷ {flood['floor_s']:.1f} s (one Referral Factory read per delivery at "
                f"{settings['rf_per_minute']}/min); posted in {flood['post_s']:.1f} s; sent RF "
                f"{flood['requests_made'].get('referral_factory', 0):,}, ST {flood['requests_made'].get('servicetitan', 0):,}; "
                f"429s {flood['http_429']}"
            ),
            details=flood,
        ),
        Row(
            "serve: kill -9 mid-flood, restart: deliveries answered 202 left without an outcome",
            kill["without_outcome_after_restart"] if kill["booked_exactly_once"] else None,
            str(kill["without_outcome_after_restart"]) + ("" if kill["booked_exactly_once"] else " (NOT exactly once)"),
            limit=0,
            target="0",
            note=(
                f"{kill['answered_202']} answered 202, {kill['processed_at_kill']} processed when killed, "
                f"{kill['waiting_after_kill']} without an outcome; "
                f"all processed {kill['drain_after_restart_s']:.1f} s after the restart, each lead booked once"
            ),
            details=kill,
        ),
    ]


PUSH_TARGET = 1.15


def qualify_rows(quick: bool) -> list[Row]:
    import bench_qualify

    rows = []
    for bookings in (100, 1_000) if quick else (100, 10_000):
        result = bench_qualify.measure(bookings)
        rows.append(
            Row(
                f"qualify, nothing changed, {bookings:,} bookings ({result['open_bookings']:,} open): requests",
                result["requests"],
                str(result["requests"]),
                limit=result["target"],
                target=f"≤ {result['target']}",
                note=(
                    f"{', '.join(p.split(' ', 1)[1].split('/', 1)[-1] for p in result['request_paths'])}; "
                    f"{result['wall_s']:.1f} s; the first (full) run made {result['first_run']['all_requests']:,}"
                ),
                details=result,
            )
        )
    return rows


def report_rows(quick: bool) -> list[Row]:
    import bench_report

    result = bench_report.measure(1_000 if quick else 10_000)
    return [
        Row(
            f"report over {result['referrals']:,} referrals: wall time (s)",
            result["report_s"],
            f"{result['report_s']:.2f}",
            note=(
                f"the whole `stsync --json report` process from the ledger, best of {bench_report.REPEATS} "
                f"(stsync --version {result['version_s']:.2f} s); --by referrer {result['by_referrer_s']:.2f} s, "
                f"--by month {result['by_month_s']:.2f} s, --html --csv {result['html_and_csv_s']:.2f} s; "
                f"--refresh with nothing changed {result['refresh_nothing_changed_s']:.2f} s, "
                f"{result['refresh_requests']} request(s)"
            ),
            details=result,
        )
    ]


def sync_rows(quick: bool) -> list[Row]:
    import bench_sync

    # bench_sync.rows() gives this table's rows as dicts with Row's fields.
    return [Row(**row) for row in bench_sync.rows(quick)]


BENCHMARKS: dict[str, Callable[[bool], list[Row]]] = {
    "sync": sync_rows,
    "push": push_rows,
    "serve": serve_rows,
    "qualify": qualify_rows,
    "report": report_rows,
    "startup": startup_rows,
}


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
def render(rows: list[Row]) -> str:
    headers = ("benchmark", "measured", "target", "result", "how")
    cells = [(r.benchmark, r.shown, r.target, r.verdict, r.note) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*c) for c in cells]
    return "\n".join(s.rstrip() for s in out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller N everywhere")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", action="store_true", help="print the rows (with every detail) as JSON instead")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")

    rows: list[Row] = []
    started = time.monotonic()
    for name in chosen:
        print(f"running {name}…", file=sys.stderr, flush=True)
        try:
            rows += BENCHMARKS[name](args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc(file=sys.stderr)
            rows.append(Row(name, None, "error", note=f"{type(exc).__name__}: {exc}"))
    if args.json:
        print(json.dumps([{**asdict(r), "verdict": r.verdict} for r in rows], indent=2, default=str))
    else:
        print(render(rows))
        print(f"\n{'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if any(r.verdict in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
