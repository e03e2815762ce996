"""`stsync serve` under load: idle and slow connections, a flood, a kill -9 mid-flood.

The sandbox runs in this process (ServiceTitan 60 requests/s, Referral Factory 600/min: the
real limits; every answer takes 20 ms); `stsync serve` runs as a real process (`python -m
stsync serve --port 0`) in a throwaway HOME, config and state dir, with the file secret
store and a null keyring. Deliveries are Referral Factory "lead created" webhooks for the
sandbox's leads, posted with the token in the URL.

- **held connections**: 500 connections are opened and held (half send nothing, half drip a
  request head a byte at a time); meanwhile deliveries are posted one by one and each
  answer timed. Target: every one answered within 1 s. Also reported: the server's thread
  count with the 500 open (waitress: no thread per connection).
- **wrong-token bodies**: 200 posts of a 1 MB body to a wrong token; the serve process's
  RSS before and after (the token is screened from the head: the bodies are never read).
- **flood**: N deliveries (default 1,000) posted as fast as 32 senders can; every one
  answered 202, then the drain timed until every delivery has its outcome. Floor = the
  largest, over the two services, of (requests needed ÷ rate): one Referral Factory read
  of the user per delivery (a webhook is verified by reading the user back), one booking
  POST per lead on ServiceTitan. Target: every lead booked exactly once; drain ÷ floor
  reported.
- **kill -9 mid-flood**: the flood again on fresh leads, `serve` killed with SIGKILL once
  half of them are answered 202 and the first few processed (so some are being processed
  when it dies), then restarted; target: every delivery answered 202 has its outcome after
  the restart, and every lead answered 202 has exactly one booking.

    python bench/bench_serve.py                 # 1,000 deliveries: about four minutes
    python bench/bench_serve.py --deliveries 200 --json
    python bench/bench_serve.py --rf-per-minute 6000   # scaled limits: a faster drain
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from harness import connect, environment

TOKEN = "bench-serve-token-0123456789abcdef"
SENDERS = 32


class Serve:
    """`stsync serve --port 0` as a child process; ``base`` once it listens."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stsync", "serve", "--port", "0"],
            env={**env, "STSYNC_WEBHOOK_TOKEN": TOKEN}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited {self.proc.returncode}") from None
                continue
            found = re.search(r"listening on (http://[\d.]+:(\d+))/hooks/", line)
            if found:
                self.base, self.port = found.group(1), int(found.group(2))
                return
        raise RuntimeError("serve did not start")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def status(self, field: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))

    def queued(self) -> int:
        return httpx.get(f"{self.base}/healthz", headers={"X-Stsync-Token": TOKEN}, timeout=10).json()["queued"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _payload(user: dict) -> dict:
    return {"event": "A new lead is created", "id": user["id"], "first_name": user["first_name"], "email": user["email"],
            "code": user["code"], "signed_up_at": user["signed_up_at"]}


Posted = list[tuple[dict, "int | str", "str | None"]]


def _post_all(base: str, users: list[dict], *, on_count=None) -> Posted:
    """Post one delivery per user from ``SENDERS`` threads; → (user, status or error, delivery key)."""
    results: Posted = []
    lock = threading.Lock()
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=SENDERS))

    def send(user: dict):
        try:
            answer = client.post(f"{base}/hooks/{TOKEN}", json=_payload(user))
            outcome = (user, answer.status_code, answer.json().get("delivery"))
        except httpx.HTTPError as exc:
            outcome = (user, type(exc).__name__, None)
        with lock:
            results.append(outcome)
            if on_count is not None:
                on_count(sum(1 for r in results if r[1] == 202))
        return outcome

    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(send, users))
    client.close()
    return results


def _ledger_outcomes(state: Path, keys: list[str]) -> dict[str, str | None]:
    db = sqlite3.connect(state / "default" / "ledger.sqlite3")
    try:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = db.execute(f"SELECT key, outcome FROM webhook_deliveries WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update(dict(rows.fetchall()))
        return {key: found.get(key, "MISSING") for key in keys}
    finally:
        db.close()


def _wait_drained(serve: Serve, state: Path, keys: list[str], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        outcomes = _ledger_outcomes(state, keys)
        if all(o not in (None, "retrying", "MISSING") for o in outcomes.values()):
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"not drained after {timeout:.0f} s")


def measure_connections(env: dict[str, str], users: list[dict], *, held: int = 500, deliveries: int = 20) -> dict:
    serve = Serve(env)
    sockets: list[socket.socket] = []
    stop = threading.Event()
    try:
        threads_before = serve.status("Threads")
        for _ in range(held):
            sockets.append(socket.create_connection(("127.0.0.1", serve.port), timeout=30))
        drippers = sockets[: held // 2]
        head = f"POST /hooks/{TOKEN} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n".encode()

        def drip() -> None:
            for index in range(len(head)):
                for sock in drippers:
                    try:
                        sock.send(head[index:index + 1])
                    except OSError:
                        pass
                if stop.wait(8):  # a byte every 8 s
                    return

        threading.Thread(target=drip, daemon=True).start()
        time.sleep(0.5)
        threads_held = serve.status("Threads")
        latencies = []
        with httpx.Client(timeout=30) as client:
            for user in users[:deliveries]:
                started = time.perf_counter()
                answer = client.post(f"{serve.base}/hooks/{TOKEN}", json=_payload(user), headers={"Connection": "close"})
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 202:
                    raise RuntimeError(f"delivery answered {answer.status_code}: {answer.text}")
        return {
            "held_connections": held,
            "deliveries": deliveries,
            "max_s": max(latencies),
            "median_s": statistics.median(latencies),
            "threads_before": threads_before,
            "threads_with_connections_held": threads_held,
        }
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        serve.stop()


def measure_wrong_token(env: dict[str, str], *, posts: int = 200, size: int = 1_000_000) -> dict:
    serve = Serve(env)
    try:
        before = serve.status("VmRSS")
        body = b"x" * size
        outcomes: Counter = Counter()
        with httpx.Client(timeout=30) as client:
            for _ in range(posts):
                try:
                    outcomes[client.post(f"{serve.base}/hooks/wrong-token-0123456789abcdef", content=body).status_code] += 1
                except httpx.HTTPError:
                    outcomes["reset"] += 1
        after = serve.status("VmRSS")
        return {"posts": posts, "body_bytes": size, "rss_before_kib": before, "rss_after_kib": after,
                "rss_growth_mib": (after - before) / 1024, "answers": dict(outcomes)}
    finally:
        serve.stop()


def measure_flood(env: dict[str, str], state: Path, sb, users: list[dict], *, st_per_second: int, rf_per_minute: int) -> dict:
    serve = Serve(env)
    try:
        sb.clear_request_log()
        started = time.monotonic()
        results = _post_all(serve.base, users)
        posted = time.monotonic() - started
        statuses = Counter(status for _, status, _ in results)
        keys = [key for _, status, key in results if status == 202 and key]
        drained = _wait_drained(serve, state, keys, timeout=1800)
        total = time.monotonic() - started
    finally:
        serve.stop()
    outcomes = Counter(_ledger_outcomes(state, keys).values())
    per_code = Counter(b["externalId"] for b in sb.bookings())
    codes = [u["code"] for u in users]
    made = Counter(r.service for r in sb.request_log)
    floor = max(len(users) / (rf_per_minute / 60), len(users) / st_per_second)
    return {
        "deliveries": len(users),
        "answers": dict(statuses),
        "post_s": posted,
        "drain_s": total,
        "drain_after_last_post_s": drained,
        "floor_s": floor,
        "ratio": total / floor,
        "outcomes": dict(outcomes),
        "exactly_once": all(per_code[c] == 1 for c in codes),
        "requests_made": dict(made),
        "floor_of_requests_made_s": max(made.get("referral_factory", 0) / (rf_per_minute / 60),
                                        made.get("servicetitan", 0) / st_per_second),
        "http_429": Counter(r.status for r in sb.request_log).get(429, 0),
    }


def measure_kill(env: dict[str, str], state: Path, sb, users: list[dict]) -> dict:
    """Kill -9 once half the posts are answered 202 and processing is under way."""
    serve = Serve(env)
    half = len(users) // 2
    accepted_so_far = [0]
    killed_at: dict[str, int] = {}

    def note(accepted: int) -> None:
        accepted_so_far[0] = accepted

    def watch() -> None:
        while serve.proc.poll() is None:
            accepted = accepted_so_far[0]
            if accepted >= half:
                db = sqlite3.connect(state / "default" / "ledger.sqlite3")
                try:
                    done = db.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE finished_at IS NOT NULL").fetchone()[0]
                finally:
                    db.close()
                if done - before >= 5:
                    serve.proc.send_signal(signal.SIGKILL)
                    killed_at.update(answered_202=accepted, processed=done - before)
                    return
            time.sleep(0.02)

    db = sqlite3.connect(state / "default" / "ledger.sqlite3")
    before = db.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE finished_at IS NOT NULL").fetchone()[0]
    db.close()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results = _post_all(serve.base, users, on_count=note)
    watcher.join(timeout=600)
    serve.proc.wait(timeout=30)
    answered_ok = [(user, key) for user, status, key in results if status == 202 and key]
    keys = [key for _, key in answered_ok]
    waiting_after_kill = sum(1 for o in _ledger_outcomes(state, keys).values() if o in (None, "retrying"))
    restarted = Serve(env)
    try:
        drained = _wait_drained(restarted, state, keys, timeout=1800)
    finally:
        restarted.stop()
    outcomes = _ledger_outcomes(state, keys)
    per_code = Counter(b["externalId"] for b in sb.bookings())
    without_outcome = [k for k, o in outcomes.items() if o in (None, "retrying", "MISSING")]
    return {
        "posted": len(users),
        "answered_202": len(answered_ok),
        "refused_or_reset_by_the_kill": len(users) - len(answered_ok),
        "processed_at_kill": killed_at.get("processed"),
        "waiting_after_kill": waiting_after_kill,
        "drain_after_restart_s": drained,
        "without_outcome_after_restart": len(without_outcome),
        "outcomes": dict(Counter(outcomes.values())),
        "booked_exactly_once": all(per_code[user["code"]] == 1 for user, _ in answered_ok),
        "double_bookings": sum(1 for n in per_code.values() if n > 1),
    }


def measure(deliveries: int = 1_000, *, st_per_second: int = 60, rf_per_minute: int = 600, latency: float = 0.02,
            keep: bool = False) -> dict:
    from stsync.sandbox import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="stsync-bench-serve-"))
    try:
        with Sandbox(seed=5, leads=10, customers=10, st_per_second=st_per_second, rf_per_minute=rf_per_minute,
                     latency=latency) as sb:
            env = environment(workdir, sb)
            connect(env, sb, st_per_second=st_per_second, rf_per_minute=rf_per_minute)
            state = workdir / "state"

            held = measure_connections(env, sb.add_leads(20))
            wrong = measure_wrong_token(env)
            flood = measure_flood(env, state, sb, sb.add_leads(deliveries), st_per_second=st_per_second,
                                  rf_per_minute=rf_per_minute)
            kill = measure_kill(env, state, sb, sb.add_leads(max(100, deliveries // 2)))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "held_connections": held,
        "wrong_token_bodies": wrong,
        "flood": flood,
        "kill_mid_flood": kill,
        "settings": {"st_per_second": st_per_second, "rf_per_minute": rf_per_minute, "latency_s": latency, "senders": SENDERS},
    }


def describe(result: dict) -> str:
    held, wrong, flood, kill = result["held_connections"], result["wrong_token_bodies"], result["flood"], result["kill_mid_flood"]
    return "\n".join([
        f"{held['held_connections']} connections held (half idle, half dripping a byte every 8 s): "
        f"{held['deliveries']} deliveries answered in at most {held['max_s'] * 1000:.0f} ms "
        f"(median {held['median_s'] * 1000:.0f} ms); serve threads "
        f"{held['threads_before']} → {held['threads_with_connections_held']}",
        f"{wrong['posts']} wrong-token {wrong['body_bytes'] // 1000} kB bodies: serve RSS +{wrong['rss_growth_mib']:.1f} MiB "
        f"(answers {wrong['answers']})",
        f"flood of {flood['deliveries']:,}: answers {flood['answers']}, posted in {flood['post_s']:.1f} s, "
        f"all processed after {flood['drain_s']:.1f} s ÷ floor {flood['floor_s']:.1f} s = {flood['ratio']:.2f}; "
        f"requests made {flood['requests_made']} "
        f"(their floor {flood['floor_of_requests_made_s']:.1f} s); 429s {flood['http_429']}; exactly once: "
        f"{'yes' if flood['exactly_once'] else 'NO'}",
        f"kill -9 mid-flood: {kill['answered_202']} of {kill['posted']} answered 202, {kill['processed_at_kill']} processed when "
        f"killed, {kill['waiting_after_kill']} without an outcome; after the restart ({kill['drain_after_restart_s']:.1f} s): "
        f"{kill['without_outcome_after_restart']} without an outcome, booked exactly once: "
        f"{'yes' if kill['booked_exactly_once'] else 'NO'}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=1_000)
    parser.add_argument("--st-per-second", type=int, default=60)
    parser.add_argument("--rf-per-minute", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the sandbox waits before each answer")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway config and state dir")
    args = parser.parse_args()
    result = measure(args.deliveries, st_per_second=args.st_per_second, rf_per_minute=args.rf_per_minute,
                     latency=args.latency, keep=args.keep)
    print(json.dumps(result, indent=2) if args.json else describe(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
