"""What the grace period after a lost create costs (`[limits] lookup_grace_seconds`).

`push-lead --file` with N leads against the sandbox's lookup-lag variant (a new booking is not
listed by `?externalId=` for LAG seconds; leads from a file are looked up one by one by
externalId — `push-lead --new` reads the provider's booking list instead, which the variant
does not hide, so its committed lost answers are found at once), with a share of the booking POSTs answered after
or before their commit, for several grace periods. For each: the run's wall time and its
extra over the same run without faults, the lookups it made, how many lost creates it
settled within the run (found) and how many it left "unknown" for the next run — and
whether any externalId got two bookings (it must never).

- `commit_then_500`: the POST is applied, its answer lost. A grace period longer than the
  lag finds it within the run; a shorter one leaves it unknown (the next run finds it).
- `503_before`: the POST is refused before anything happens, so no lookup can ever find it:
  the run looks until the grace period ends, then leaves it to the next run. This is the
  worst case of the cost: every such lead keeps the run open until its grace period ends.

The sandbox runs in this process (ServiceTitan 200 requests/s, Referral Factory 600/min,
20 ms per answer); stsync runs as a real process, as cron starts it (see bench_push.py).

    python bench/bench_lookup_grace.py                    # 300 leads, lag 5 s, grace 0/10/30 s
    python bench/bench_lookup_grace.py --leads 100 --graces 0,30 --json
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
from harness import connect, environment, stsync


def measure(
    leads: int,
    *,
    lag: float,
    grace: int,
    fault: str | None,
    rate: float,
    st_per_second: int = 200,
    rf_per_minute: int = 600,
    latency: float = 0.02,
) -> dict:
    """One `push-lead --file` run; returns its wall time, lookups, outcomes and duplicates."""
    from stsync.sandbox import Faults, Sandbox, Variants

    workdir = Path(tempfile.mkdtemp(prefix="stsync-bench-grace-"))
    try:
        with Sandbox(
            seed=4, leads=leads, customers=10, st_per_second=st_per_second, rf_per_minute=rf_per_minute, latency=latency,
            variants=Variants(lookup_lag_seconds=lag),
        ) as sb:
            env = environment(workdir, sb)
            connect(
                env, sb, st_per_second=st_per_second, rf_per_minute=rf_per_minute,
                edit=lambda config: setattr(config.limits, "lookup_grace_seconds", grace),
            )  # fmt: skip
            if fault == "commit_then_500":
                sb.set_faults(Faults(commit_then_500_rate=rate, path_contains="/bookings", seed=5))
            elif fault == "503_before":
                sb.set_faults(Faults(error_rate=rate, path_ends_with="/bookings", seed=5))
            leads_file = workdir / "leads.json"
            leads_file.write_text(json.dumps(sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")))
            sb.clear_request_log()

            started = time.perf_counter()
            pushed = stsync(env, "--json", "push-lead", "--file", str(leads_file))
            wall = time.perf_counter() - started

            if pushed.returncode not in (0, 6):
                raise RuntimeError(f"push-lead --file failed (exit {pushed.returncode}):\n{pushed.stderr[-3000:]}")
            counts = json.loads(pushed.stdout)["counts"]
            per_external_id = Counter(b["externalId"] for b in sb.bookings())
            log = sb.request_log
            posts = Counter(r.status for r in log if r.method == "POST" and r.path.endswith("/bookings"))
            # Lookups answered (a lookup refused by the 503 fault is retried: counted once).
            lookups = sum(
                1 for r in log
                if r.method == "GET" and r.path.endswith("/bookings") and "externalId" in (r.query or "") and r.status == 200
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lost = posts.get(500, 0) + posts.get(503, 0)
    return {
        "leads": leads,
        "lag_s": lag,
        "grace_s": grace,
        "fault": fault or "none",
        "exit_code": pushed.returncode,
        "wall_s": round(wall, 2),
        "lost_answers": lost,
        "lookups": lookups,
        "lookups_per_lost_answer": round((lookups - leads - lost) / lost, 2) if lost else None,
        "created": counts["created"],
        "unknown": counts["unknown"],
        "duplicates": sum(n - 1 for n in per_external_id.values() if n > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--lag", type=float, default=5.0, help="seconds a new booking stays unlisted by ?externalId=")
    parser.add_argument("--graces", default="0,10,30", help="grace periods to compare, seconds")
    parser.add_argument("--rate", type=float, default=0.1, help="share of the booking POSTs that lose their answer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    graces = [int(g) for g in args.graces.split(",")]

    rows = [measure(args.leads, lag=args.lag, grace=graces[-1], fault=None, rate=0.0)]
    for fault in ("commit_then_500", "503_before"):
        for grace in graces:
            rows.append(measure(args.leads, lag=args.lag, grace=grace, fault=fault, rate=args.rate))
    baseline = rows[0]["wall_s"]
    for row in rows:
        row["extra_wall_s"] = round(row["wall_s"] - baseline, 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"push-lead --file, {args.leads} leads, lookup lag {args.lag:g} s, "
        f"{args.rate:.0%} of the booking POSTs lose their answer"
    )
    print(f"{'fault':<16}{'grace':>6}{'wall':>8}{'extra':>8}{'lost':>6}{'looks/lost':>11}{'found':>7}{'unknown':>8}{'dupl.':>6}{'exit':>5}")
    print("(looks/lost: lookups by externalId per lost answer after the one right after the loss; found: lost answers")
    print(" settled within the run; unknown: left to the next run; extra: wall time over the run without faults)")
    for row in rows:
        found = row["lost_answers"] - row["unknown"]  # lost answers settled within the run
        print(
            f"{row['fault']:<16}{row['grace_s']:>5}s{row['wall_s']:>7.1f}s{row['extra_wall_s']:>7.1f}s{row['lost_answers']:>6}"
            f"{row['lookups_per_lost_answer'] if row['lookups_per_lost_answer'] is not None else '—':>11}"
            f"{max(found, 0):>7}{row['unknown']:>8}{row['duplicates']:>6}{row['exit_code']:>5}"
        )


if __name__ == "__main__":
    main()
