"""`stsync serve` end to end: the real CLI in a child process (and the service in-process),
Referral Factory webhooks posted with httpx, bookings read back from the sandbox."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from kills import CAN_SIGNAL_A_THREAD, signal_another_thread

pytestmark = pytest.mark.e2e

TOKEN = "e2e-serve-token-0123456789abcdef"


def wait_for(condition, *, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ServeProcess:
    """`python -m stsync serve --port 0` with the test's (isolated, sandbox-pointed) environment."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "STSYNC_WEBHOOK_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stsync", "serve", "--port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.base = self._wait_for_url()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}:\n{''.join(self.stderr)}") from None
                continue
            found = re.search(r"listening on (http://[\d.]+:\d+)/hooks/", line)
            if found:
                return found.group(1)
        raise AssertionError("serve did not start:\n" + "".join(self.stderr))

    def wait_idle(self, timeout: float = 30) -> None:
        wait_for(lambda: httpx.get(f"{self.base}/healthz", headers={"X-Stsync-Token": TOKEN}, timeout=5).json()["queued"] == 0,
                 timeout=timeout, what="an empty queue")

    def terminate(self, timeout: float = 20) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        stdout = self.proc.stdout.read()
        time.sleep(0.05)
        return code, stdout, "".join(self.stderr)


@pytest.fixture
def serve(connected):
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        process = ServeProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def a_new_lead(sb) -> dict:
    [user] = sb.add_leads(1)
    return user


def new_lead_payload(user: dict) -> dict:
    # What a Referral Factory "A new lead is created" webhook may carry (keys chosen by the sender).
    return {"event": "A new lead is created", "id": user["id"], "first_name": user["first_name"],
            "email": user["email"], "code": user["code"], "signed_up_at": user["signed_up_at"]}


def test_a_new_lead_delivered_three_times_makes_one_booking_and_sigterm_exits_0(connected, serve, cli):
    sb = connected
    user = a_new_lead(sb)
    server = serve("--json")
    hooks = f"{server.base}/hooks/{TOKEN}"

    answers = [httpx.post(hooks, json=new_lead_payload(user), timeout=10)]
    server.wait_idle()
    answers += [httpx.post(hooks, json=new_lead_payload(user), timeout=10) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 200, 200], [a.text for a in answers]
    assert [a.json()["outcome"] for a in answers] == ["queued", "duplicate", "duplicate"]

    # Another shape of the same lead (no id: another delivery key) is processed, and still
    # makes no second booking: push is exactly-once per externalId.
    other = httpx.post(f"{server.base}/hooks/lead-created", json={"email_address": user["email"], "email": user["email"],
                                                                   "referral_code": user["code"]},
                       headers={"X-Stsync-Token": TOKEN}, timeout=10)
    assert other.status_code == 202, other.text

    wait_for(lambda: sb.bookings(external_id=user["code"]), what="the booking")
    server.wait_idle()
    assert httpx.get(f"{server.base}/healthz", timeout=5).json() == {"ok": True}  # no queue depth without the token

    wrong = httpx.post(f"{server.base}/hooks/not-{TOKEN}", json=new_lead_payload(user), timeout=10)
    assert wrong.status_code == 401
    malformed = httpx.post(hooks, content=b'{"email": ', headers={"Content-Type": "application/json"}, timeout=10)
    assert malformed.status_code == 400 and "not JSON" in malformed.json()["error"]

    code, stdout, stderr = server.terminate()
    assert code == 0, stderr
    [booking] = sb.bookings(external_id=user["code"])
    assert booking["name"] == user["first_name"]
    assert json.loads(stdout)["counts"]["processed"] == 2
    assert "serve stopped" in stderr and TOKEN not in stderr
    assert "lead_created" in stderr and "401" in stderr

    # The ledger tells the story, as for a push from the command line.
    history = cli("--json", "history", "--email", user["email"])
    assert history.exit_code == 0, str(history)
    outcomes = sorted(entry["outcome"] for entry in history.json["attempts"])
    assert outcomes == ["already_booked", "created"]
    log = (Path(os.environ["STSYNC_STATE_DIR"]) / "default" / "stsync.log").read_text()
    assert TOKEN not in log and "serve received 202 lead_created" in log


@pytest.mark.skipif(not CAN_SIGNAL_A_THREAD, reason="needs Linux's tgkill and /proc")
def test_a_sigterm_the_kernel_hands_to_another_thread_still_stops_serve(connected, serve):
    server = serve()
    signal_another_thread(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0, "".join(server.stderr)
    assert "serve stopped:" in server.proc.stdout.read()


def test_serve_needs_a_token_and_takes_the_lock(connected, cli, cli_subprocess, serve):
    result = cli("serve", "--port", "0")
    assert result.exit_code == 2 and "STSYNC_WEBHOOK_TOKEN" in result.stderr

    first = serve()
    second = subprocess.run([sys.executable, "-m", "stsync", "serve", "--port", "0", "--token", TOKEN],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ), stdin=subprocess.DEVNULL)
    assert second.returncode == 7, second.stderr
    assert "serve" in second.stderr
    assert first.terminate()[0] == 0


def test_lead_qualified_is_recorded_and_qualify_does_not_send_it_again(connected, cli, isolated):
    """In-process: the webhook service on a real Connection, then `stsync qualify`."""
    from stsync.connection import Connection
    from stsync.services.serve import WebhookServer
    from stsync.storage.config import load_config
    from stsync.storage.paths import ConnectionPaths

    sb = connected
    user = a_new_lead(sb)
    assert cli("push-lead", "--code", user["code"]).exit_code == 0
    assert cli("map", "qualify", "job-created").exit_code == 0
    [booking] = sb.bookings(external_id=user["code"])

    # Referral Factory's own side qualifies the lead (by hand, say) and sends the webhook.
    httpx.put(f"{sb.rf_api_url}/users/qualification", json={"qualified": True, "id": user["id"]},
              headers={"Authorization": f"Bearer {sb.credentials.rf_api_key}"}, timeout=10).raise_for_status()
    config_path = isolated / "config.toml"
    conn = Connection.open(ConnectionPaths.for_config(config_path), load_config(config_path))
    try:
        with WebhookServer(conn, token=TOKEN, port=0) as server:
            host, port = server.address
            answer = httpx.post(f"http://{host}:{port}/hooks/{TOKEN}/lead-qualified",
                                json={"email": user["email"], "code": user["code"]}, timeout=10)
            assert answer.status_code == 202, answer.text
            assert server.wait_idle()
        push = conn.ledger.get_push(user["code"])
        assert push.qualification == "qualified"
        assert conn.ledger.get_delivery(answer.json()["delivery"]).outcome == "recorded"
    finally:
        conn.close()

    sb.convert_booking_to_job(booking["id"])
    sb.clear_request_log()
    result = cli("--json", "qualify")
    assert result.exit_code == 0, str(result)
    assert sb.count_requests(service="referral_factory", method="PUT", path_contains="/users/qualification") == 0
    assert result.json["counts"]["qualified"] == 0


def ledger_of(isolated: Path):
    from stsync.storage.ledger import Ledger

    return Ledger.open(isolated / "state" / "default" / "ledger.sqlite3")


def test_a_delivery_naming_the_user_only_by_id_becomes_a_booking(connected, serve):
    sb = connected
    user = a_new_lead(sb)
    server = serve()
    answer = httpx.post(f"{server.base}/hooks/{TOKEN}/lead-created", json={"id": user["id"]}, timeout=10)
    assert answer.status_code == 202, answer.text
    [booking] = wait_for(lambda: sb.bookings(external_id=user["code"]), what="the booking")
    assert booking["name"] == user["first_name"]
    code, _, stderr = server.terminate()
    assert code == 0, stderr


def test_sigterm_with_a_dripping_client_exits_within_seconds_and_records_the_run(connected, serve, isolated):
    server = serve()
    host, port = server.base.removeprefix("http://").split(":")
    dripping = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    for sock in dripping:
        sock.send(f"POST /hooks/{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Le".encode())
    time.sleep(0.3)
    started = time.monotonic()
    code, stdout, stderr = server.terminate(timeout=15)
    took = time.monotonic() - started
    for sock in dripping:
        sock.close()
    assert code == 0, stderr
    assert took < 10, f"SIGTERM took {took:.1f} s"  # a dripping client held the old server for 60 s and more
    ledger = ledger_of(isolated)
    try:
        run = ledger.last_run("serve")
        assert run.outcome == "ok" and run.finished_at is not None
    finally:
        ledger.close()


def test_kill_9_after_202s_then_a_restart_gives_every_delivery_its_outcome_and_one_booking(connected, serve, isolated):
    """Deliveries answered 202 by a process killed before it could process them are processed
    by the next start; the killed run is closed as interrupted; each lead is booked once."""
    from stsync.sandbox import Faults

    sb = connected
    users = sb.add_leads(6)
    # Referral Factory's user reads take 2 s each: the first serve cannot get far.
    sb.set_faults(Faults(latency=2.0, path_contains="/users"))
    first = serve()
    keys = []
    for user in users:
        answer = httpx.post(f"{first.base}/hooks/{TOKEN}", json=new_lead_payload(user), timeout=10)
        assert answer.status_code == 202, answer.text
        keys.append(answer.json()["delivery"])
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    ledger = ledger_of(isolated)
    try:
        waiting = [record.key for record in ledger.deliveries_to_process()]
        assert len(waiting) >= 4, "the kill landed before most deliveries were processed"
        assert ledger.last_run("serve").outcome == "interrupted"  # read as such: its process is dead
    finally:
        ledger.close()

    sb.set_faults(None)
    second = serve()
    # The first copy of a delivery is re-sent meanwhile: processed once, not "duplicate" with nothing done.
    again = httpx.post(f"{second.base}/hooks/{TOKEN}", json=new_lead_payload(users[-1]), timeout=10)
    assert again.status_code in (200, 202), again.text
    second.wait_idle()
    code, stdout, stderr = second.terminate()
    assert code == 0, stderr
    assert "delivery(ies) received before the last stop" in stderr

    for user in users:
        assert len(sb.bookings(external_id=user["code"])) == 1, user["code"]
    ledger = ledger_of(isolated)
    try:
        assert ledger.deliveries_to_process() == []
        assert {ledger.get_delivery(key).outcome for key in keys} <= {"created", "already_booked"}
        first_run, second_run = sorted(ledger.recent_runs(job="serve"), key=lambda r: r.id)
        [row] = ledger._query("SELECT outcome FROM runs WHERE id = ?", (first_run.id,))
        assert row["outcome"] == "interrupted", "closed in the ledger, not only read as interrupted"
        assert second_run.outcome == "ok" and second_run.counts["resumed"] == len(waiting)
    finally:
        ledger.close()
