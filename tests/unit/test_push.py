"""push-lead's service against strict HTTP mocks and the real ledger: exactly once, every
attempt recorded, ServiceTitan's words kept, run-level failures stop a batch."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import httpx
import pytest
from connection_fixtures import API, AUTH, CAMPAIGN, RF, TENANT, unit_config  # tests/support
from connection_fixtures import BOOKING_PROVIDER as BP
from pytest_httpx import HTTPXMock

from stsync.connection import Connection
from stsync.errors import AuthError, InvalidRecord, SetupRequired, TemporaryError, UsageError, error_summary
from stsync.leads import Lead, leads_from_input
from stsync.lookup_grace import GracePeriod
from stsync.mapping.booking import booking_request_for
from stsync.services import push as push_service
from stsync.services.history import history
from stsync.services.lead_sources import complete_leads, fetch_lead
from stsync.services.push import push_lead, push_leads, push_new, push_target

BOOKINGS = f"{API}/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings"
LOOKUP_PAGE = {"page": "1", "pageSize": "200"}


def lead(n: int = 1, **changes: Any) -> Lead:
    values: dict[str, Any] = dict(
        first_name=f"Jane{n}", email=f"jane{n}@example.com", referral_code=f"code{n:04d}",
        campaign_name="Spring Referrals", campaign_id=CAMPAIGN, type="person_invited",
    )
    values.update(changes)
    return Lead(**values)


def booking_json(id: int, external_id: str, **extra: Any) -> dict:
    return {
        "id": id, "source": "Spring Referrals", "name": "Jane", "status": "New", "externalId": external_id,
        "bookingProviderId": BP, "createdOn": "2025-05-30T18:22:11Z", "modifiedOn": "2025-05-30T18:22:11Z",
        "start": None, "jobId": None, **extra,
    }


CAMPAIGN_JSON = {"data": {"id": CAMPAIGN, "code": "spring", "name": "Spring Referrals", "status": "launched"}}


def campaign_launched(httpx_mock: HTTPXMock) -> None:
    """The campaign read once by a run that creates bookings (``ready_to_create``)."""
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)


def page(rows: list) -> dict:
    return {"page": 1, "pageSize": 200, "hasMore": False, "data": rows}


@pytest.fixture
def conn(make_connection, httpx_mock: HTTPXMock):
    config = unit_config()
    config.limits.workers = 4
    config.limits.retry_budget_seconds = 2  # a mistake in a test fails fast
    # One token for the whole test, when ServiceTitan is called at all.
    httpx_mock.add_response(
        method="POST", url=f"{AUTH}/connect/token", is_optional=True,
        json={"access_token": "tok", "expires_in": 900, "token_type": "Bearer"},
    )
    return make_connection(config)


def target(conn: Connection, kind: str = "lead"):
    """What a command pushes to, checked as the command checks it: once, now."""
    return push_target(conn, kind)


class FakeTime:
    """The wall clock the grace period reads, moved only by its own sleep (and by tests)."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    """A grace period of GRACE seconds on a fake clock: looks again cost no real time."""
    fake = FakeTime()
    monkeypatch.setattr(push_service, "grace_period", lambda conn: GracePeriod(GRACE, clock=fake.clock, sleep=fake.sleep))
    return fake


GRACE = 30


class FakeBookings:
    """ServiceTitan's provider bookings, with a script of how each POST is answered:
    ``ok``, ``commit_then_500`` (applied, answer lost), ``503`` (refused before anything)."""

    def __init__(
        self,
        script: list[str] | None = None,
        *,
        post_delay: float = 0.0,
        down_after: int | None = None,
        lag: float = 0.0,
        clock=time.time,
    ) -> None:
        self.down_after = down_after  # after this many bookings, every request gets 503 "back in a minute"
        # A booking is listed by ?externalId= only this long after its create (ServiceTitan's
        # §11 "externalId lookup right after a create").
        self.lag = lag
        self.clock = clock
        self.listed_from: dict[int, float] = {}
        self.rows: list[dict] = []
        self.posts: list[dict] = []
        self.gets: list[str | None] = []
        self.script = list(script or [])
        self.post_delay = post_delay
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down_after is not None and len(self.rows) >= self.down_after:
            return httpx.Response(503, headers={"Retry-After": "60"}, json={"title": "down", "status": 503})
        if request.method == "GET":
            wanted = request.url.params.get("externalId")
            with self._lock:
                self.gets.append(wanted)
                # Without externalId: the provider's list (push --new's index), every row; by
                # externalId, only what is listed already (the lag after a create).
                rows = [
                    r for r in self.rows
                    if wanted is None
                    or (r["externalId"] == wanted and self.clock() >= self.listed_from.get(r["id"], 0.0))
                ]
            return httpx.Response(200, json=page(rows))
        body = json.loads(request.content)
        time.sleep(self.post_delay)
        with self._lock:
            self.posts.append(body)
            step = self.script.pop(0) if self.script else "ok"
            if step == "503":
                return httpx.Response(503, json={"title": "Service Unavailable", "status": 503})
            row = booking_json(1000 + len(self.rows), body["externalId"], name=body["name"])
            self.rows.append(row)
            self.listed_from[row["id"]] = self.clock() + self.lag
        if step == "commit_then_500":
            return httpx.Response(500, json={"title": "Internal Server Error", "status": 500})
        return httpx.Response(200, json=row)


def serve_bookings(httpx_mock: HTTPXMock, fake: FakeBookings) -> FakeBookings:
    httpx_mock.add_callback(fake, url=re.compile(rf"^{BOOKINGS}(\?.*)?$"), is_reusable=True)
    return fake


# -- one lead -----------------------------------------------------------------------------------


def test_a_lead_becomes_one_booking_with_exactly_the_mapped_body(conn, httpx_mock: HTTPXMock):
    jane = lead()
    expected = {
        "source": "Spring Referrals", "name": "Jane1", "summary": "Referral", "isFirstTimeClient": True,
        "externalId": "code0001", "contacts": [{"type": "Email", "value": "jane1@example.com"}],
    }
    assert booking_request_for(jane, conn.config.leads) == expected
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE}, json=page([]))
    httpx_mock.add_response(method="POST", url=BOOKINGS, match_json=expected, json=booking_json(5551, "code0001"))

    result = push_lead(conn, jane, target(conn))

    assert (result.outcome, result.booking_id, result.external_id, result.status) == ("created", 5551, "code0001", "New")
    record = conn.ledger.get_push("code0001")
    assert (record.state, record.booking_id, record.email, record.kind) == ("booked", 5551, "jane1@example.com", "lead")
    [attempt] = conn.ledger.push_attempts(external_id="code0001")
    assert (attempt.outcome, attempt.booking_id, attempt.email, attempt.error) == ("created", 5551, "jane1@example.com", None)


def test_the_same_lead_again_is_already_booked_from_the_ledger_without_a_request(conn, httpx_mock: HTTPXMock):
    fake = serve_bookings(httpx_mock, FakeBookings())
    first = push_lead(conn, lead(), target(conn))
    requests_after_first = len(httpx_mock.get_requests())
    second = push_lead(conn, lead(), target(conn))
    assert (first.outcome, second.outcome) == ("created", "already_booked")
    assert second.booking_id == first.booking_id
    assert len(httpx_mock.get_requests()) == requests_after_first  # the ledger answered
    assert len(fake.rows) == 1
    outcomes = [a.outcome for a in conn.ledger.push_attempts(external_id="code0001")]
    assert outcomes == ["already_booked", "created"]  # newest first


def test_a_booking_found_by_external_id_is_adopted_not_created(conn, httpx_mock: HTTPXMock):
    httpx_mock.add_response(
        method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE},
        json=page([booking_json(77, "code0001", status="Converted", jobId=9)]),
    )
    result = push_lead(conn, lead(), target(conn))
    assert (result.outcome, result.booking_id, result.status) == ("already_booked", 77, "Converted")
    assert conn.ledger.get_push("code0001").state == "booked"
    assert not httpx_mock.get_requests(method="POST", url=BOOKINGS)


def test_a_lost_answer_is_looked_up_before_any_retry(conn, httpx_mock: HTTPXMock):
    fake = serve_bookings(httpx_mock, FakeBookings(["commit_then_500"]))
    result = push_lead(conn, lead(), target(conn))
    assert result.outcome == "created" and result.booking_id == fake.rows[0]["id"]
    assert len(fake.posts) == 1 and len(fake.rows) == 1
    assert fake.gets == ["code0001", "code0001"]  # before the POST, and after its answer was lost


def test_a_post_refused_before_commit_is_not_sent_again_by_the_run_that_lost_it(conn, httpx_mock: HTTPXMock, fake_time):
    fake = serve_bookings(httpx_mock, FakeBookings(["503"], clock=fake_time.clock))
    result = push_lead(conn, lead(), target(conn), run_id=7)
    assert result.outcome == "unknown" and result.message.startswith("unknown — will be checked again")
    assert len(fake.posts) == 1 and fake.rows == []
    [attempt] = conn.ledger.push_attempts(external_id="code0001")
    assert attempt.outcome == "unknown" and attempt.error["message"].startswith("unknown — will be checked again")
    assert "503" in attempt.error["message"] and attempt.error["in_doubt_since"]
    assert conn.ledger.get_push("code0001").state == "pending"

    # The same run, after its grace period: still never POSTed again.
    fake_time.now += GRACE + 1
    again = push_lead(conn, lead(), target(conn), run_id=7)
    assert again.outcome == "unknown" and len(fake.posts) == 1


def test_the_next_run_creates_only_after_a_lookup_the_grace_period_after_the_loss(conn, httpx_mock: HTTPXMock, fake_time):
    fake = serve_bookings(httpx_mock, FakeBookings(["503"], clock=fake_time.clock))
    push_lead(conn, lead(), target(conn), run_id=1)
    fake_time.now += GRACE - 1
    too_soon = push_lead(conn, lead(), target(conn), run_id=2)
    assert too_soon.outcome == "unknown" and len(fake.posts) == 1  # looked up, not trusted yet
    fake_time.now += 2
    later = push_lead(conn, lead(), target(conn), run_id=3)
    assert later.outcome == "created" and len(fake.posts) == 2 and len(fake.rows) == 1
    outcomes = [a.outcome for a in conn.ledger.push_attempts(external_id="code0001")]
    assert outcomes == ["created", "lost"]  # newest first: the doubt settled as "not applied"
    lost = conn.ledger.push_attempts(external_id="code0001")[1]
    assert "no booking was made" in lost.error["message"]
    assert fake.gets == ["code0001"] * 4  # before the create, after the loss, and each later run's first look


def test_a_lagging_lookup_finds_the_lost_create_and_never_duplicates_it(conn, httpx_mock: HTTPXMock, fake_time):
    # Committed, answer lost, listed 5 s later: the next run (within the grace) finds it.
    fake = serve_bookings(httpx_mock, FakeBookings(["commit_then_500"], lag=5, clock=fake_time.clock))
    first = push_lead(conn, lead(), target(conn), run_id=1)
    assert first.outcome == "unknown" and len(fake.rows) == 1
    fake_time.now += 6
    second = push_lead(conn, lead(), target(conn), run_id=2)
    assert (second.outcome, second.booking_id) == ("already_booked", fake.rows[0]["id"])
    assert len(fake.posts) == 1
    attempts = conn.ledger.push_attempts(external_id="code0001")
    assert [a.outcome for a in attempts] == ["already_booked", "created"]  # the unknown one settled as created
    assert conn.ledger.get_push("code0001").state == "booked"


def test_a_batch_looks_its_lost_answers_up_again_with_backoff_until_the_grace_ends(conn, httpx_mock: HTTPXMock, fake_time):
    campaign_launched(httpx_mock)
    # Lead 1: committed, listed 6 s later → found by a look again. Lead 2: refused before commit
    # → still absent after the grace → unknown for the next run. Lead 3: fine.
    fake = serve_bookings(httpx_mock, FakeBookings(lag=6, clock=fake_time.clock))
    fake.script = ["commit_then_500", "503", "ok"]
    conn.config.limits.workers = 1  # the script is consumed in input order
    report = push_leads(conn, [lead(1), lead(2), lead(3)], target(conn))
    by_code = {r.external_id: r for r in report.results}
    assert by_code["code0001"].outcome == "created" and by_code["code0001"].booking_id == fake.rows[0]["id"]
    assert by_code["code0002"].outcome == "unknown"
    assert by_code["code0003"].outcome == "created"
    assert len(fake.posts) == 3 and len(fake.rows) == 2  # nothing sent twice
    assert report.counts["unknown"] == 1 and report.unknown == [by_code["code0002"]]
    # Looks again at 1, 2, 4, 8, 16 and 30 s after each loss: lead 1 was found at 8 s, lead 2 looked at six times.
    assert fake.gets.count("code0001") == 1 + 1 + 4
    assert fake.gets.count("code0002") == 1 + 1 + 6
    assert sum(fake_time.slept) == pytest.approx(GRACE, abs=1.5)
    assert conn.ledger.recent_runs(1)[0].outcome == "partial"


def test_a_lost_answer_whose_lookup_fails_too_stays_unknown(conn, httpx_mock: HTTPXMock):
    lookup = dict(method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE})
    httpx_mock.add_response(**lookup, json=page([]))
    httpx_mock.add_response(method="POST", url=BOOKINGS, status_code=500, json={"title": "boom", "status": 500})
    # Back in a minute: past the test's retry budget, so it fails at once.
    httpx_mock.add_response(**lookup, status_code=503, headers={"Retry-After": "60"}, json={"title": "down", "status": 503})
    with pytest.raises(TemporaryError, match="unavailable"):
        push_lead(conn, lead(), target(conn))
    [attempt] = conn.ledger.push_attempts(external_id="code0001")
    assert attempt.outcome == "unknown"  # not "failed": the booking may exist
    assert conn.ledger.get_push("code0001").state == "pending"


def test_servicetitans_refusal_is_recorded_verbatim(conn, httpx_mock: HTTPXMock):
    error_body = {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1", "title": "One or more validation errors occurred.",
        "status": 400, "traceId": "00-abc-00", "errors": {"Name": ["The Name field is required."]}, "data": {},
    }
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE}, json=page([]))
    httpx_mock.add_response(method="POST", url=BOOKINGS, status_code=400, json=error_body)

    result = push_lead(conn, lead(), target(conn))

    assert result.outcome == "failed"
    assert result.error["title"] == "One or more validation errors occurred."
    assert result.error["errors"] == {"Name": ["The Name field is required."]}
    assert result.error["status"] == 400 and result.error["trace_id"] == "00-abc-00"
    assert result.message == "HTTP 400: One or more validation errors occurred. — Name: The Name field is required."
    [attempt] = conn.ledger.push_attempts(email="jane1@example.com")
    assert attempt.outcome == "failed" and attempt.error["errors"] == {"Name": ["The Name field is required."]}
    assert conn.ledger.get_push("code0001").state == "failed"


def test_a_wrong_booking_provider_is_an_auth_error_in_the_guides_words(conn, httpx_mock: HTTPXMock):
    not_found = {"title": "Not Found", "status": 404, "traceId": "t", "errors": {}, "data": {}}
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE}, status_code=404, json=not_found)
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"page": "1", "pageSize": "1"}, status_code=404, json=not_found)
    with pytest.raises(AuthError, match="Booking Provider Value is incorrect") as caught:
        push_lead(conn, lead(), target(conn))
    assert "API Application Access" in caught.value.hint
    [attempt] = conn.ledger.push_attempts(external_id="code0001")
    assert attempt.outcome == "failed" and "Booking Provider Value is incorrect" in attempt.error["message"]


def test_a_lead_without_email_sends_nothing_and_names_the_field(conn):
    result = push_lead(conn, lead(email=None), target(conn))
    assert result.outcome == "failed" and isinstance(result.exception, InvalidRecord)
    assert result.exception.field == "email" and "email" in result.message
    # Recorded under its externalId so history shows why it was not booked; no request sent
    # (the strict mock fails the test on any).
    [attempt] = conn.ledger.push_attempts(external_id="code0001")
    assert attempt.outcome == "failed" and attempt.error["field"] == "email"


def test_a_booked_lead_whose_data_no_longer_maps_is_still_already_booked(conn, httpx_mock: HTTPXMock):
    serve_bookings(httpx_mock, FakeBookings())
    first = push_lead(conn, lead(), target(conn))
    sent = len(httpx_mock.get_requests())
    later = push_lead(conn, lead(first_name=None), target(conn))  # the name went missing in Referral Factory since
    assert (later.outcome, later.booking_id) == ("already_booked", first.booking_id)
    assert len(httpx_mock.get_requests()) == sent
    assert conn.ledger.get_push("code0001").state == "booked"


def test_nothing_to_action_sends_and_records_nothing(conn):
    conn.config.leads.action = "nothing"
    result = push_lead(conn, lead(), target(conn))
    assert result.outcome == "skipped" and "Nothing to action" in result.message
    report = push_leads(conn, [lead(1), lead(2)], target(conn))
    assert report.results == [] and "Nothing to action" in report.notice
    assert "stsync map action leads create-booking" in report.notice_hint
    assert conn.ledger.push_attempts() == [] and conn.ledger.recent_runs() == []


def test_referrers_use_their_own_action_and_fields(conn, httpx_mock: HTTPXMock):
    result = push_lead(conn, lead(), target(conn, "referrer"))  # referrers default to "nothing"
    assert result.outcome == "skipped" and "Referrers" in result.message
    conn.config.referrers.action = "create_booking"
    with pytest.raises(SetupRequired) as caught:
        push_leads(conn, [lead()], target(conn, "referrer"))
    assert caught.value.section == "referrers" and "external_id" in caught.value.missing


def test_setup_required_is_raised_before_anything(conn):
    del conn.config.leads.fields["external_id"]
    with pytest.raises(SetupRequired) as caught:
        push_leads(conn, [lead()], target(conn))
    assert caught.value.missing == ["external_id"]


def test_a_dry_run_builds_the_exact_body_and_touches_nothing(conn):
    report = push_leads(conn, [lead(1), lead(2, email=None)], target(conn), dry_run=True)
    ok, bad = report.results
    assert ok.dry_run and ok.body == booking_request_for(lead(1), conn.config.leads)
    assert ok.to_dict()["body"]["externalId"] == "code0001"
    assert bad.outcome == "failed" and bad.body is None
    assert report.run_id is None
    assert conn.ledger.push_attempts() == [] and conn.ledger.recent_runs() == []


def test_an_unfinished_intent_whose_post_went_through_is_settled_as_created(conn, httpx_mock: HTTPXMock):
    # A run killed between its POST and its record: the intent stays, the booking exists.
    stale = conn.ledger.record_push_intent("code0001", kind="lead", email="jane1@example.com", name="Jane1")
    fake = serve_bookings(httpx_mock, FakeBookings())
    fake.rows.append(booking_json(900, "code0001"))

    result = push_lead(conn, lead(), target(conn))

    assert (result.outcome, result.booking_id) == ("already_booked", 900)
    assert fake.posts == []
    attempts = {a.id: a for a in conn.ledger.push_attempts(external_id="code0001")}
    assert (attempts[stale].outcome, attempts[stale].booking_id) == ("created", 900)
    assert conn.ledger.unfinished_intents() == []


def test_an_unfinished_intent_without_a_booking_waits_out_the_grace_then_the_lead_is_created(
    conn, httpx_mock: HTTPXMock, fake_time
):
    # A run killed between its POST and its record, moments ago: its POST may still be committing.
    stale = conn.ledger.record_push_intent("code0001", kind="lead", email="jane1@example.com", name="Jane1")
    fake = serve_bookings(httpx_mock, FakeBookings(clock=fake_time.clock))
    result = push_lead(conn, lead(), target(conn))
    assert result.outcome == "unknown" and fake.posts == []
    assert conn.ledger.unfinished_intents() == []  # the intent is now recorded as in doubt
    fake_time.now += GRACE + 1
    result = push_lead(conn, lead(), target(conn))
    assert result.outcome == "created" and len(fake.rows) == 1
    attempts = {a.id: a for a in conn.ledger.push_attempts(external_id="code0001")}
    assert attempts[stale].outcome == "lost"


def test_two_threads_pushing_one_lead_create_one_booking(conn, httpx_mock: HTTPXMock):
    fake = serve_bookings(httpx_mock, FakeBookings(post_delay=0.2))
    results: list = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(push_lead(conn, lead(), target(conn)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.posts) == 1 and len(fake.rows) == 1
    assert sorted(r.outcome for r in results) == ["already_booked", "created"]


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_goes_past_a_failed_lead_and_records_the_run(conn, httpx_mock: HTTPXMock):
    campaign_launched(httpx_mock)
    fake = serve_bookings(httpx_mock, FakeBookings())
    leads = [lead(n) for n in range(1, 7)] + [lead(7, email=None)]
    progress = Progress()

    report = push_leads(conn, leads, target(conn), progress=progress)

    assert [r.lead for r in report.results] == leads  # input order, though run concurrently
    assert report.counts == {"created": 6, "already_booked": 0, "skipped": 0, "failed": 1, "unknown": 0, "total": 7}
    assert len(fake.rows) == 6 and progress.total == 7 and progress.done == 7
    [run] = conn.ledger.recent_runs(job="push")
    assert (run.id, run.outcome, run.counts["created"], run.counts["failed"]) == (report.run_id, "partial", 6, 1)
    assert {a.run_id for a in conn.ledger.push_attempts()} == {report.run_id}


def test_a_run_level_failure_stops_the_batch_and_is_raised(conn, httpx_mock: HTTPXMock):
    campaign_launched(httpx_mock)
    conn.config.limits.workers = 1
    not_found = {"title": "Not Found", "status": 404}
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"externalId": "code0001", **LOOKUP_PAGE}, status_code=404, json=not_found)
    httpx_mock.add_response(method="GET", url=BOOKINGS, match_params={"page": "1", "pageSize": "1"}, status_code=404, json=not_found)
    with pytest.raises(AuthError, match="Booking Provider Value is incorrect"):
        push_leads(conn, [lead(n) for n in range(1, 21)], target(conn))
    [run] = conn.ledger.recent_runs(job="push")
    assert run.outcome == "failed" and "Booking Provider Value" in run.error
    assert len(conn.ledger.push_attempts(limit=100)) < 20  # the rest were never tried


def test_servicetitan_down_mid_batch_stops_the_run_and_records_what_was_done(conn, httpx_mock: HTTPXMock):
    campaign_launched(httpx_mock)
    conn.config.limits.workers = 1
    fake = serve_bookings(httpx_mock, FakeBookings(down_after=3))
    with pytest.raises(TemporaryError, match="unavailable"):
        push_leads(conn, [lead(n) for n in range(1, 11)], target(conn))
    assert len(fake.rows) == 3
    [run] = conn.ledger.recent_runs(job="push")
    assert run.outcome == "failed" and (run.counts["created"], run.counts["total"]) == (3, 3)
    assert "ServiceTitan is unavailable" in run.error
    assert len(conn.ledger.push_attempts(limit=100)) == 4  # 3 created, then the one that met the outage


def test_list_input_sets_aside_records_without_email(conn):
    leads, rejected = leads_from_input([
        {"email": "a@example.com", "first_name": "A", "referral_code": "ca"},
        {"first_name": "B", "code": "cb"},
    ])
    assert [one.email for one in leads] == ["a@example.com"]
    [problem] = rejected
    assert isinstance(problem, InvalidRecord) and "record #2" in problem.message
    report = push_leads(conn, [], target(conn), rejected=rejected, dry_run=True)
    assert report.counts["failed"] == 1 and report.results[0].lead.referral_code == "cb"
    with pytest.raises(InvalidRecord):
        leads_from_input({"first_name": "B", "code": "cb"})


class Progress:
    def __init__(self) -> None:
        self.total: int | None = None
        self.done = 0
        self._lock = threading.Lock()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n


# -- leads from Referral Factory ----------------------------------------------------------------


def rf_user(id: int, *, type: str = "person_invited", referrer_id: int | None = 1, campaign_id: int = CAMPAIGN) -> dict:
    return {
        "id": id, "campaign_id": campaign_id, "referrer_id": referrer_id, "first_name": f"User{id}",
        "email": f"user{id}@example.com", "code": f"rc{id}", "url": f"https://x.test/rc{id}", "type": type,
        "source": "Referred", "signed_up_at": "2025-01-01", "qualified_at": None, "meta": [],
    }


def test_push_new_searches_the_campaigns_leads_paged_and_skips_the_booked(conn, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)
    search = {"filters": {"operator": "AND", "value": [
        {"field": "campaign_id", "value": str(CAMPAIGN), "operator": "="},
        {"field": "type", "value": "person_invited", "operator": "="},
    ]}}
    httpx_mock.add_response(
        method="POST", url=f"{RF}/users/search?page=1&per_page=250", match_json=search,
        json={"data": [rf_user(10), rf_user(11), rf_user(12, campaign_id=99)], "meta": {"current_page": 1, "last_page": 2}},
    )
    httpx_mock.add_response(
        method="POST", url=f"{RF}/users/search?page=2&per_page=250", match_json=search,
        json={"data": [rf_user(13), rf_user(14, type="person_referring")], "meta": {"current_page": 2, "last_page": 2}},
    )
    fake = serve_bookings(httpx_mock, FakeBookings())
    booked = conn.ledger.record_push_intent("rc11", kind="lead", email="user11@example.com", name="User11")
    conn.ledger.record_push_result(booked, outcome="created", booking_id=5)

    report = push_new(conn, target(conn))

    # 12 is another campaign's, 14 a referrer, 11 already booked; the default mapping
    # reads no referrer field, so no referrer is fetched (the strict mock would fail).
    assert [r.external_id for r in report.results] == ["rc10", "rc13"]
    assert {row["externalId"] for row in fake.rows} == {"rc10", "rc13"}
    assert fake.posts[0]["source"] == "Spring Referrals"
    [run] = conn.ledger.recent_runs(job="push")
    assert run.command == "push-lead --new" and run.outcome == "ok"
    # The provider's bookings were read as a list; no lead was looked up by its externalId.
    assert fake.gets and set(fake.gets) == {None}


def search_pages(httpx_mock: HTTPXMock, *users: dict) -> None:
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)
    httpx_mock.add_response(method="POST", url=f"{RF}/users/search?page=1&per_page=250",
                            json={"data": list(users), "meta": {"current_page": 1, "last_page": 1}})


def test_push_new_adopts_a_booking_the_provider_already_has_without_a_lookup(conn, httpx_mock: HTTPXMock):
    search_pages(httpx_mock, rf_user(10), rf_user(11))
    fake = serve_bookings(httpx_mock, FakeBookings())
    fake.rows.append(booking_json(777, "rc11"))  # made by Referral Factory's own integration

    report = push_new(conn, target(conn))

    outcomes = {r.external_id: (r.outcome, r.booking_id) for r in report.results}
    assert outcomes["rc11"] == ("already_booked", 777) and outcomes["rc10"][0] == "created"
    assert [p["externalId"] for p in fake.posts] == ["rc10"]
    assert set(fake.gets) == {None}, "no look-up by externalId"
    assert conn.ledger.get_push("rc11").booking_id == 777


def test_push_new_looks_up_one_by_one_only_a_lead_with_an_unsettled_intent(conn, httpx_mock: HTTPXMock, fake_time):
    search_pages(httpx_mock, rf_user(10), rf_user(11))
    fake = serve_bookings(httpx_mock, FakeBookings(clock=fake_time.clock))
    conn.ledger.record_push_intent("rc11", kind="lead", email="user11@example.com", name="User11")  # a crashed run

    report = push_new(conn, target(conn))

    assert sorted(r.external_id for r in report.results) == ["rc10", "rc11"]
    # rc11's create is in doubt (the crash was moments ago): looked up by externalId, again
    # until the grace period ended, then created (that create was another run's).
    assert {g for g in fake.gets if g is not None} == {"rc11"}
    assert [r.outcome for r in report.results] == ["created", "created"]
    assert conn.ledger.unfinished_intents() == []
    assert sorted(p["externalId"] for p in fake.posts) == ["rc10", "rc11"]


def test_push_new_fetches_referrers_once_when_the_mapping_uses_them(conn, httpx_mock: HTTPXMock):
    from stsync.storage.config import field_spec

    conn.config.leads.fields["summary"] = field_spec("template", "Referred by {referrer_first_name}")
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)
    httpx_mock.add_response(method="POST", url=f"{RF}/users/search?page=1&per_page=250",
                            json={"data": [rf_user(10), rf_user(11)]})
    httpx_mock.add_response(method="GET", url=f"{RF}/users/1", json={"data": rf_user(1, type="person_referring", referrer_id=None)})

    report = push_new(conn, target(conn), dry_run=True)

    assert [r.body["summary"] for r in report.results] == ["Referred by User1", "Referred by User1"]
    assert conn.ledger.recent_runs() == []


def test_fetch_lead_by_code_brings_the_campaign_name_and_the_referrer(conn, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="POST", url=f"{RF}/users/search?page=1&per_page=250", json={"data": [rf_user(10)]})
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)
    httpx_mock.add_response(method="GET", url=f"{RF}/users/1", json={"data": rf_user(1, type="person_referring", referrer_id=None)})
    fetched = fetch_lead(conn, code="rc10")
    assert (fetched.email, fetched.referral_code, fetched.campaign_name) == ("user10@example.com", "rc10", "Spring Referrals")
    assert (fetched.referrer_first_name, fetched.referrer_code, fetched.rf_user_id) == ("User1", "rc1", 10)


def test_fetch_lead_names_an_unknown_user_or_another_campaign(conn, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="GET", url=f"{RF}/users/404", status_code=404, json={"message": "Not found"})
    with pytest.raises(UsageError, match="no user with id 404"):
        fetch_lead(conn, rf_user_id=404)
    httpx_mock.add_response(method="GET", url=f"{RF}/users/12", json={"data": rf_user(12, campaign_id=99)})
    with pytest.raises(UsageError, match="campaign 99"):
        fetch_lead(conn, rf_user_id=12)
    httpx_mock.add_response(method="POST", url=f"{RF}/users/search?page=1&per_page=250", json={"data": []})
    with pytest.raises(UsageError, match="no Referral Factory user with referral code 'nope'"):
        fetch_lead(conn, code="nope")


def test_complete_leads_fills_the_campaign_name_once(conn, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="GET", url=f"{RF}/campaigns/{CAMPAIGN}", json=CAMPAIGN_JSON)
    done = complete_leads(conn, [lead(1, campaign_name=None), lead(2, campaign_name=None), lead(3)], target(conn))
    assert [one.campaign_name for one in done] == ["Spring Referrals"] * 3


# -- history ------------------------------------------------------------------------------------


def test_history_lists_attempts_newest_first_with_filters(conn, httpx_mock: HTTPXMock):
    campaign_launched(httpx_mock)
    serve_bookings(httpx_mock, FakeBookings())
    push_leads(conn, [lead(1), lead(2, email=None)], target(conn))
    push_lead(conn, lead(1), target(conn))

    everything = history(conn, kinds=["push"])
    assert [e.outcome for e in everything.entries][0] == "already_booked"
    assert {e.outcome for e in everything.entries} == {"created", "already_booked", "failed"}
    failed = history(conn, kinds=["push"], failed_only=True)
    assert [e.key for e in failed.entries] == ["code0002"]
    assert "email" in error_summary(failed.entries[0].error)
    mine = history(conn, kinds=["push"], email="JANE1@example.com", limit=1)
    assert len(mine.entries) == 1 and mine.entries[0].outcome == "already_booked"
    data = everything.to_dict()
    assert data["last_push_run"]["outcome"] == "partial" and data["count"] == 3
    with pytest.raises(UsageError):
        history(conn, limit=0)


# -- the commands -------------------------------------------------------------------------------


@pytest.fixture
def saved_config(tmp_path):
    from stsync.storage.config_writer import save_config

    config = unit_config()
    save_config(config, tmp_path / "config.toml")
    return config


FLAGS = ["--email", "ann@example.com", "--first-name", "Ann", "--referral-code", "ann01", "--campaign-name", "Spring"]


def test_dry_run_prints_exactly_the_body_on_stdout(saved_config, capsys):
    from stsync.cli.app import run

    code = run(["push-lead", *FLAGS, "--phone", "8185550100", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {
        "source": "Spring", "name": "Ann", "summary": "Referral", "isFirstTimeClient": True, "externalId": "ann01",
        "contacts": [{"type": "Email", "value": "ann@example.com"}],
    }
    assert "nothing was sent" in err


def test_dry_run_with_json_gives_one_object_with_the_body(saved_config, capsys):
    from stsync.cli.app import run

    code = run(["--json", "push-lead", *FLAGS, "--dry-run"])
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["dry_run"] is True
    [result] = data["results"]
    assert set(result) >= {"lead", "external_id", "booking_id", "status", "outcome", "error", "body"}
    assert result["body"]["externalId"] == "ann01" and result["outcome"] == "skipped"
    assert data["counts"]["total"] == 1


def test_a_command_checks_what_it_pushes_to_once_for_all_its_leads(saved_config, tmp_path, capsys, monkeypatch):
    from stsync.cli.app import run

    checked = []
    real = push_service.push_target
    monkeypatch.setattr(push_service, "push_target", lambda conn, kind: checked.append(kind) or real(conn, kind))
    leads = [{"email": f"a{n}@example.com", "first_name": "A", "referral_code": f"a{n}", "campaign_name": "Spring"}
             for n in range(3)]
    (tmp_path / "leads.json").write_text(json.dumps(leads))

    code = run(["push-lead", "--file", "leads.json", "--dry-run"])

    assert code == 0, capsys.readouterr().err
    assert len(json.loads(capsys.readouterr().out)) == 3 and checked == ["lead"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["push-lead"], "nothing to push"),
        (["push-lead", "--email", "a@example.com", "--new"], "give one input"),
        (["push-lead", "--code", "x", "--rf-user-id", "3"], "give one input"),
        (["push-lead", *FLAGS, "--field", "novalue"], "is not K=V"),
        (["push-lead", "--file", "missing.json"], "no such file"),
    ],
)
def test_usage_errors_exit_2_before_anything(saved_config, capsys, argv, words):
    from stsync.cli.app import run

    assert run(argv) == 2
    assert words in capsys.readouterr().err


def test_a_file_that_is_not_json_names_line_and_column(saved_config, tmp_path, capsys):
    from stsync.cli.app import run

    (tmp_path / "lead.json").write_text('{"email": "a@example.com",\n  "first_name": }')
    assert run(["push-lead", "--file", "lead.json"]) == 2
    assert "line 2, column" in capsys.readouterr().err


def test_a_file_lead_without_email_exits_5_naming_the_keys(saved_config, tmp_path, capsys):
    from stsync.cli.app import run

    (tmp_path / "lead.json").write_text(json.dumps({"first_name": "Bo", "referral_code": "bo1"}))
    assert run(["push-lead", "--file", "lead.json"]) == 5
    err = capsys.readouterr().err
    assert "has no e-mail" in err and "email_address" in err


def test_nothing_to_action_exits_0_with_the_reason(saved_config, tmp_path, capsys):
    from stsync.cli.app import run
    from stsync.storage.config_writer import save_config

    saved_config.leads.action = "nothing"
    save_config(saved_config, tmp_path / "config.toml")
    assert run(["push-lead", *FLAGS]) == 0
    err = capsys.readouterr().err
    assert "Nothing to action" in err and "stsync map action leads create-booking" in err


def test_history_command_shows_the_attempts(conn, saved_config, httpx_mock: HTTPXMock, capsys):
    campaign_launched(httpx_mock)
    from stsync.cli.app import run

    serve_bookings(httpx_mock, FakeBookings())
    push_leads(conn, [lead(1), lead(2, email=None)], target(conn))
    conn.close()
    assert run(["history"]) == 0
    out = capsys.readouterr().out  # piped: TSV, one attempt per line
    assert "\tjane1@example.com\tcode0001\tcreated\tbooking #1000\n" in out and "no value for" in out
    assert run(["--json", "history", "--failed"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["external_id"] for a in data["attempts"]] == ["code0002"] and data["filters"]["failed"] is True


def test_a_webhook_payload_on_stdin_with_renamed_keys_becomes_the_body(saved_config, monkeypatch, capsys):
    import io

    from stsync.cli.app import run

    payload = {"event": "A new lead is created", "data": {
        "email_address": "Rita@example.com", "firstName": "Rita", "referralCode": "rita01",
        "campaign": {"id": CAMPAIGN, "name": "Spring"}, "referrer": {"first_name": "Ron", "code": "ron01"}}}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(payload)))
    code = run(["push-lead", "--file", "-", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    body = json.loads(out)
    assert (body["name"], body["externalId"], body["source"]) == ("Rita", "rita01", "Spring")
    assert body["contacts"] == [{"type": "Email", "value": "Rita@example.com"}]
