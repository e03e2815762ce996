"""services.serve.WebhookServer: the handler and its worker pool behind the real HTTP server
(waitress) on a free port, as one recorded run; real sockets throughout (the CLI and its
signals: tests/unit/test_cli_serve.py and tests/e2e/test_serve.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from webhook_fakes import TOKEN, FakeReferralFactory, PushRecorder, lead_payload  # tests/support

from stsync.errors import InvalidRecord, UsageError
from stsync.services import serve as serve_service
from stsync.services.push import PushResult
from stsync.services.serve import WebhookServer
from stsync.webhooks.handler import MAX_BODY_BYTES, Response
from stsync.webhooks.http_server import ServerLimits


@pytest.fixture
def conn(make_connection):
    """The real connection and ledger; Referral Factory is the fake (ServiceTitan is never reached)."""
    return make_connection(referral_factory=FakeReferralFactory())


@pytest.fixture
def pushes(conn) -> PushRecorder:
    return PushRecorder(conn)


@pytest.fixture
def serving(conn, pushes):
    """``serving(**options)`` → a started WebhookServer (stopped after the test)."""
    started: list[WebhookServer] = []

    def start(**options) -> WebhookServer:
        events: list = []
        srv = WebhookServer(conn, token=TOKEN, host="127.0.0.1", port=0, observer=events.append, push_for=pushes, **options)
        srv.events = events
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(serving):
    return serving()


def url(server: WebhookServer, path: str) -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def post(server: WebhookServer, path: str = f"/hooks/{TOKEN}", *, body=None, content: bytes | None = None,
         headers: dict | None = None, timeout: float = 10) -> httpx.Response:
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(url(server, path), content=content, headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=timeout)


def raw_exchange(server: WebhookServer, request: bytes, *, timeout: float = 5) -> tuple[int, dict, bytes]:
    """Send ``request`` as is; → (status, JSON answer, raw head)."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head


def test_deliveries_over_http_are_answered_deduped_and_pushed_once_in_the_run(server, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    answers = [post(server, body=lead_payload()) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 200]
    assert answers[0].headers["content-type"] == "application/json" and answers[0].headers["connection"] == "close"
    assert server.wait_idle()
    assert [(c[0].referral_code, c[2]) for c in pushes.calls] == [("ueONFmUp", server.run_id)]
    assert server.url == f"http://127.0.0.1:{server.address[1]}/hooks/"
    by_query = httpx.get(url(server, f"/hooks/{TOKEN}/lead-created"),
                         params={"id": "456", "email": "jane@example.com", "code": "ueONFmUp", "signed_up_at": "2025-06-01"}, timeout=5)
    assert by_query.status_code == 200 and by_query.json()["outcome"] == "duplicate"


def test_healthz_shows_the_queue_only_to_the_token(server):
    anyone = httpx.get(url(server, "/healthz"), timeout=5)
    assert anyone.status_code == 200 and anyone.json() == {"ok": True}
    with_token = httpx.get(url(server, "/healthz"), headers={"X-Stsync-Token": TOKEN}, timeout=5)
    assert with_token.json() == {"ok": True, "queued": 0}
    wrong = httpx.get(url(server, "/healthz"), headers={"Authorization": "Bearer not-the-token-at-all"}, timeout=5)
    assert wrong.json() == {"ok": True}


def test_the_token_is_checked_from_the_head_before_any_byte_of_the_body(server, conn, pushes):
    """A sender declaring a 1 MB body with a wrong token gets its 401 without sending it."""
    declared = MAX_BODY_BYTES
    for path, extra in ((b"/hooks/wrong-token-0123456789abcdef", b""), (b"/hooks", b"X-Stsync-Token: nope\r\n"), (b"/hooks", b"")):
        status, answer, head = raw_exchange(
            server, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % declared,
        )
        assert (status, answer) == (401, {"ok": False, "error": "missing or wrong token"})
        assert b"connection: close" in head.lower()
    # Expect: 100-continue gets the 401 instead of the go-ahead.
    status, _, head = raw_exchange(server, b"POST /hooks HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert status == 401 and b"100 Continue" not in head
    assert server.stats.rejected == 4 and pushes.calls == []


def test_wrong_token_bodies_sent_anyway_are_dropped_unread(server, conn):
    """httpx sends the whole 1 MB body at once: the answer is a 401 or, when the server closed
    first, a reset — never a delivery, and the server keeps nothing of it."""
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(post(server, "/hooks/wrong-token-0123456789abcdef", content=b"x" * MAX_BODY_BYTES).status_code)
        except httpx.TransportError:
            outcomes.append("reset")
    assert set(outcomes) <= {401, "reset"} and 401 in outcomes
    assert server.stats.received == 0
    assert conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    assert post(server, body=lead_payload()).status_code == 202  # and it still serves


def test_sizes_and_framing(server, conn, pushes):
    big = post(server, content=b" " * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "too large" in big.json()["error"]
    path = f"/hooks/{TOKEN}".encode()
    # A declared size over the limit is answered without waiting for a byte of the body.
    status, answer, _ = raw_exchange(server, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
    assert status == 413 and "too large" in answer["error"]
    status, answer, _ = raw_exchange(server, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n")
    assert status == 400 and "Content-Length" in answer["error"]
    # A head over 32 KiB: answered 431 as soon as the limit is passed, the rest unread (so the
    # sender may see the connection reset before it reads the answer).
    try:
        status, answer, _ = raw_exchange(server, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n")
        assert status == 431 and answer["ok"] is False
    except ConnectionResetError:
        pass
    # A chunked body is buffered (within the limit) and processed like any other.
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    body = json.dumps(lead_payload()).encode()
    status, answer, _ = raw_exchange(
        server, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
    )
    assert status == 202 and answer["outcome"] == "queued"
    assert server.wait_idle() and len(pushes.calls) == 1


def test_a_percent_encoded_token_is_not_the_token_and_never_reaches_the_log(server, conn, caplog):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    caplog.set_level(logging.DEBUG, logger="stsync")
    encoded = "".join(f"%{ord(c):02X}" for c in TOKEN)
    half = TOKEN[:5] + "%" + f"{ord(TOKEN[5]):02X}" + TOKEN[6:]
    for path in (f"/hooks/{encoded}", f"/hooks/{half}/lead-created"):
        answer = post(server, path, body=lead_payload())
        assert answer.status_code == 401, path
    assert post(server, body=lead_payload()).status_code == 202
    assert server.wait_idle()
    assert TOKEN not in caplog.text and encoded not in caplog.text and half not in caplog.text
    assert "serve http: 127.0.0.1 POST /hooks/*** 202" in caplog.text
    assert "serve http: 127.0.0.1 POST /hooks/***/lead-created 401" in caplog.text


def test_x_forwarded_for_is_believed_only_from_the_trusted_proxy(serving, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}

    untrusted = serving()
    post(untrusted, "/hooks/wrong-token-0123456789abcdef", body={}, headers=forwarded)
    post(untrusted, body=lead_payload(), headers=forwarded)
    assert [e.client for e in untrusted.events if e.stage == "received"] == ["127.0.0.1", "127.0.0.1"]

    trusted = serving(limits=ServerLimits(trusted_proxy="127.0.0.1"))
    post(trusted, "/hooks/wrong-token-0123456789abcdef", body={}, headers=forwarded)  # screened from the head
    post(trusted, body=lead_payload(code="OTHER", email="other@example.com"), headers=forwarded)  # handled after the body
    assert [e.client for e in trusted.events if e.stage == "received"] == ["203.0.113.9", "203.0.113.9"]


def hold_slow_and_idle_connections(server: WebhookServer, stop: threading.Event, n: int = 40) -> list[socket.socket]:
    """``n`` connections dripping a request head a byte at a time (slow-loris) and ``n`` idle ones."""
    drippers = [socket.create_connection(server.address, timeout=10) for _ in range(n)]
    idle = [socket.create_connection(server.address, timeout=10) for _ in range(n)]

    def drip() -> None:
        head = f"POST /hooks/{TOKEN} HTTP/1.1\r\nHost: x\r\n".encode()
        for index in range(len(head)):
            if stop.wait(0.3):
                return
            for sock in drippers:
                try:
                    sock.send(head[index:index + 1])
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    return drippers + idle


def test_slow_and_idle_connections_hold_no_request_thread(serving, conn, pushes):
    """One request thread, 80 slow or idle connections that will not finish for 60 s: a
    delivery is answered all the same (a server with a thread per connection, or per read,
    would make it wait for them)."""
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    server = serving(limits=ServerLimits(threads=1, request_timeout=60))
    stop = threading.Event()
    held = hold_slow_and_idle_connections(server, stop)
    try:
        time.sleep(0.5)
        assert server.http.open_connections == 80
        answer = post(server, body=lead_payload(), timeout=15)
        assert answer.status_code == 202
        assert server.wait_idle() and len(pushes.calls) == 1
    finally:
        stop.set()
        for sock in held:
            sock.close()


def closed_by_the_server(sock: socket.socket) -> bool:
    """The peer closed: an end of stream, or a reset — a dripping client's byte that arrived
    after the server's last read makes the kernel answer the close with RST."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_slow_and_idle_connections_are_closed_at_their_deadline(serving, conn):
    server = serving(limits=ServerLimits(request_timeout=2))
    stop = threading.Event()
    held = hold_slow_and_idle_connections(server, stop)
    try:
        # Past the deadline (2 s, checked every second) every slow and idle connection is closed.
        deadline = time.monotonic() + 30
        while server.http.open_connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.http.open_connections == 0
        for sock in held[:3] + held[-3:]:
            sock.settimeout(5)
            assert closed_by_the_server(sock)
    finally:
        stop.set()
        for sock in held:
            sock.close()


def test_connections_over_the_cap_wait_in_the_backlog_until_a_slot_frees(serving, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    server = serving(limits=ServerLimits(max_connections=5, request_timeout=1.5))
    idle = [socket.create_connection(server.address, timeout=10) for _ in range(5)]
    try:
        started = time.monotonic()
        answer = post(server, body=lead_payload(), timeout=10)
        waited = time.monotonic() - started
        assert answer.status_code == 202
        assert waited > 0.5, "the sixth connection was not accepted until the idle ones timed out"
    finally:
        for sock in idle:
            sock.close()


def test_64_concurrent_senders_get_no_reset(server, conn, pushes):
    for n in range(64):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")

    def send(n: int):
        return post(server, body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).status_code

    gate = threading.Barrier(64)

    def at_once(n: int):
        gate.wait()
        return send(n)

    with ThreadPoolExecutor(64) as executor:
        statuses = list(executor.map(at_once, range(64)))
    assert statuses == [202] * 64
    assert server.wait_idle(30) and sorted(c[0].referral_code for c in pushes.calls) == sorted(f"C{n}" for n in range(64))


def test_stop_is_bounded_with_a_dripping_client_and_records_the_run(conn, pushes):
    srv = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes)
    srv.start()
    dripping = socket.create_connection(srv.address, timeout=10)
    dripping.send(b"POST /hooks HTTP/1.1\r\nHo")
    conn.referral_factory.add(1, "C1", "one@example.com")
    assert post(srv, body={"email": "one@example.com", "code": "C1", "event": "lead created"}).status_code == 202
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 10, "the dripping client does not hold the stop"
    dripping.settimeout(2)
    assert dripping.recv(100) == b""
    dripping.close()
    run = conn.ledger.last_run("serve")
    assert run.outcome == "ok" and run.counts["processed"] == 1 and run.counts["left_waiting"] == 0
    with pytest.raises(httpx.ConnectError):
        post(srv, body={"email": "late@example.com", "event": "lead created"})
    srv.stop()  # twice is harmless


def test_stop_finishes_the_queue_within_the_grace_in_order_per_lead(conn, pushes):
    pushes.delay = 0.05
    for n in range(5):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")
    srv = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes, workers=1)
    srv.start()
    for n in range(5):
        assert post(srv, body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).status_code == 202
    srv.stop()
    assert [c[0].referral_code for c in pushes.calls] == [f"C{n}" for n in range(5)], "one worker: arrival order, all of them"
    run = conn.ledger.last_run("serve")
    assert run.outcome == "ok" and run.counts["processed"] == 5 and run.counts["received"] == 5


def test_what_the_grace_leaves_stays_recorded_and_the_next_start_processes_it(conn, pushes):
    release = threading.Event()

    def stuck_push_for(kind):
        push = pushes(kind)

        def stuck_push(lead, run_id):
            release.wait(30)  # a push that outlives the grace (a slow remote)
            return push(lead, run_id)

        return stuck_push

    for n in range(8):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")
    first = WebhookServer(conn, token=TOKEN, port=0, push_for=stuck_push_for, workers=2, shutdown_grace=0.2)
    first.start()
    keys = [post(first, body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).json()["delivery"]
            for n in range(8)]
    started = time.monotonic()
    first.stop()
    assert time.monotonic() - started < 10, "stop does not wait for the stuck pushes"
    assert first.stats.left_waiting == 8 and conn.ledger.last_run("serve").counts["left_waiting"] == 8
    release.set()  # the two that were running finish and record their outcomes
    assert first.pool.wait_idle(10)
    deadline = time.monotonic() + 10
    while len(conn.ledger.deliveries_to_process()) > 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting = [r.key for r in conn.ledger.deliveries_to_process()]
    assert len(waiting) == 6 and set(waiting) <= set(keys)

    second = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes)
    second.start()
    try:
        assert second.stats.resumed == 6
        assert second.wait_idle(10)
    finally:
        second.stop()
    assert all(conn.ledger.get_delivery(key).outcome == "created" for key in keys)
    assert sorted(c[0].referral_code for c in pushes.calls) == sorted(f"C{n}" for n in range(8)), "each exactly once"
    assert conn.ledger.last_run("serve").counts["resumed"] == 6


def test_a_serve_run_left_running_by_a_dead_process_is_closed_as_interrupted(conn, pushes):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = conn.ledger.start_run("serve", "serve")
    with conn.ledger.transaction() as tx:
        tx.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, run_id))
    alive = conn.ledger.start_run("serve", "serve")  # this process: alive, left alone
    with WebhookServer(conn, token=TOKEN, port=0, push_for=pushes):
        pass
    [row] = conn.ledger._query("SELECT outcome, finished_at, error FROM runs WHERE id = ?", (run_id,))
    assert row["outcome"] == "interrupted" and row["finished_at"] and "killed" in row["error"]
    [row] = conn.ledger._query("SELECT outcome FROM runs WHERE id = ?", (alive,))
    assert row["outcome"] == "running"
    assert os.getpid() != dead.pid


def test_an_extra_route_answers_get_with_the_token_only_and_never_reads_a_body(conn, pushes):
    srv = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes)
    srv.add_route("probe", lambda request: Response(200, {"pending": srv.pending}))
    with pytest.raises(ValueError):
        srv.add_route("hooks", lambda request: Response(200, {}))
    with srv:
        assert httpx.get(url(srv, "/probe"), timeout=5).status_code == 401
        answer = httpx.get(url(srv, "/probe"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"pending": 0}
        status, _, _ = raw_exchange(srv, b"POST /probe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        assert status == 401  # from the head: the declared body is never read
        assert srv.stats.rejected == 0, "a route's 401 is not a rejected delivery"


def test_a_failed_delivery_makes_the_run_partial(conn, pushes):
    pushes.fail = InvalidRecord("lead one@example.com has no value for name", field="name")
    conn.referral_factory.add(1, "C1", "one@example.com")
    with WebhookServer(conn, token=TOKEN, port=0, push_for=pushes) as srv:
        post(srv, body={"email": "one@example.com", "code": "C1", "event": "lead created"})
        assert srv.wait_idle()
    run = conn.ledger.last_run("serve")
    assert run.outcome == "partial" and run.counts["failed"] == 1 and run.counts["outcome_failed"] == 1


def test_the_booking_push_raises_the_error_of_a_failed_record(conn, monkeypatch):
    """What push_lead reports as a failed record reaches the worker as its exception; a kind
    set to "Nothing to action" answers with push_target's notice and pushes nothing."""
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    calls = []

    def push_lead(conn_, lead, target, *, run_id=None, dry_run=False):
        calls.append((conn_, target.kind, run_id))
        if lead.email == "jane@example.com":
            exc = InvalidRecord("lead jane@example.com has no value for name", field="name")
            return PushResult(lead=lead, kind=target.kind, outcome="failed", error={"type": "InvalidRecord"}, exception=exc)
        return PushResult(lead=lead, kind=target.kind, outcome="created", booking_id=7001)

    monkeypatch.setattr(serve_service, "push_lead", push_lead)
    push_for = serve_service.booking_push(conn)
    push = push_for("lead")
    assert callable(push)
    with pytest.raises(InvalidRecord, match="no value for name"):
        push(lead_from_payload(), 3)
    assert push(lead_from_payload(email="sam@example.com"), 4) == ("created", "created", 7001)
    assert calls == [(conn, "lead", 3), (conn, "lead", 4)]
    notice = push_for("referrer")  # [referrers] action is "nothing" in the default config
    assert isinstance(notice, str) and '"Nothing to action"' in notice
    assert len(calls) == 2


def lead_from_payload(**changes):
    from stsync.leads import leads_from_json

    [lead] = leads_from_json(lead_payload(**changes))
    return lead


def test_the_token_never_reaches_the_log(server, conn, caplog):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    caplog.set_level(logging.DEBUG, logger="stsync")
    post(server, body=lead_payload())
    post(server, f"/hooks/{TOKEN}x", body=lead_payload())
    assert server.wait_idle()
    assert caplog.records, "deliveries are logged"
    assert TOKEN not in caplog.text
    assert "received 202 lead_created" in caplog.text and "received 401" in caplog.text
    assert "serve http:" in caplog.text  # the access log, redacted


def test_a_port_in_use_is_a_clear_error_and_records_no_run(server, conn):
    _, port = server.address
    other = WebhookServer(conn, token=TOKEN, port=port)
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
        other.start()
    other.stop()
    assert conn.ledger.last_run("serve").id == server.run_id


def test_a_bad_token_is_refused_before_anything_starts(conn):
    with pytest.raises(UsageError, match="at least 16"):
        WebhookServer(conn, token="short", port=0)


def test_the_open_files_limit_is_raised_for_the_connections_or_the_cap_lowered(conn, tmp_path):
    import resource

    from stsync.webhooks.http_server import HttpServer

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
    try:
        http = HttpServer(None, host="127.0.0.1", port=0, limits=ServerLimits(max_connections=1000))
        http.bind()
        try:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1000 + 64
            assert http._server.adj.connection_limit == 1000
        finally:
            http.stop()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # A hard limit too low for the cap: the cap comes down to what fits (a child process: a
    # lowered hard limit cannot be raised again).
    probe = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
        "from stsync.webhooks.http_server import HttpServer, ServerLimits\n"
        "http = HttpServer(None, host='127.0.0.1', port=0, limits=ServerLimits(max_connections=1000)); http.bind()\n"
        "print(http._server.adj.connection_limit); http.stop()\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["136"]
