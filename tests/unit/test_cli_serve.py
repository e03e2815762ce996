"""cli/serve.py: the webhook server runs until SIGINT/SIGTERM (or a stop event), then finishes
its queue, records the run and restores the signal handlers it replaced."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest
from webhook_fakes import TOKEN, FakeReferralFactory, PushRecorder  # tests/support

from stsync.cli.serve import serve_until_signalled
from stsync.services.serve import WebhookServer


@pytest.fixture
def conn(make_connection):
    """The real connection and ledger; Referral Factory is the fake (ServiceTitan is never reached)."""
    return make_connection(referral_factory=FakeReferralFactory())


def deliver(server: WebhookServer, body: dict) -> httpx.Response:
    host, port = server.address
    return httpx.post(f"http://{host}:{port}/hooks/{TOKEN}", content=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"}, timeout=10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_serving_after_the_queue_is_done(conn, signum):
    assert threading.current_thread() is threading.main_thread()
    pushes = PushRecorder(conn)
    pushes.delay = 0.1
    conn.referral_factory.add(1, "C1", "one@example.com")
    srv = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes)
    previous = signal.getsignal(signum)
    answers: list[int] = []

    def deliver_then_signal(server: WebhookServer) -> None:
        def run():
            answers.append(deliver(server, {"email": "one@example.com", "code": "C1", "event": "lead created"}).status_code)
            os.kill(os.getpid(), signum)

        threading.Thread(target=run, daemon=True).start()

    serve_until_signalled(srv, on_started=deliver_then_signal)
    assert answers == [202] and len(pushes.calls) == 1
    assert conn.ledger.last_run("serve").outcome == "ok"
    assert signal.getsignal(signum) is previous


def test_off_the_main_thread_only_the_stop_event_ends_it(conn):
    pushes = PushRecorder(conn)
    stop = threading.Event()
    started = threading.Event()
    before = signal.getsignal(signal.SIGTERM)

    def run() -> None:
        serve_until_signalled(WebhookServer(conn, token=TOKEN, port=0, push_for=pushes), stop=stop,
                              on_started=lambda server: started.set())

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    assert signal.getsignal(signal.SIGTERM) is before  # no handler installed from another thread
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and conn.ledger.last_run("serve").outcome == "ok"
