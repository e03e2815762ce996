"""`stsync push-lead --new` for N referred leads against the sandbox: wall time ÷ floor.

The floor is what the APIs' rate limits allow at best: the largest, over the two services,
of (requests the job needs ÷ that service's rate). Needed: one booking POST per lead on
ServiceTitan; on Referral Factory the campaign and the search pages listing the leads
(250 per page). The run's own request counts are reported beside it, with the floor they
imply, so the table tells both how far the run is from ideal and where the time went.

The sandbox runs in this process with scaled-up limits and a fixed latency (default
ServiceTitan 200 requests/s, Referral Factory 600/min, 20 ms per answer); stsync runs as a
real process (`python -m stsync`), as cron would start it, in a throwaway HOME, config and
state dir, with the file secret store and a null keyring (the machine's keyring is never
touched). Startup is inside the measured wall time: it is what a user waits for.

    python bench/bench_push.py              # 1,000 leads
    python bench/bench_push.py --leads 200  # smaller
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness import connect, environment, stsync

RF_SEARCH_PAGE = 250  # users per page of POST /users/search (api/referral-factory.md)


def floor_seconds(requests: dict[str, int], st_per_second: float, rf_per_minute: float) -> float:
    """max over services of requests ÷ rate (the token endpoint has no per-request limit here)."""
    return max(requests.get("servicetitan", 0) / st_per_second, requests.get("referral_factory", 0) / (rf_per_minute / 60))


def measure(
    leads: int = 1_000,
    *,
    st_per_second: int = 200,
    rf_per_minute: int = 600,
    latency: float = 0.02,
    workers: int | None = None,
    keep: bool = False,
) -> dict:
    """Push ``leads`` new leads once; returns the wall time, the floors and the request counts."""
    from stsync.sandbox import Sandbox
    workdir = Path(tempfile.mkdtemp(prefix="stsync-bench-push-"))
    try:
        with Sandbox(
            seed=3, leads=leads, customers=10, st_per_second=st_per_second, rf_per_minute=rf_per_minute, latency=latency
        ) as sb:
            env = environment(workdir, sb)
            config = connect(env, sb, st_per_second=st_per_second, rf_per_minute=rf_per_minute, workers=workers)
            sb.clear_request_log()

            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            started_at = time.time()
            pushed = stsync(env, "--json", "push-lead", "--new")
            wall = time.perf_counter() - started
            ended_at = started_at + wall
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # Only this child ran and was reaped in between: the delta is its CPU time.
            cpu = (children_after.ru_utime - children_before.ru_utime) + (
                children_after.ru_stime - children_before.ru_stime
            )

            if pushed.returncode != 0:
                raise RuntimeError(f"push-lead --new failed (exit {pushed.returncode}):\n{pushed.stderr[-3000:]}")
            report = json.loads(pushed.stdout)
            bookings = sb.bookings()
            per_external_id = Counter(b["externalId"] for b in bookings)
            made = Counter(r.service for r in sb.request_log)
            statuses = Counter(r.status for r in sb.request_log)
            answered = sorted(r.at for r in sb.request_log)
            creates = sorted(r.at for r in sb.request_log if r.method == "POST" and r.path.endswith("/bookings"))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    needed = {"servicetitan": leads, "referral_factory": 1 + math.ceil(leads / RF_SEARCH_PAGE)}
    floor = floor_seconds(needed, st_per_second, rf_per_minute)
    floor_of_made = floor_seconds(made, st_per_second, rf_per_minute)
    return {
        "leads": leads,
        "created": report["counts"]["created"],
        "exactly_once": len(bookings) == leads and max(per_external_id.values(), default=0) == 1,
        "wall_s": wall,
        "floor_s": floor,
        "ratio": wall / floor,
        "cpu_s": cpu,
        # Where the wall time went: start-up to the first answer, the creates from first to
        # last, the last answer to the exit (the ledger's last commits, the report).
        "phases_s": {
            "to_first_answer": (answered[0] - started_at) if answered else None,
            "first_to_last_create": (creates[-1] - creates[0]) if creates else None,
            "after_last_answer": (ended_at - answered[-1]) if answered else None,
        },
        "requests_needed": needed,
        "requests_made": dict(made),
        "floor_of_requests_made_s": floor_of_made,
        "ratio_to_floor_of_requests_made": wall / floor_of_made if floor_of_made else None,
        "http_429": statuses.get(429, 0),
        "settings": {
            "st_per_second": st_per_second,
            "rf_per_minute": rf_per_minute,
            "latency_s": latency,
            "workers": workers or config.limits.workers,
        },
    }


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def describe(result: dict) -> str:
    made = result["requests_made"]
    phases = result["phases_s"]
    return (
        f"push-lead --new, {result['leads']:,} leads: {result['wall_s']:.2f} s ÷ floor {result['floor_s']:.2f} s "
        f"= {result['ratio']:.2f}, CPU {result['cpu_s']:.2f} s  (requests made: ServiceTitan {made.get('servicetitan', 0):,}, "
        f"Referral Factory {made.get('referral_factory', 0):,}, token {made.get('auth', 0)}; "
        f"their floor {result['floor_of_requests_made_s']:.2f} s → {result['ratio_to_floor_of_requests_made']:.2f}; "
        f"phases: first answer {_seconds(phases['to_first_answer'])}, creates "
        f"{_seconds(phases['first_to_last_create'])}, after the last {_seconds(phases['after_last_answer'])}; "
        f"429s {result['http_429']}; exactly once: {'yes' if result['exactly_once'] else 'NO'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=1_000)
    parser.add_argument("--st-per-second", type=int, default=200)
    parser.add_argument("--rf-per-minute", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the sandbox waits before each answer")
    parser.add_argument("--workers", type=int, default=None, help="[limits] workers (default: the config's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway config and state dir")
    args = parser.parse_args()
    result = measure(
        args.leads,
        st_per_second=args.st_per_second,
        rf_per_minute=args.rf_per_minute,
        latency=args.latency,
        workers=args.workers,
        keep=args.keep,
    )
    print(json.dumps(result, indent=2) if args.json else describe(result))


if __name__ == "__main__":
    main()
