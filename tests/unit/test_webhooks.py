"""services.webhooks: classification, delivery keys, and the real HTTP server on a free port.

Referral Factory is a small fake (users of the campaign, every lookup recorded); the booking
step (``services.push.push_lead``) is replaced by a recorder here — the real one runs in
tests/e2e/test_serve.py against the sandbox. The ledger is the real one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import httpx
import pytest

from stsync.errors import InvalidRecord, UsageError
from stsync.referralfactory.models import Campaign
from stsync.services import push as push_module
from stsync.services import webhooks
from stsync.services.leads import Lead
from stsync.services.push import PushResult
from stsync.services.webhooks import (
    LEAD_CREATED,
    LEAD_QUALIFIED,
    REFERRER_JOINED,
    REWARD_ISSUED,
    WebhookRejected,
    WebhookServer,
    apply_key_aliases,
    check_token,
    classify,
    delivery_key,
    event_from_text,
    parse_payload,
    serve_until_signalled,
)
from connection_fixtures import CAMPAIGN  # tests/support
from fakes import FakeReferralFactoryUsers  # tests/support

TOKEN = "s3cret-token-for-tests-0123456789"


class FakeReferralFactory(FakeReferralFactoryUsers):

    def add(self, user_id: int, code: str, email: str, **extra) -> dict:
        user = {"id": user_id, "campaign_id": CAMPAIGN, "code": code, "email": email, "first_name": "Jo",
                "type": "person_invited", "qualified_at": None, **extra}
        self.users[user_id] = user
        return user

    def get_campaign(self, campaign_id):
        return Campaign(id=campaign_id, code="spring", name="Spring Referrals", status="launched")


class PushRecorder:
    """Stands in for push_lead: records each call, answers like the real one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Lead, str, int | None]] = []
        self.fail: Exception | None = None
        self.delay = 0.0

    def __call__(self, conn, lead, *, kind="lead", run_id=None, dry_run=False):
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.calls.append((lead, kind, run_id))
        return PushResult(lead=lead, kind=kind, outcome="created", external_id=lead.referral_code,
                          booking_id=5000 + len(self.calls), status="New", message="created")


@pytest.fixture
def conn(make_connection):
    """The real ledger; Referral Factory is the fake above, ServiceTitan is never reached (push_lead is recorded)."""
    return make_connection(referral_factory=FakeReferralFactory())


@pytest.fixture
def pushes(monkeypatch) -> PushRecorder:
    recorder = PushRecorder()
    monkeypatch.setattr(push_module, "push_lead", recorder)
    return recorder


@pytest.fixture
def server(conn, pushes):
    events = []
    srv = WebhookServer(conn, token=TOKEN, host="127.0.0.1", port=0, observer=events.append)
    srv.events = events
    srv.start()
    yield srv
    srv.stop()


def post(server: WebhookServer, path: str = f"/hooks/{TOKEN}", *, body=None, content: bytes | None = None,
         headers: dict | None = None) -> httpx.Response:
    host, port = server.address
    url = f"http://{host}:{port}{path}"
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **(headers or {})}, timeout=10)


def lead_payload(code: str = "ueONFmUp", email: str = "jane@example.com", **extra) -> dict:
    return {"id": 456, "first_name": "Jane", "email": email, "code": code, "type": "person_invited",
            "signed_up_at": "2025-06-01", "campaign_id": CAMPAIGN, **extra}


# -- classification ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "user_type", "event"),
    [
        ("A new lead is created", None, LEAD_CREATED),
        ("lead.created", None, LEAD_CREATED),
        ("leadCreated", None, LEAD_CREATED),
        ("lead-created", None, LEAD_CREATED),
        ("A lead is qualified", None, LEAD_QUALIFIED),
        ("lead_qualified", None, LEAD_QUALIFIED),
        ("A new referrer joins", None, REFERRER_JOINED),
        ("referrer-joined", None, REFERRER_JOINED),
        ("A reward is issued", None, REWARD_ISSUED),
        ("user.created", "person_invited", LEAD_CREATED),
        ("user.created", "person_referring", REFERRER_JOINED),
        ("user.created", None, None),
        ("invoice.paid", None, None),
        ("", None, None),
    ],
)
def test_event_names(text, user_type, event):
    assert event_from_text(text, user_type=user_type) == event


def test_classify_prefers_the_url_then_the_header_then_the_payload_then_the_user_type():
    payload = {"event": "A lead is qualified", "data": lead_payload()}
    assert classify(payload, path_event="lead-created", header_event="referrer-joined") == LEAD_CREATED
    assert classify(payload, header_event="referrer-joined") == REFERRER_JOINED
    assert classify(payload) == LEAD_QUALIFIED
    assert classify(lead_payload()) == LEAD_CREATED
    assert classify(lead_payload(qualified_at="2025-06-02")) == LEAD_QUALIFIED
    assert classify({"user": {**lead_payload(), "type": "person_referring"}}) == REFERRER_JOINED


@pytest.mark.parametrize(
    ("payload", "path_event", "fragment"),
    [
        (lead_payload(), "bogus", "unknown event 'bogus' in the URL path"),
        ({"event": "invoice.paid", **lead_payload()}, None, "unknown event 'invoice.paid'"),
        ({"email": "jane@example.com"}, None, "cannot tell which event"),
    ],
)
def test_classify_rejects_what_it_cannot_name(payload, path_event, fragment):
    with pytest.raises(WebhookRejected) as caught:
        classify(payload, path_event=path_event)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_parse_payload_json_form_query_and_errors():
    assert parse_payload(b'{"email": "a@b.c"}', "application/json") == {"email": "a@b.c"}
    assert parse_payload(b"email=a%40b.c&code=X", "application/x-www-form-urlencoded; charset=utf-8") == {"email": "a@b.c", "code": "X"}
    assert parse_payload(b"", None, "email=a%40b.c") == {"email": "a@b.c"}
    assert parse_payload(b'\xef\xbb\xbf{"a": 1}', None) == {"a": 1}  # a BOM is tolerated
    for body, fragment in [(b'{"email": ', "not JSON (Expecting value at line 1, column 11)"),
                           (b"   ", "empty body"), (b"\xff\xfe", "not UTF-8")]:
        with pytest.raises(WebhookRejected) as caught:
            parse_payload(body, "application/json")
        assert caught.value.status == 400 and fragment in caught.value.message


def test_key_aliases_rename_keys_at_every_level_and_fill_meta():
    aliases = {"email_address": "email", "ref": "referral_code", "Phone Number": "meta.Phone"}
    payload = {"event": "x", "data": {"Email_Address": "a@b.c", "ref": "R1", "phone number": "555",
                                       "meta": [{"field": "Last Name", "value": "Doe"}]}}
    assert apply_key_aliases(payload, aliases) == {
        "event": "x",
        "data": {"email": "a@b.c", "referral_code": "R1",
                 "meta": [{"field": "Last Name", "value": "Doe"}, {"field": "Phone", "value": "555"}]},
    }
    assert apply_key_aliases(payload, {}) is payload


def test_delivery_keys():
    lead = Lead(email="Jane@Example.com", referral_code="C1", rf_user_id=456, signed_up_at="2025-06-01")
    assert delivery_key(LEAD_CREATED, lead, {"any": "thing"}) == "lead_created:id=456:2025-06-01"
    no_id = Lead(email="Jane@Example.com", referral_code="C1")
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}).startswith("lead_created:code=C1:sha256=")
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}) == delivery_key(LEAD_CREATED, no_id, {"a": 1})
    assert delivery_key(LEAD_CREATED, no_id, {"a": 1}) != delivery_key(LEAD_CREATED, no_id, {"a": 2})
    only_email = Lead(email="Jane@Example.com")
    assert delivery_key(LEAD_CREATED, only_email, {}).startswith("lead_created:email=jane@example.com:")
    # A lead qualified, unqualified and qualified again is two events.
    first = delivery_key(LEAD_QUALIFIED, lead, {"data": {"email": "x@y.z", "qualified_at": "2025-06-02"}})
    again = delivery_key(LEAD_QUALIFIED, lead, {"data": {"email": "x@y.z", "qualified_at": "2025-07-09"}})
    assert first == "lead_qualified:id=456:2025-06-02" and first != again


def test_check_token():
    with pytest.raises(UsageError, match="STSYNC_WEBHOOK_TOKEN"):
        check_token(None)
    with pytest.raises(UsageError, match="at least 16"):
        check_token("short")
    with pytest.raises(UsageError, match="contain no"):
        check_token("a/b" * 10)
    assert check_token(f"  {TOKEN}\n") == TOKEN


# -- the server ---------------------------------------------------------------------------------------


def test_a_lead_delivered_three_times_is_pushed_once(server, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    answers = [post(server, body=lead_payload()) for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 200, 200]
    assert answers[0].json()["outcome"] == "queued" and answers[0].json()["event"] == LEAD_CREATED
    assert [a.json()["outcome"] for a in answers[1:]] == ["duplicate", "duplicate"]
    assert server.wait_idle()
    assert len(pushes.calls) == 1
    lead, kind, run_id = pushes.calls[0]
    # The booking is made from what Referral Factory says, with the campaign's name.
    assert (lead.email, lead.referral_code, lead.campaign_name, kind) == ("jane@example.com", "ueONFmUp", "Spring Referrals", "lead")
    assert run_id == server.run_id
    record = conn.ledger.get_delivery(answers[0].json()["delivery"])
    assert (record.event, record.external_id, record.outcome) == (LEAD_CREATED, "ueONFmUp", "created")
    assert server.stats.received == 3 and server.stats.duplicates == 2 and server.stats.processed == 1


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/hooks/{TOKEN}", {}),
        (f"/hooks/{TOKEN}/lead-created", {}),
        ("/hooks", {"X-Stsync-Token": TOKEN}),
        ("/hooks/lead-created", {"X-Stsync-Token": TOKEN}),
        ("/hooks", {"Authorization": f"Bearer {TOKEN}"}),
    ],
)
def test_the_token_may_come_in_the_path_or_a_header(server, conn, path, headers):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    assert post(server, path, body=lead_payload(), headers=headers).status_code == 202


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/hooks", {}),
        ("/hooks/not-the-token", {}),
        (f"/hooks/{TOKEN[:-1]}", {}),
        ("/hooks", {"X-Stsync-Token": "wrong"}),
        ("/hooks", {"Authorization": f"Basic {TOKEN}"}),
    ],
)
def test_a_wrong_or_missing_token_is_401_and_nothing_is_recorded(server, conn, pushes, path, headers):
    answer = post(server, path, body=lead_payload(), headers=headers)
    assert answer.status_code == 401 and answer.json() == {"ok": False, "error": "missing or wrong token"}
    assert server.wait_idle() and pushes.calls == []
    assert conn.ledger.get_delivery(delivery_key(LEAD_CREATED, Lead(email="x", rf_user_id=456, signed_up_at="2025-06-01"), {})) is None
    assert server.stats.received == 0 and server.stats.rejected == 1


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b'{"email": "jane@example.com", ', 400, "not JSON"),
        (b"[1, 2]", 400, "record #1 is int"),
        (b'"just a string"', 400, "expected a JSON object"),
        (json.dumps({"event": "invoice.paid", "email": "a@b.c"}).encode(), 400, "unknown event"),
        (json.dumps({"code": "X1", "type": "person_invited"}).encode(), 400, "has no e-mail"),
        (json.dumps({"email": "a@b.c", "code": "X1"}).encode(), 400, "cannot tell which event"),
        (b"", 400, "empty body"),
    ],
)
def test_malformed_deliveries_get_a_400_with_the_reason(server, pushes, content, status, fragment):
    # The event comes from the URL unless the payload is about the event itself.
    path = f"/hooks/{TOKEN}" if b"event" in content or b"type" in content or b"X1" in content else f"/hooks/{TOKEN}/lead-created"
    answer = post(server, path, content=content)
    assert answer.status_code == status
    assert fragment in answer.json()["error"]
    assert server.wait_idle() and pushes.calls == []
    assert server.events[-1].outcome == "rejected"


def test_other_paths_methods_and_sizes(server):
    host, port = server.address
    base = f"http://{host}:{port}"
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"ok": True, "queued": 0}
    assert httpx.post(f"{base}/elsewhere", content=b"{}", timeout=5).status_code == 404
    assert httpx.delete(f"{base}/hooks/{TOKEN}", timeout=5).status_code == 405
    assert post(server, f"/hooks/{TOKEN}/lead-created/extra", body=lead_payload()).status_code == 404
    big = post(server, content=b" " * (webhooks.MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "too large" in big.json()["error"]


def test_a_get_delivery_reads_the_query_string(server, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    host, port = server.address
    answer = httpx.get(f"http://{host}:{port}/hooks/{TOKEN}/lead-created",
                       params={"email": "jane@example.com", "code": "ueONFmUp"}, timeout=5)
    assert answer.status_code == 202
    assert server.wait_idle() and len(pushes.calls) == 1


def test_webhook_key_aliases_from_the_config(conn, pushes):
    conn.config.webhook.aliases = {"email": ["email_address"], "referral_code": ["ref"]}
    conn.referral_factory.add(456, "R-77", "jane@example.com")
    with WebhookServer(conn, token=TOKEN, port=0) as srv:
        answer = post(srv, f"/hooks/{TOKEN}/lead-created", body={"email_address": "jane@example.com", "ref": "R-77"})
        assert answer.status_code == 202, answer.text
        assert srv.wait_idle()
    assert [call[0].referral_code for call in pushes.calls] == ["R-77"]


def test_the_user_is_read_back_and_must_belong_to_the_campaign(server, conn, pushes):
    conn.referral_factory.add(456, "OTHER", "jane@example.com", campaign_id=99)
    answer = post(server, body=lead_payload(code="OTHER"))
    assert answer.status_code == 202
    assert server.wait_idle()
    assert pushes.calls == []
    record = conn.ledger.get_delivery(answer.json()["delivery"])
    assert record.outcome == "failed" and "campaign 99, not 7" in record.error["message"]
    assert server.events[-1].outcome == "failed"


def test_an_unknown_user_fails_the_delivery_and_a_redelivery_is_processed_again(server, conn, pushes):
    first = post(server, body=lead_payload())
    assert first.status_code == 202 and server.wait_idle()
    record = conn.ledger.get_delivery(first.json()["delivery"])
    assert record.outcome == "failed" and "has no user matching" in record.error["message"]
    assert pushes.calls == []

    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")  # it exists now
    again = post(server, body=lead_payload())
    assert again.status_code == 202 and again.json()["outcome"] == "queued"
    assert server.wait_idle() and len(pushes.calls) == 1
    assert conn.ledger.get_delivery(first.json()["delivery"]).outcome == "created"
    assert post(server, body=lead_payload()).json()["outcome"] == "duplicate"


def test_an_id_that_is_not_the_user_falls_back_to_the_code(server, conn, pushes):
    conn.referral_factory.add(456, "SOMEONE", "someone@example.com")
    conn.referral_factory.add(789, "ueONFmUp", "jane@example.com")
    assert post(server, body=lead_payload()).status_code == 202  # id 456 is another person
    assert server.wait_idle()
    assert [c[0].rf_user_id for c in pushes.calls] == [789]


def test_a_failing_push_is_recorded_and_the_worker_goes_on(server, conn, pushes):
    conn.referral_factory.add(1, "C1", "one@example.com")
    conn.referral_factory.add(2, "C2", "two@example.com")
    pushes.fail = RuntimeError("boom")
    first = post(server, body={"email": "one@example.com", "code": "C1", "event": "lead created"})
    assert server.wait_idle()
    pushes.fail = None
    post(server, body={"email": "two@example.com", "code": "C2", "event": "lead created"})
    assert server.wait_idle()
    assert [c[0].referral_code for c in pushes.calls] == ["C2"]
    failed = conn.ledger.get_delivery(first.json()["delivery"])
    assert failed.outcome == "failed" and failed.error == {"type": "RuntimeError", "message": "unexpected error; see the log"}


def test_a_record_level_push_failure_is_recorded_with_its_error(server, conn, monkeypatch):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")

    def failing_push(conn_, lead, *, kind="lead", run_id=None, dry_run=False):
        exc = InvalidRecord("lead jane@example.com has no value for name", field="name")
        return PushResult(lead=lead, kind=kind, outcome="failed", error={"type": "InvalidRecord"}, exception=exc)

    monkeypatch.setattr(push_module, "push_lead", failing_push)
    answer = post(server, body=lead_payload())
    assert server.wait_idle()
    record = conn.ledger.get_delivery(answer.json()["delivery"])
    assert record.outcome == "failed" and record.error["message"] == "lead jane@example.com has no value for name"
    assert server.stats.failed == 1


def test_lead_qualified_is_recorded_on_the_push(server, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com", qualified_at="2025-06-02")
    attempt = conn.ledger.record_push_intent("ueONFmUp", kind="lead", email="jane@example.com", name="Jane")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5001)

    answer = post(server, f"/hooks/{TOKEN}/lead-qualified", body=lead_payload(qualified_at="2025-06-02"))
    assert answer.status_code == 202 and answer.json()["event"] == LEAD_QUALIFIED
    assert server.wait_idle()

    assert pushes.calls == []
    assert conn.ledger.get_push("ueONFmUp").qualification == "qualified"
    [record] = conn.ledger.qualifications_for("ueONFmUp")
    assert (record.action, record.state, record.rule) == ("qualify", "done", "referral_factory")
    assert conn.ledger.get_delivery(answer.json()["delivery"]).outcome == "recorded"


def test_lead_qualified_is_not_recorded_unless_referral_factory_confirms_it(server, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")  # still pending
    attempt = conn.ledger.record_push_intent("ueONFmUp", kind="lead", email="jane@example.com", name="Jane")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5001)
    answer = post(server, f"/hooks/{TOKEN}/lead-qualified", body=lead_payload())
    assert server.wait_idle()
    assert conn.ledger.get_push("ueONFmUp").qualification is None
    assert conn.ledger.get_delivery(answer.json()["delivery"]).outcome == "ignored"


def test_lead_qualified_for_a_lead_never_pushed_changes_nothing(server, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com", qualified_at="2025-06-02")
    answer = post(server, f"/hooks/{TOKEN}/lead-qualified", body=lead_payload())
    assert server.wait_idle()
    assert conn.ledger.get_push("ueONFmUp") is None
    assert conn.ledger.get_delivery(answer.json()["delivery"]).outcome == "ignored"


def test_rewards_and_referrers_without_a_booking_action_are_ignored(server, conn, pushes):
    reward = post(server, f"/hooks/{TOKEN}/reward-issued", body={"amount": 10})
    assert reward.status_code == 200 and reward.json()["outcome"] == "ignored"

    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    joined = post(server, body={"email": "ref@example.com", "code": "REF9", "type": "person_referring"})
    assert joined.status_code == 202 and joined.json()["event"] == REFERRER_JOINED
    assert server.wait_idle()
    assert pushes.calls == []
    assert conn.ledger.get_delivery(joined.json()["delivery"]).outcome == "ignored"


def test_referrers_are_pushed_as_referrers_when_their_action_creates_bookings(conn, pushes):
    conn.config.referrers.action = "create_booking"
    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    with WebhookServer(conn, token=TOKEN, port=0) as srv:
        post(srv, f"/hooks/{TOKEN}/referrer-joined", body={"email": "ref@example.com", "code": "REF9"})
        assert srv.wait_idle()
    assert [(c[0].referral_code, c[1]) for c in pushes.calls] == [("REF9", "referrer")]


def test_a_user_of_the_wrong_kind_for_the_event_fails(server, conn, pushes):
    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    answer = post(server, f"/hooks/{TOKEN}/lead-created", body={"email": "ref@example.com", "code": "REF9"})
    assert server.wait_idle()
    assert pushes.calls == []
    assert "person_referring" in conn.ledger.get_delivery(answer.json()["delivery"]).error["message"]


def test_stop_finishes_the_queue_and_records_the_run(conn, pushes):
    pushes.delay = 0.05
    for n in range(5):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")
    srv = WebhookServer(conn, token=TOKEN, port=0)
    srv.start()
    for n in range(5):
        assert post(srv, body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).status_code == 202
    srv.stop()
    assert [c[0].referral_code for c in pushes.calls] == [f"C{n}" for n in range(5)], "in arrival order, all of them"
    run = conn.ledger.last_run("serve")
    assert run.outcome == "ok" and run.counts["processed"] == 5 and run.counts["received"] == 5
    srv.stop()  # twice is harmless


def test_sigterm_stops_serving_after_the_queue_is_done(conn, pushes):
    assert threading.current_thread() is threading.main_thread()
    pushes.delay = 0.1
    conn.referral_factory.add(1, "C1", "one@example.com")
    srv = WebhookServer(conn, token=TOKEN, port=0)
    previous = signal.getsignal(signal.SIGTERM)

    def deliver_then_terminate(server: WebhookServer) -> None:
        def run():
            post(server, body={"email": "one@example.com", "code": "C1", "event": "lead created"})
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=run, daemon=True).start()

    serve_until_signalled(srv, on_started=deliver_then_terminate)
    assert len(pushes.calls) == 1
    assert conn.ledger.last_run("serve").outcome == "ok"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_the_token_never_reaches_the_log(server, conn, caplog):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    caplog.set_level(logging.DEBUG, logger="stsync")
    post(server, body=lead_payload())
    post(server, f"/hooks/{TOKEN}x", body=lead_payload())
    assert server.wait_idle()
    assert caplog.records, "deliveries are logged"
    assert TOKEN not in caplog.text
    assert "received 202 lead_created" in caplog.text and "received 401" in caplog.text


def test_a_port_in_use_is_a_clear_error(server, conn):
    _, port = server.address
    other = WebhookServer(conn, token=TOKEN, port=port)
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
        other.start()
