"""services.serve.WebhookServer: the handler and its worker behind the real HTTP server on a
free port, as one recorded run (the CLI and its signals: tests/unit/test_cli_serve.py)."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import pytest
from webhook_fakes import TOKEN, FakeReferralFactory, PushRecorder, lead_payload  # tests/support

from stsync.errors import InvalidRecord, UsageError
from stsync.services import serve as serve_service
from stsync.services.push import PushResult
from stsync.services.serve import WebhookServer
from stsync.webhooks.handler import MAX_BODY_BYTES


@pytest.fixture
def conn(make_connection):
    """The real connection and ledger; Referral Factory is the fake (ServiceTitan is never reached)."""
    return make_connection(referral_factory=FakeReferralFactory())


@pytest.fixture
def pushes(conn) -> PushRecorder:
    return PushRecorder(conn)


@pytest.fixture
def server(conn, pushes):
    events = []
    srv = WebhookServer(conn, token=TOKEN, host="127.0.0.1", port=0, observer=events.append, push_for=pushes)
    srv.events = events
    srv.start()
    yield srv
    srv.stop()


def post(server: WebhookServer, path: str = f"/hooks/{TOKEN}", *, body=None, content: bytes | None = None,
         headers: dict | None = None) -> httpx.Response:
    host, port = server.address
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(f"http://{host}:{port}{path}", content=content,
                      headers={"Content-Type": "application/json", **(headers or {})}, timeout=10)


def test_deliveries_over_http_are_answered_deduped_and_pushed_once_in_the_run(server, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    answers = [post(server, body=lead_payload()) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 200]
    assert answers[0].headers["content-type"] == "application/json" and answers[0].headers["connection"] == "close"
    assert server.wait_idle()
    assert [(c[0].referral_code, c[2]) for c in pushes.calls] == [("ueONFmUp", server.run_id)]
    assert server.url == f"http://127.0.0.1:{server.address[1]}/hooks/"
    host, port = server.address
    health = httpx.get(f"http://{host}:{port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"ok": True, "queued": 0}
    by_query = httpx.get(f"http://{host}:{port}/hooks/{TOKEN}/lead-created",
                         params={"id": "456", "email": "jane@example.com", "code": "ueONFmUp", "signed_up_at": "2025-06-01"}, timeout=5)
    assert by_query.status_code == 200 and by_query.json()["outcome"] == "duplicate"


def test_the_body_is_refused_before_it_is_read_when_too_large_chunked_or_unreadable(server, pushes):
    big = post(server, content=b" " * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "too large" in big.json()["error"]
    host, port = server.address

    def raw(request: bytes) -> tuple[int, dict]:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    path = f"/hooks/{TOKEN}".encode()
    status, answer = raw(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in answer["error"]
    status, answer = raw(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n")
    assert (status, answer["error"]) == (400, "bad Content-Length")
    # A claimed size over the limit is answered without waiting for a byte of the body.
    status, answer = raw(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))
    assert status == 413
    assert pushes.calls == []


def test_stop_finishes_the_queue_and_records_the_run(conn, pushes):
    pushes.delay = 0.05
    for n in range(5):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")
    srv = WebhookServer(conn, token=TOKEN, port=0, push_for=pushes)
    srv.start()
    for n in range(5):
        assert post(srv, body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).status_code == 202
    srv.stop()
    assert [c[0].referral_code for c in pushes.calls] == [f"C{n}" for n in range(5)], "in arrival order, all of them"
    run = conn.ledger.last_run("serve")
    assert run.outcome == "ok" and run.counts["processed"] == 5 and run.counts["received"] == 5
    with pytest.raises(httpx.ConnectError):
        post(srv, body={"email": "late@example.com", "event": "lead created"})
    srv.stop()  # twice is harmless


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
