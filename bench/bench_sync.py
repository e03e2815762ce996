"""`stsync sync-customers` against the sandbox: speed against the rate-limit floor, the cost
of an ongoing run with nothing to do, and memory that does not grow with the tenant.

1. **One-time sync, wall ÷ floor** at 1,000 and 10,000 customers. The floor is the least
   time the APIs' rate limits allow for the requests the sync made: the largest, over the
   two services, of (requests ÷ that service's rate). Referral Factory's creates are the
   bottleneck: about 57 % of the sandbox's customers are eligible. Target ≤ 1.15 at 1,000.
2. **Ongoing sync with no changes**, right after the one-time sync of 10,000 customers:
   every request it makes, the token included. Target ≤ 5.
3. **Peak RSS** of a one-time sync of 50,000 customers ÷ 1,000 (limits raised so the run is
   CPU-bound and short). Target ≤ 1.3. The peak is read with ``wait4`` by a small launcher
   process: a child started straight from this process would inherit this process's
   high-water mark (it holds the 50,000-customer sandbox) through vfork + exec.

The sandbox runs in this process with scaled-up limits and a fixed latency (ServiceTitan
600 requests/s, Referral Factory 6,000/min, 20 ms per answer: ten times the real limits);
stsync's ``[limits]`` are set to the same rates. stsync runs as a real process
(``python -m stsync``), as cron would start it, in a throwaway HOME, config and state dir
with the file secret store and a null keyring. Startup is inside the measured wall time.

    python bench/bench_sync.py            # full sizes (about four minutes)
    python bench/bench_sync.py --quick    # 1,000 customers; RSS 1,000 vs 10,000 (under a minute)
    python bench/bench_sync.py --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_push import floor_seconds
from harness import connect, environment, stsync

ST_PER_SECOND = 600
RF_PER_MINUTE = 6_000
LATENCY = 0.02
FAST = {"st_per_second": 20_000, "rf_per_minute": 1_200_000, "latency": 0.0}  # for the memory runs
SEED = 5

# Runs the command given after the output path, waits for it with wait4 and writes its peak
# RSS and wall time there. Being a fresh small process, its own high-water mark is ~10 MB.
LAUNCHER = """
import json, os, subprocess, sys, time
out, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
child = subprocess.Popen(command)
_, status, usage = os.wait4(child.pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as f:
    json.dump({"maxrss_kib": usage.ru_maxrss, "wall_s": wall, "status": os.waitstatus_to_exitcode(status)}, f)
sys.exit(0)
"""


def _counts(envelope: dict) -> dict:
    """The report's counts: in the --json envelope's ``counts`` (docs/json.md)."""
    return envelope["counts"]


class _Connected:
    """A sandbox with ``customers`` customers and stsync connected to it with matching limits."""

    def __init__(self, customers: int, *, st_per_second: int, rf_per_minute: int, latency: float, workers: int | None):
        from stsync.sandbox import Sandbox

        self.workdir = Path(tempfile.mkdtemp(prefix="stsync-bench-sync-"))
        self.sandbox = Sandbox(
            seed=SEED, customers=customers, st_per_second=st_per_second, rf_per_minute=rf_per_minute, latency=latency
        )
        self.settings = {"st_per_second": st_per_second, "rf_per_minute": rf_per_minute, "latency_s": latency}
        self.workers = workers

    def __enter__(self) -> _Connected:

        self.sandbox.start()
        self.env = environment(self.workdir, self.sandbox)
        config = connect(
            self.env, self.sandbox, st_per_second=self.settings["st_per_second"],
            rf_per_minute=self.settings["rf_per_minute"], workers=self.workers,
        )  # fmt: skip
        self.settings["workers"] = config.limits.workers
        self.sandbox.clear_request_log()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sandbox.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def sync(self, *args: str) -> tuple[dict, float]:
        """``sync-customers`` once, as a process; its JSON report and the wall time."""
        started = time.perf_counter()
        done = stsync(self.env, "--json", "sync-customers", *args)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"sync-customers {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return _counts(json.loads(done.stdout)), wall

    def sync_measuring_rss(self, *args: str) -> tuple[dict, float, float]:
        """Like ``sync``, through the launcher: also the process's peak RSS in MiB."""
        measured = self.workdir / "rusage.json"
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(measured), sys.executable, "-m", "stsync", "--json", "sync-customers", *args],
            env=self.env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        usage = json.loads(measured.read_text())
        if usage["status"] != 0:
            raise RuntimeError(f"sync-customers failed (exit {usage['status']}):\n{done.stderr[-3000:]}")
        return _counts(json.loads(done.stdout)), usage["wall_s"], usage["maxrss_kib"] / 1024

    def requests(self) -> Counter:
        return Counter(r.service for r in self.sandbox.request_log)


def measure_one_time(
    customers: int,
    *,
    st_per_second: int = ST_PER_SECOND,
    rf_per_minute: int = RF_PER_MINUTE,
    latency: float = LATENCY,
    workers: int | None = None,
    then_idle: bool = False,
) -> dict:
    """A one-time sync of ``customers``: wall ÷ floor; with ``then_idle``, then an ongoing run
    with nothing changed, counting its requests."""
    with _Connected(
        customers, st_per_second=st_per_second, rf_per_minute=rf_per_minute, latency=latency, workers=workers
    ) as world:
        report, wall = world.sync("--once")
        made = world.requests()
        statuses = Counter(r.status for r in world.sandbox.request_log if r.service == "referral_factory")
        result = {
            "customers": customers,
            "created": report["created"],
            "adopted": report["adopted"],
            "skipped": report["skipped"],
            "return_fields_written": report["return_fields_written"],
            "failed": report["failed"],
            "wall_s": wall,
            "requests_made": dict(made),
            "floor_s": floor_seconds(made, st_per_second, rf_per_minute),
            "referral_factory_429": statuses.get(429, 0),
            "settings": dict(world.settings),
        }
        result["ratio"] = result["wall_s"] / result["floor_s"]
        if then_idle:
            world.sandbox.clear_request_log()
            idle, idle_wall = world.sync("--ongoing")
            log = world.sandbox.request_log
            result["idle"] = {
                "requests": len(log),
                "by_path": dict(Counter(f"{r.method} {r.path.split('/tenant/')[-1]}" for r in log)),
                "created": idle["created"],
                "updated": idle["updated"],
                "return_fields_written": idle["return_fields_written"],
                "wall_s": idle_wall,
            }
    return result


def measure_rss(customers: int) -> dict:
    """Peak RSS of a one-time sync of ``customers`` (limits raised: CPU-bound, short)."""
    with _Connected(customers, workers=None, **FAST) as world:
        report, wall, rss_mib = world.sync_measuring_rss("--once")
    return {"customers": customers, "peak_rss_mib": rss_mib, "wall_s": wall, "created": report["created"]}


def rows(quick: bool) -> list[dict]:
    """The table's rows (the fields of ``bench/run.py``'s ``Row``)."""
    out: list[dict] = []
    sizes = [1_000] if quick else [1_000, 10_000]
    idle_size = sizes[-1]
    for size in sizes:
        result = measure_one_time(size, then_idle=size == idle_size)
        made = result["requests_made"]
        settings = result["settings"]
        ok = result["failed"] == 0 and result["referral_factory_429"] == 0
        out.append(
            {
                "benchmark": f"sync-customers --once, {size:,} customers: wall ÷ floor",
                "measured": result["ratio"] if ok else None,
                "shown": f"{result['ratio']:.2f}" + ("" if ok else " (failures or 429s)"),
                "limit": 1.15 if size == 1_000 else None,
                "target": "≤ 1.15" if size == 1_000 else "report",
                "note": (
                    f"{result['wall_s']:.1f} s ÷ {result['floor_s']:.1f} s; {result['created']:,} created; sent Referral "
                    f"Factory {made.get('referral_factory', 0):,}, ServiceTitan {made.get('servicetitan', 0):,}; "
                    f"RF {settings['rf_per_minute']:,}/min, ST {settings['st_per_second']}/s, "
                    f"{settings['latency_s'] * 1000:.0f} ms latency, {settings['workers']} workers; RF 429s: "
                    f"{result['referral_factory_429']}"
                ),
                "details": result,
            }
        )
        if "idle" in result:
            idle = result["idle"]
            quiet = idle["created"] == idle["updated"] == idle["return_fields_written"] == 0
            out.append(
                {
                    "benchmark": f"sync-customers --ongoing, nothing changed, {size:,} customers: requests",
                    "measured": idle["requests"] if quiet else None,
                    "shown": str(idle["requests"]),
                    "limit": 5,
                    "target": "≤ 5",
                    "note": ", ".join(f"{path} ×{n}" for path, n in sorted(idle["by_path"].items())),
                    "details": idle,
                }
            )
    small, large = 1_000, (10_000 if quick else 50_000)
    rss_small, rss_large = measure_rss(small), measure_rss(large)
    ratio = rss_large["peak_rss_mib"] / rss_small["peak_rss_mib"]
    out.append(
        {
            "benchmark": f"sync-customers --once: peak RSS {large:,} ÷ {small:,} customers",
            "measured": ratio,
            "shown": f"{ratio:.2f}",
            "limit": 1.3,
            "target": "≤ 1.3",
            "note": (
                f"{rss_large['peak_rss_mib']:.0f} MiB ÷ {rss_small['peak_rss_mib']:.0f} MiB "
                f"({rss_large['wall_s']:.0f} s and {rss_small['wall_s']:.1f} s, limits raised)"
            ),
            "details": {"small": rss_small, "large": rss_large},
        }
    )
    return out


def render(table: list[dict]) -> str:
    lines = []
    width = max(len(row["benchmark"]) for row in table)
    lines.append(f"{'benchmark':<{width}}  {'measured':>8}  {'target':<7}  verdict")
    for row in table:
        if row["measured"] is None:
            verdict = "ERROR"
        elif row["limit"] is None:
            verdict = "—"
        else:
            verdict = "pass" if row["measured"] <= row["limit"] else "FAIL"
        lines.append(f"{row['benchmark']:<{width}}  {row['shown']:>8}  {row['target']:<7}  {verdict}")
        lines.append(f"{'':<{width}}    {row['note']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 customers; RSS 1,000 vs 10,000")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    table = rows(args.quick)
    print(json.dumps(table, indent=2, default=str) if args.json else render(table))
    missed = [row for row in table if row["limit"] is not None and (row["measured"] is None or row["measured"] > row["limit"])]
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
