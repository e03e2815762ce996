"""`stsync serve` answers input that would break a JSON parser with HTTP 400 and goes on serving
(issue 15 item 7): nesting 100,000 deep, a 5,000-digit number, a lone surrogate in an e-mail —
never a 500, never a crash. The real CLI in a child process, deliveries posted with httpx."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

TOKEN = "e2e-breaking-input-token-0123456789"

BREAKING_BODIES = {
    "nested_100000_deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a_5000_digit_number": (b'{"email": "jo@example.com", "code": "big00001", "id": ' + b"7" * 5000 + b"}", "5000 digits"),
    "a_lone_surrogate_in_an_email": (b'{"email": "jo\\ud800@example.com", "code": "sur00001"}', "surrogate"),
}


def start_serve() -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stsync", "serve", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "STSYNC_WEBHOOK_TOKEN": TOKEN},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        found = re.search(r"listening on (http://[\d.]+:\d+)/hooks/", line)
        if found:
            return proc, found.group(1), seen
    proc.kill()
    raise AssertionError("serve did not start:\n" + "".join(seen))


def test_bodies_that_break_a_json_parser_get_a_400_and_serve_goes_on(connected):
    proc, base, stderr = start_serve()
    try:
        hooks = f"{base}/hooks/{TOKEN}/lead-created"
        for case, (body, said) in BREAKING_BODIES.items():
            answer = httpx.post(hooks, content=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert answer.status_code == 400, (case, answer.status_code, answer.text)
            assert said in answer.text, (case, answer.text)
        healthy = httpx.get(f"{base}/healthz", timeout=10)
        assert healthy.status_code == 200, "serve still answers after every refusal"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, "".join(stderr)
    assert "Traceback" not in "".join(stderr)
    assert connected.bookings() == []
