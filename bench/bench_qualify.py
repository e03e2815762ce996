"""`stsync qualify` with nothing changed, at N open bookings: the requests it makes.

The sandbox seeds N bookings with a past (``Sandbox(bookings=N)``: June 2024 on, the lives of
``sandbox/seed.py`` — open for ever, dismissed, converted, completed with a total, canceled
after completion, Completed for five seconds) that book the campaign's N referred leads.
stsync runs as a real process (`python -m stsync`) in a throwaway HOME, config and state dir:
``push-lead --new`` records the N bookings as the leads' (already booked; the 1 lead in 25
the seed books through another provider gets one now, dated back ten minutes so that it is
not a change inside the 5-minute overlap), a first ``qualify`` reads in full and decides
(rule: job status Completed), then a second
``qualify`` runs with nothing changed in ServiceTitan. Its requests are counted from the
sandbox's request log — every request, token and Referral Factory included — with its wall
time beside them (the whole process, startup included).

    python bench/bench_qualify.py                 # 100 and 10,000 open bookings
    python bench/bench_qualify.py --bookings 1000 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datetime import UTC

from harness import connect, environment, stsync

TARGET_REQUESTS = 3
RATE = 5_000  # requests/s and per minute ×100: the reads, not the limits, are measured


def measure(bookings: int, *, keep: bool = False) -> dict:
    from stsync.sandbox import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="stsync-bench-qualify-"))
    try:
        with Sandbox(seed=4, leads=bookings, bookings=bookings, customers=10, st_per_second=RATE, rf_per_minute=RATE * 60) as sb:
            env = environment(workdir, sb)
            connect(env, sb, st_per_second=RATE, rf_per_minute=RATE * 60, edit=completed_rule)

            pushed = stsync(env, "--json", "push-lead", "--new", timeout=1800)
            if pushed.returncode != 0:
                raise RuntimeError(f"push-lead --new failed (exit {pushed.returncode}):\n{pushed.stderr[-3000:]}")
            created = json.loads(pushed.stdout)["counts"]["created"]
            # The seed books 1 lead in 25 through another provider, so push-lead --new just
            # created those (400 at 10,000): a change inside qualify's 5-minute overlap, read
            # again by every run of the next five minutes. Dated back 10 minutes, "nothing
            # changed" holds for the overlap too.
            recent = _aged_recent_bookings(sb, minutes=10)
            first = stsync(env, "--json", "qualify", timeout=1800)
            if first.returncode != 0:
                raise RuntimeError(f"the first qualify failed (exit {first.returncode}):\n{first.stderr[-3000:]}")
            first_report = json.loads(first.stdout)
            first_requests = len(sb.request_log)

            sb.clear_request_log()
            started = time.perf_counter()
            again = stsync(env, "--json", "qualify", timeout=600)
            wall = time.perf_counter() - started
            if again.returncode != 0:
                raise RuntimeError(f"the second qualify failed (exit {again.returncode}):\n{again.stderr[-3000:]}")
            report = json.loads(again.stdout)
            made = [(r.service, r.method, r.path.split("/tenant/")[-1]) for r in sb.request_log]
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "bookings": bookings,
        "open_bookings": report["counts"]["open_bookings"],
        "requests": len(made),
        "requests_by_service": dict(Counter(service for service, _, _ in made)),
        "request_paths": [f"{method} {path}" for _, method, path in made],
        "target": TARGET_REQUESTS,
        "wall_s": wall,
        "bookings_created_by_push": created,
        "bookings_dated_back": recent,
        "first_run": {
            "full": first_report["reads"]["full"],
            "servicetitan_requests": first_report["counts"]["servicetitan_requests"],
            "all_requests": first_requests,
            "qualified": first_report["counts"]["qualified"],
            "closed": first_report["counts"]["closed"],
        },
    }


def completed_rule(config) -> None:
    """Qualification when the job reaches Completed."""
    config.leads.qualification.rule = "job_status"
    config.leads.qualification.job_status = "Completed"


def _aged_recent_bookings(sb, *, minutes: int) -> int:
    from datetime import datetime, timedelta

    now = datetime.now(UTC)
    moved = 0
    for booking in sb.bookings():
        modified = datetime.fromisoformat(booking["modifiedOn"].replace("Z", "+00:00"))
        if now - modified < timedelta(minutes=minutes):
            sb.set_modified_on("booking", booking["id"], (modified - timedelta(minutes=minutes)).isoformat())
            moved += 1
    return moved


def describe(result: dict) -> str:
    return (
        f"qualify with nothing changed, {result['open_bookings']:,} open bookings "
        f"(of {result['bookings']:,}): {result['requests']} request(s) ({', '.join(result['request_paths'])}) "
        f"in {result['wall_s']:.2f} s; the first, full run made {result['first_run']['all_requests']:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bookings", type=int, action="append", help="seeded bookings (repeatable; default 100 and 10,000)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway config and state dir")
    args = parser.parse_args()
    results = [measure(n, keep=args.keep) for n in (args.bookings or [100, 10_000])]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(describe(result))


if __name__ == "__main__":
    main()
