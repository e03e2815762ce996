"""webhooks.handler, webhooks.pool and webhooks.worker without a socket: a ``Request`` in, a
``Response`` out, the accepted deliveries processed by the real worker pool.

Referral Factory is a small fake (users of the campaign, every lookup recorded); the booking
push is a recorder (the real one runs in tests/e2e/test_serve.py against the sandbox). The
ledger is the real one. tests/unit/test_serve_service.py puts the real HTTP server in front.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest
from webhook_fakes import TOKEN, FakeReferralFactory, PushRecorder, lead_payload  # tests/support

from stsync.errors import InvalidRecord
from stsync.leads import Lead
from stsync.webhooks.deliveries import DeliveryEvent, ServeStats
from stsync.webhooks.handler import MAX_BODY_BYTES, Request, Response, WebhookHandler, loggable_target
from stsync.webhooks.payload import LEAD_CREATED, LEAD_QUALIFIED, REFERRER_JOINED, delivery_key
from stsync.webhooks.pool import DeliveryPool
from stsync.webhooks.worker import DeliveryWorker

RUN_ID = 41


@dataclass
class Endpoint:
    handler: WebhookHandler
    worker: DeliveryWorker
    pool: DeliveryPool
    stats: ServeStats
    events: list[DeliveryEvent]

    def send(self, target: str = f"/hooks/{TOKEN}", *, body=None, content: bytes | None = None,
             headers: dict | None = None, method: str = "POST") -> Response:
        if content is None:
            content = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json", **(headers or {})}
        return self.handler.handle(Request.build(method, target, headers.items(), content))

    def wait_idle(self) -> bool:
        return self.pool.wait_idle()

    def close(self) -> None:
        self.handler.close()
        self.pool.stop(10)


def make_endpoint(conn, pushes, *, workers: int = 4, run_id: int | None = RUN_ID) -> Endpoint:
    events: list[DeliveryEvent] = []
    stats = ServeStats()
    worker = DeliveryWorker(conn, push_for=pushes, stats=stats, observer=events.append, run_id=run_id)
    pool = DeliveryPool(worker.process, workers=workers)
    handler = WebhookHandler(conn, token=TOKEN, queue=pool, stats=stats, observer=events.append)
    pool.start()
    return Endpoint(handler, worker, pool, stats, events)


@pytest.fixture
def conn(make_connection):
    """The real connection and ledger; Referral Factory is the fake (ServiceTitan is never reached)."""
    return make_connection(referral_factory=FakeReferralFactory())


@pytest.fixture
def pushes(conn) -> PushRecorder:
    return PushRecorder(conn)


@pytest.fixture
def endpoint(conn, pushes):
    made = make_endpoint(conn, pushes)
    yield made
    made.close()


# -- the handler: what a sender sees -------------------------------------------------------------


def test_a_lead_delivered_three_times_is_pushed_once(endpoint, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    answers = [endpoint.send(body=lead_payload())]
    assert endpoint.wait_idle()
    answers += [endpoint.send(body=lead_payload()) for _ in range(2)]

    assert [a.status for a in answers] == [202, 200, 200]
    assert answers[0].body["outcome"] == "queued" and answers[0].body["event"] == LEAD_CREATED
    assert [a.body["outcome"] for a in answers[1:]] == ["duplicate", "duplicate"]
    assert endpoint.wait_idle()
    assert len(pushes.calls) == 1
    lead, kind, run_id = pushes.calls[0]
    # The booking is made from what Referral Factory says, with the campaign's name.
    assert (lead.email, lead.referral_code, lead.campaign_name, kind) == ("jane@example.com", "ueONFmUp", "Spring Referrals", "lead")
    assert run_id == RUN_ID
    record = conn.ledger.get_delivery(answers[0].body["delivery"])
    assert (record.event, record.external_id, record.outcome) == (LEAD_CREATED, "ueONFmUp", "created")
    assert endpoint.stats.received == 3 and endpoint.stats.duplicates == 2 and endpoint.stats.processed == 1


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (f"/hooks/{TOKEN}", {}),
        (f"/hooks/{TOKEN}/lead-created", {}),
        ("/hooks", {"X-Stsync-Token": TOKEN}),
        ("/hooks/lead-created", {"x-stsync-token": TOKEN}),
        ("/hooks", {"Authorization": f"Bearer {TOKEN}"}),
    ],
)
def test_the_token_may_come_in_the_path_or_a_header(endpoint, conn, target, headers):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    assert endpoint.send(target, body=lead_payload(), headers=headers).status == 202


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/hooks", {}),
        ("/hooks/not-the-token", {}),
        (f"/hooks/{TOKEN[:-1]}", {}),
        ("/hooks", {"X-Stsync-Token": "wrong"}),
        ("/hooks", {"Authorization": f"Basic {TOKEN}"}),
    ],
)
def test_a_wrong_or_missing_token_is_401_and_nothing_is_recorded(endpoint, conn, pushes, target, headers):
    answer = endpoint.send(target, body=lead_payload(), headers=headers)
    assert answer.status == 401 and answer.body == {"ok": False, "error": "missing or wrong token"}
    assert endpoint.wait_idle() and pushes.calls == []
    assert conn.ledger.get_delivery(delivery_key(LEAD_CREATED, Lead(email="x", rf_user_id=456, signed_up_at="2025-06-01"), {})) is None
    assert endpoint.stats.received == 0 and endpoint.stats.rejected == 1


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b'{"email": "jane@example.com", ', 400, "not JSON"),
        (b"[1, 2]", 400, "record #1 is int"),
        (b'"just a string"', 400, "expected a JSON object"),
        (json.dumps({"event": "invoice.paid", "email": "a@b.c"}).encode(), 400, "unknown event"),
        (json.dumps({"first_name": "Jo", "type": "person_invited"}).encode(), 400, "names no Referral Factory user"),
        (json.dumps({"email": "a@b.c", "code": "X1"}).encode(), 400, "cannot tell which event"),
        (b"", 400, "empty body"),
    ],
)
def test_malformed_deliveries_get_a_400_with_the_reason(endpoint, pushes, content, status, fragment):
    # The event comes from the URL unless the payload is about the event itself.
    target = f"/hooks/{TOKEN}" if b"event" in content or b"type" in content or b"X1" in content else f"/hooks/{TOKEN}/lead-created"
    answer = endpoint.send(target, content=content)
    assert answer.status == status
    assert fragment in answer.body["error"]
    assert endpoint.wait_idle() and pushes.calls == []
    assert endpoint.events[-1].outcome == "rejected" and endpoint.stats.rejected == 1


def test_other_paths_methods_and_sizes(endpoint):
    health = endpoint.send("/healthz", method="GET")
    assert health.status == 200 and health.body == {"ok": True}
    assert endpoint.send("/healthz", method="GET", headers={"X-Stsync-Token": TOKEN}).body == {"ok": True, "queued": 0}
    assert endpoint.send("/elsewhere", content=b"{}").status == 404
    assert endpoint.send(f"/hooks/{TOKEN}", method="DELETE").status == 405
    assert endpoint.send(f"/hooks/{TOKEN}/lead-created/extra", body=lead_payload()).status == 404
    big = endpoint.send(content=b" " * (MAX_BODY_BYTES + 1))
    assert big.status == 413 and "too large" in big.body["error"]


def test_a_delivery_while_stopping_is_503_and_not_recorded(endpoint, conn, pushes):
    endpoint.handler.stop_accepting()
    answer = endpoint.send(body=lead_payload())
    assert answer.status == 503 and "shutting down" in answer.body["error"]
    assert endpoint.send("/hooks", body=lead_payload()).status == 401  # the token is still checked first
    assert endpoint.stats.received == 0 and pushes.calls == []
    assert endpoint.send("/healthz", method="GET").status == 503


@pytest.mark.parametrize(
    ("method", "target", "headers", "status"),
    [
        ("POST", f"/hooks/{TOKEN}", {"Content-Length": "1000000"}, None),  # read the body, then handle
        ("POST", f"/hooks/{TOKEN}", {"Content-Length": str(MAX_BODY_BYTES + 1)}, 413),
        ("POST", "/hooks/not-the-token-0123456789", {"Content-Length": "1000000"}, 401),
        ("POST", "/hooks", {"Content-Length": "1000000"}, 401),
        ("POST", "/hooks/" + "".join(f"%{ord(c):02X}" for c in TOKEN), {}, 401),
        ("POST", "/hooks/lead-created", {"X-Stsync-Token": TOKEN}, None),
        ("DELETE", f"/hooks/{TOKEN}", {}, 405),
        ("POST", "/wp-login.php", {"Content-Length": "50"}, 404),
        ("GET", "/healthz", {}, None),
    ],
)
def test_the_head_alone_decides_what_needs_no_body(endpoint, method, target, headers, status):
    answer = endpoint.handler.screen(Request.build(method, target, headers.items()))
    assert (answer.status if answer is not None else None) == status


def test_the_access_log_target_hides_the_token_whatever_its_spelling():
    encoded = "".join(f"%{ord(c):02X}" for c in TOKEN)
    assert loggable_target(f"/hooks/{TOKEN}/lead-created?email=a%40b.c") == "/hooks/***/lead-created?…"
    assert loggable_target(f"/hooks/{encoded}") == "/hooks/***"
    assert loggable_target("/hooks/lead-created") == "/hooks/lead-created"
    assert loggable_target("/healthz") == "/healthz"


def test_a_delivery_naming_the_user_only_by_id_or_code_is_accepted_and_read_back(endpoint, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    conn.referral_factory.add(789, "C789", "sam@example.com")
    by_id = endpoint.send(f"/hooks/{TOKEN}/lead-created", body={"id": 456})
    by_code = endpoint.send(f"/hooks/{TOKEN}/lead-created", body={"referral_code": "C789"})
    assert (by_id.status, by_code.status) == (202, 202), (by_id.body, by_code.body)
    assert endpoint.wait_idle()
    assert sorted((c[0].email, c[0].referral_code) for c in pushes.calls) == [("jane@example.com", "ueONFmUp"),
                                                                                ("sam@example.com", "C789")]
    assert ("id", 456) in conn.referral_factory.lookups and ("code", "C789") in conn.referral_factory.lookups


def test_a_delivery_sent_again_before_it_has_an_outcome_is_processed_once(conn, pushes):
    """A first process answered 202 and died before processing it (its pool never ran): the
    re-sent copy is queued and processed — not answered "duplicate" with nothing done."""
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    dead = make_endpoint(conn, pushes)
    dead.pool.stop(0)  # it stops before working: the delivery stays recorded without an outcome
    first = dead.send(body=lead_payload())
    assert first.status == 202 and pushes.calls == []
    assert conn.ledger.get_delivery(first.body["delivery"]).waiting
    dead.handler.close()

    alive = make_endpoint(conn, pushes)
    try:
        pushes.delay = 0.2
        again = [alive.send(body=lead_payload()) for _ in range(3)]
        assert [a.status for a in again] == [202, 202, 202]
        assert [a.body["outcome"] for a in again] == ["queued"] * 3
        assert alive.wait_idle()
        assert len(pushes.calls) == 1, "queued once however often it is sent while waiting"
        assert conn.ledger.get_delivery(first.body["delivery"]).outcome == "created"
        assert alive.send(body=lead_payload()).body["outcome"] == "duplicate"
    finally:
        alive.close()


def test_a_get_delivery_reads_the_query_string(endpoint, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    answer = endpoint.send(f"/hooks/{TOKEN}/lead-created?email=jane%40example.com&code=ueONFmUp", method="GET")
    assert answer.status == 202
    assert endpoint.wait_idle() and len(pushes.calls) == 1


def test_a_list_of_leads_is_one_delivery_each(endpoint, conn, pushes):
    conn.referral_factory.add(1, "C1", "one@example.com")
    conn.referral_factory.add(2, "C2", "two@example.com")
    answer = endpoint.send(f"/hooks/{TOKEN}/lead-created", body=[{"email": "one@example.com", "code": "C1"},
                                                                 {"email": "two@example.com", "code": "C2"}])
    assert answer.status == 202 and [d["outcome"] for d in answer.body["deliveries"]] == ["queued", "queued"]
    assert endpoint.wait_idle()
    # Two leads: two workers may take them at once (order is kept per lead, not across leads).
    assert sorted(c[0].referral_code for c in pushes.calls) == ["C1", "C2"]


def test_webhook_key_aliases_from_the_config(conn, pushes):
    conn.config.webhook.aliases = {"email": ["email_address"], "referral_code": ["ref"]}
    conn.referral_factory.add(456, "R-77", "jane@example.com")
    endpoint = make_endpoint(conn, pushes)
    try:
        answer = endpoint.send(f"/hooks/{TOKEN}/lead-created", body={"email_address": "jane@example.com", "ref": "R-77"})
        assert answer.status == 202, answer.body
        assert endpoint.wait_idle()
    finally:
        endpoint.close()
    assert [call[0].referral_code for call in pushes.calls] == ["R-77"]


# -- the worker: what a delivery does ------------------------------------------------------------


def test_the_user_is_read_back_and_must_belong_to_the_campaign(endpoint, conn, pushes):
    conn.referral_factory.add(456, "OTHER", "jane@example.com", campaign_id=99)
    answer = endpoint.send(body=lead_payload(code="OTHER"))
    assert answer.status == 202
    assert endpoint.wait_idle()
    assert pushes.calls == []
    record = conn.ledger.get_delivery(answer.body["delivery"])
    assert record.outcome == "failed" and "campaign 99, not 7" in record.error["message"]
    assert endpoint.events[-1].outcome == "failed"


def test_an_unknown_user_fails_the_delivery_and_a_redelivery_is_processed_again(endpoint, conn, pushes):
    first = endpoint.send(body=lead_payload())
    assert first.status == 202 and endpoint.wait_idle()
    record = conn.ledger.get_delivery(first.body["delivery"])
    assert record.outcome == "failed" and "has no user matching" in record.error["message"]
    assert pushes.calls == []

    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")  # it exists now
    again = endpoint.send(body=lead_payload())
    assert again.status == 202 and again.body["outcome"] == "queued"
    assert endpoint.wait_idle() and len(pushes.calls) == 1
    assert conn.ledger.get_delivery(first.body["delivery"]).outcome == "created"
    assert endpoint.send(body=lead_payload()).body["outcome"] == "duplicate"


def test_an_id_that_is_not_the_user_falls_back_to_the_code(endpoint, conn, pushes):
    conn.referral_factory.add(456, "SOMEONE", "someone@example.com")
    conn.referral_factory.add(789, "ueONFmUp", "jane@example.com")
    assert endpoint.send(body=lead_payload()).status == 202  # id 456 is another person
    assert endpoint.wait_idle()
    assert [c[0].rf_user_id for c in pushes.calls] == [789]


def test_a_failing_push_is_recorded_and_the_worker_goes_on(endpoint, conn, pushes):
    conn.referral_factory.add(1, "C1", "one@example.com")
    conn.referral_factory.add(2, "C2", "two@example.com")
    pushes.fail = RuntimeError("boom")
    first = endpoint.send(body={"email": "one@example.com", "code": "C1", "event": "lead created"})
    assert endpoint.wait_idle()
    pushes.fail = None
    endpoint.send(body={"email": "two@example.com", "code": "C2", "event": "lead created"})
    assert endpoint.wait_idle()
    assert [c[0].referral_code for c in pushes.calls] == ["C2"]
    failed = conn.ledger.get_delivery(first.body["delivery"])
    assert failed.outcome == "failed" and failed.error == {"type": "RuntimeError", "message": "unexpected error; see the log"}


def test_a_record_level_push_failure_is_recorded_with_its_error(endpoint, conn, pushes, caplog):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    caplog.set_level(logging.ERROR, logger="stsync.webhooks")
    pushes.fail = InvalidRecord("lead jane@example.com has no value for name", field="name")
    answer = endpoint.send(body=lead_payload())
    assert endpoint.wait_idle()
    record = conn.ledger.get_delivery(answer.body["delivery"])
    assert record.outcome == "failed" and record.error == {
        "type": "InvalidRecord", "message": "lead jane@example.com has no value for name", "hint": None, "exit_code": 5,
        "record": None, "field": "name",
    }
    assert endpoint.stats.failed == 1
    assert "fails every delivery" not in caplog.text  # the record's own failure


def test_a_run_level_failure_is_recorded_and_logged_as_an_error_and_the_worker_goes_on(endpoint, conn, pushes, caplog):
    from stsync.errors import AuthError

    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    conn.referral_factory.add(457, "C2", "two@example.com")
    caplog.set_level(logging.ERROR, logger="stsync.webhooks")
    pushes.fail = AuthError("ServiceTitan rejected the client credentials")
    first = endpoint.send(body=lead_payload())
    assert endpoint.wait_idle()
    assert "AuthError fails every delivery until it is fixed" in caplog.text
    pushes.fail = None
    endpoint.send(body={"id": 457, "email": "two@example.com", "code": "C2", "event": "lead created"})
    assert endpoint.wait_idle()
    assert conn.ledger.get_delivery(first.body["delivery"]).outcome == "failed"
    assert [c[0].referral_code for c in pushes.calls] == ["C2"]


def test_lead_qualified_is_recorded_on_the_push(endpoint, conn, pushes):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com", qualified_at="2025-06-02")
    attempt = conn.ledger.record_push_intent("ueONFmUp", kind="lead", email="jane@example.com", name="Jane")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5001)

    answer = endpoint.send(f"/hooks/{TOKEN}/lead-qualified", body=lead_payload(qualified_at="2025-06-02"))
    assert answer.status == 202 and answer.body["event"] == LEAD_QUALIFIED
    assert endpoint.wait_idle()

    assert pushes.calls == []
    assert conn.ledger.get_push("ueONFmUp").qualification == "qualified"
    [record] = conn.ledger.qualifications_for("ueONFmUp")
    assert (record.action, record.state, record.rule) == ("qualify", "done", "referral_factory")
    assert conn.ledger.get_delivery(answer.body["delivery"]).outcome == "recorded"


def test_lead_qualified_is_not_recorded_unless_referral_factory_confirms_it(endpoint, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")  # still pending
    attempt = conn.ledger.record_push_intent("ueONFmUp", kind="lead", email="jane@example.com", name="Jane")
    conn.ledger.record_push_result(attempt, outcome="created", booking_id=5001)
    answer = endpoint.send(f"/hooks/{TOKEN}/lead-qualified", body=lead_payload())
    assert endpoint.wait_idle()
    assert conn.ledger.get_push("ueONFmUp").qualification is None
    assert conn.ledger.get_delivery(answer.body["delivery"]).outcome == "ignored"


def test_lead_qualified_for_a_lead_never_pushed_changes_nothing(endpoint, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com", qualified_at="2025-06-02")
    answer = endpoint.send(f"/hooks/{TOKEN}/lead-qualified", body=lead_payload())
    assert endpoint.wait_idle()
    assert conn.ledger.get_push("ueONFmUp") is None
    assert conn.ledger.get_delivery(answer.body["delivery"]).outcome == "ignored"


def test_rewards_and_referrers_without_a_booking_action_are_ignored(endpoint, conn, pushes):
    reward = endpoint.send(f"/hooks/{TOKEN}/reward-issued", body={"amount": 10})
    assert reward.status == 200 and reward.body["outcome"] == "ignored"

    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    joined = endpoint.send(body={"email": "ref@example.com", "code": "REF9", "type": "person_referring"})
    assert joined.status == 202 and joined.body["event"] == REFERRER_JOINED
    assert endpoint.wait_idle()
    assert pushes.calls == []
    assert conn.ledger.get_delivery(joined.body["delivery"]).outcome == "ignored"
    assert conn.referral_factory.lookups == [], "ignored before the user is read"


def test_referrers_are_pushed_as_referrers_when_their_action_creates_bookings(endpoint, conn, pushes):
    conn.config.referrers.action = "create_booking"
    conn.config.referrers.fields = dict(conn.config.leads.fields)  # every required target mapped
    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    endpoint.send(f"/hooks/{TOKEN}/referrer-joined", body={"email": "ref@example.com", "code": "REF9"})
    assert endpoint.wait_idle()
    assert [(c[0].referral_code, c[1]) for c in pushes.calls] == [("REF9", "referrer")]


def test_a_user_of_the_wrong_kind_for_the_event_fails(endpoint, conn, pushes):
    conn.referral_factory.add(9, "REF9", "ref@example.com", type="person_referring")
    answer = endpoint.send(f"/hooks/{TOKEN}/lead-created", body={"email": "ref@example.com", "code": "REF9"})
    assert endpoint.wait_idle()
    assert pushes.calls == []
    assert "person_referring" in conn.ledger.get_delivery(answer.body["delivery"]).error["message"]


def test_one_worker_processes_the_queue_in_arrival_order(conn, pushes):
    pushes.delay = 0.02
    endpoint = make_endpoint(conn, pushes, workers=1)
    for n in range(5):
        conn.referral_factory.add(n + 1, f"C{n}", f"lead{n}@example.com")
        assert endpoint.send(body={"email": f"lead{n}@example.com", "code": f"C{n}", "event": "lead created"}).status == 202
    endpoint.close()
    assert [c[0].referral_code for c in pushes.calls] == [f"C{n}" for n in range(5)]
    assert endpoint.stats.processed == 5


def test_deliveries_are_recorded_with_what_they_say_before_they_are_answered(endpoint, conn):
    conn.referral_factory.add(456, "ueONFmUp", "jane@example.com")
    endpoint.pool.stop(0)  # nothing is processed: what the 202 promised is all in the ledger
    answer = endpoint.send(body=lead_payload())
    assert answer.status == 202
    [record] = conn.ledger.deliveries_to_process()
    assert record.key == answer.body["delivery"] and record.event == LEAD_CREATED
    assert record.payload == lead_payload()
    assert (record.lead["email"], record.lead["referral_code"], record.lead["rf_user_id"]) == ("jane@example.com", "ueONFmUp", 456)
