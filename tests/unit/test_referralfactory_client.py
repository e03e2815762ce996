"""ReferralFactoryClient against strict HTTP mocks: auth, errors, paging, search, throttle, 429."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from fakes import FakeTime, ThreadClocks  # tests/support
from pytest_httpx import HTTPXMock

from stsync.errors import AnswerLost, AuthError, DuplicateEmail, RateLimited, ReferralFactoryApiError, TemporaryError
from stsync.http import RetryPolicy, shared_ssl_context
from stsync.ratelimit import RateLimiter
from stsync.referralfactory.client import ReferralFactoryClient
from stsync.referralfactory.models import Campaign, User

API = "https://rf.example.test/api/v2"
KEY = "rf-SECRET-api-key"
CAMPAIGN = 7


def user(id: int, **fields) -> dict:
    base = {
        "id": id, "campaign_id": CAMPAIGN, "referrer_id": None, "first_name": "Jane", "email": f"user{id}@example.com",
        "code": f"code{id}", "type": "person_referring", "source": "Api", "url": f"https://x.example/code{id}",
        "signed_up_at": "2024-12-27", "qualified_at": None, "unsubscribed_at": None,
        "meta": [{"field": "Last Name", "value": "Doe"}], "sharing": {"socials": []},
    }
    base.update(fields)
    return base


def search_body(*conditions: tuple[str, str]) -> dict:
    return {"filters": {"operator": "AND", "value": [{"field": f, "value": v, "operator": "="} for f, v in conditions]}}

TLS = shared_ssl_context()  # the clients' own shared context: one CA-bundle load per run






@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(fake: FakeTime):
    clients: list[ReferralFactoryClient] = []

    def build(**overrides) -> ReferralFactoryClient:
        settings = dict(
            api_url=API + "/",
            api_key=KEY,
            limiter=RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep),
            retry=RetryPolicy(budget_seconds=120.0, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0),
            transport=httpx.HTTPTransport(verify=TLS),
        )
        settings.update(overrides)
        client = ReferralFactoryClient(**settings)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


# -- basics -----------------------------------------------------------------------------


def test_requests_carry_the_key_and_json_headers(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5)})
    found = make_client().get_user(5)
    request = httpx_mock.get_request()
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert isinstance(found, User)
    assert (found.id, found.code, found.meta_value("last name"), found.qualified) == (5, "code5", "Doe", False)


def test_get_campaign_with_and_without_the_data_wrapper(httpx_mock: HTTPXMock, make_client):
    campaign = {"id": CAMPAIGN, "code": "spring", "name": "Spring Referrals", "status": "launched",
                "url": "https://x.example/spring",
                "fields": {"person_referring": [{"id": 1, "type": "input", "label": "Last Name", "value": None, "required": True}],
                           "person_invited": []}}
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/{CAMPAIGN}", json={"data": campaign})
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/spring", json={**campaign, "status": "paused"})
    client = make_client()
    first = client.get_campaign(CAMPAIGN)
    assert isinstance(first, Campaign) and first.launched and first.name == "Spring Referrals"
    assert first.field_labels("person_referring") == ["Last Name"]
    second = client.get_campaign("spring")
    assert not second.launched


def test_get_campaign_404_is_an_api_error_with_status_404(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/99", status_code=404, json={"message": "Not found"})
    with pytest.raises(ReferralFactoryApiError) as caught:
        make_client().get_campaign(99)
    assert caught.value.status == 404
    assert not isinstance(caught.value, AuthError)


def test_401_is_an_auth_error_about_key_rotation(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=401, json={"message": "Unauthenticated."})
    with pytest.raises(AuthError) as caught:
        make_client().get_campaign(7)
    assert caught.value.exit_code == 4
    assert "a new key deactivates the old one" in caught.value.hint
    assert KEY not in caught.value.message + caught.value.hint


def test_403_is_an_auth_error(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=403, json={"message": "Admins only"})
    with pytest.raises(AuthError) as caught:
        make_client().get_campaign(7)
    assert caught.value.exit_code == 4 and "Admins only" in caught.value.message


# -- create and errors ------------------------------------------------------------------


@pytest.mark.parametrize("wrapped,status", [(True, 201), (False, 200)])
def test_create_user_accepts_both_answers(httpx_mock: HTTPXMock, make_client, wrapped, status):
    body = {"campaign_id": CAMPAIGN, "first_name": "Jane", "email": "jane@example.com", "notify": False}
    answer = user(11, email="jane@example.com")
    httpx_mock.add_response(method="POST", url=f"{API}/users", match_json=body, status_code=status,
                            json={"data": answer} if wrapped else answer)
    created = make_client().create_user(body)
    assert (created.id, created.code, created.url) == (11, "code11", "https://x.example/code11")


@pytest.mark.parametrize("failure", ["500", "timeout"])
def test_create_user_with_a_lost_answer_is_answer_lost_and_not_retried(httpx_mock: HTTPXMock, make_client, failure):
    if failure == "500":
        httpx_mock.add_response(method="POST", url=f"{API}/users", status_code=500)
    else:
        httpx_mock.add_exception(httpx.ReadTimeout("no answer"), method="POST", url=f"{API}/users")
    with pytest.raises(AnswerLost):
        make_client().create_user({"campaign_id": CAMPAIGN, "email": "jane@example.com", "first_name": "Jane"})
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    "errors",
    [
        {"email": [{"field": "email", "message": "The email has already been taken."}]},  # documented shape
        {"email": ["email already exists"]},  # plain strings
    ],
)
def test_duplicate_email_422_is_told_apart(httpx_mock: HTTPXMock, make_client, errors):
    httpx_mock.add_response(method="POST", url=f"{API}/users", status_code=422,
                            json={"code": 422, "message": "Validation errors in your request", "errors": errors})
    with pytest.raises(DuplicateEmail) as caught:
        make_client().create_user({"campaign_id": CAMPAIGN, "email": "jane@example.com", "first_name": "Jane"})
    assert caught.value.status == 422
    assert len(caught.value.errors["email"]) == 1


def test_duplicate_email_with_only_a_message(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{API}/users", status_code=422, json={"message": "email already exists"})
    with pytest.raises(DuplicateEmail):
        make_client().create_user({"campaign_id": CAMPAIGN, "email": "jane@example.com", "first_name": "Jane"})


@pytest.mark.parametrize(
    "body",
    [
        {"code": 422, "message": "Validation errors in your request",
         "errors": {"email": [{"field": "email", "message": "The email field is required."}]}},
        {"code": 422, "message": "Validation errors in your request",
         "errors": {"first_name": ["The first name field is required."]}},
        {"message": "The referrer could not be found."},
    ],
)
def test_other_422_is_a_plain_api_error(httpx_mock: HTTPXMock, make_client, body):
    httpx_mock.add_response(method="POST", url=f"{API}/users", status_code=422, json=body)
    with pytest.raises(ReferralFactoryApiError) as caught:
        make_client().create_user({"campaign_id": CAMPAIGN, "first_name": "Jane"})
    assert not isinstance(caught.value, DuplicateEmail)
    assert caught.value.status == 422
    assert caught.value.exit_code == 1


def test_both_error_item_shapes_are_kept_per_field(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(
        method="PUT", url=f"{API}/users/5", status_code=422,
        json={"code": 422, "message": "Validation errors in your request",
              "errors": {"email": [{"field": "email", "message": "The email must be a valid email address."}],
                         "meta": ["The meta must be an array.", "Unknown field: Nickname"]}},
    )
    with pytest.raises(ReferralFactoryApiError) as caught:
        make_client().update_user(5, {"email": "nope"})
    error = caught.value
    assert error.errors == {
        "email": ["The email must be a valid email address."],
        "meta": ["The meta must be an array.", "Unknown field: Nickname"],
    }
    assert error.title == "Validation errors in your request"
    assert (error.method, error.path) == ("PUT", "/users/5")
    assert "The email must be a valid email address." in error.message
    assert error.to_dict()["service"] == "referral_factory"


def test_update_user_is_retried_and_reads_back_when_the_answer_lacks_the_user(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="PUT", url=f"{API}/users/5", status_code=502)
    httpx_mock.add_response(method="PUT", url=f"{API}/users/5", match_json={"first_name": "Janet"}, json={"message": "Updated"})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5, first_name="Janet")})
    assert make_client().update_user(5, {"first_name": "Janet"}).first_name == "Janet"


def test_5xx_past_the_budget_is_temporary(httpx_mock: HTTPXMock, make_client, fake):
    retry = RetryPolicy(budget_seconds=1.0, base_delay=1.0, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0)
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=503)
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=503)
    with pytest.raises(TemporaryError) as caught:
        make_client(retry=retry).get_user(5)
    assert caught.value.exit_code == 6 and "Referral Factory" in caught.value.message


# -- paging and search ------------------------------------------------------------------


def test_list_campaigns_follows_laravel_pagination(httpx_mock: HTTPXMock, make_client):
    def page(n: int, rows: list, last: int) -> dict:
        return {"data": rows,
                "links": {"first": f"{API}/campaigns?page=1", "next": f"{API}/campaigns?page={n + 1}" if n < last else None},
                "meta": {"current_page": n, "last_page": last, "per_page": 250, "total": 3}}

    httpx_mock.add_response(method="GET", url=f"{API}/campaigns?page=1&per_page=250",
                            json=page(1, [{"id": 1, "status": "launched"}, {"id": 2, "status": "draft"}], 2))
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns?page=2&per_page=250",
                            json=page(2, [{"id": 3, "status": "paused"}], 2))
    assert [c.id for c in make_client().list_campaigns()] == [1, 2, 3]


def test_search_users_pages_and_sends_the_filter_body(httpx_mock: HTTPXMock, make_client):
    body = search_body(("campaign_id", "7"), ("type", "person_invited"))
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=2", match_json=body,
        json={"data": [user(1), user(2)], "links": {"next": f"{API}/users/search?page=2&per_page=2"},
              "meta": {"current_page": 1, "last_page": 2}},
    )
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=2&per_page=2", match_json=body,
        json={"data": [user(3)], "links": {"next": None}, "meta": {"current_page": 2, "last_page": 2}},
    )
    found = make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")], per_page=2)
    assert [u.id for u in found] == [1, 2, 3]


def test_search_without_pagination_is_one_page(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{API}/users/search?page=1&per_page=250", json={"data": [user(1)]})
    assert [u.id for u in make_client().search_users([("code", "code1")])] == [1]


def test_search_rechecks_campaign_id_on_every_row(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=250",
        match_json=search_body(("campaign_id", "7"), ("email", "jane@example.com")),
        json={"data": [user(1, campaign_id=99, email="jane@example.com"), user(2, email="jane@example.com")]},
    )
    found = list(make_client().search_users([("campaign_id", CAMPAIGN), ("email", "jane@example.com")]))
    assert [u.id for u in found] == [2]


def test_find_user_by_email_compares_case_insensitively(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=250",
        match_json=search_body(("campaign_id", "7"), ("email", "Jane@Example.com")), json={"data": []},
    )
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=250",
        match_json=search_body(("campaign_id", "7"), ("email", "jane@example.com")),
        json={"data": [user(4, email="jane@example.com")]},
    )
    found = make_client().find_user_by_email(CAMPAIGN, "Jane@Example.com")
    assert found is not None and found.id == 4


def test_find_user_by_email_ignores_near_misses(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=250",
        json={"data": [user(4, email="jane.other@example.com")]},
    )
    assert make_client().find_user_by_email(CAMPAIGN, "jane@example.com") is None


def test_find_user_by_code(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(
        method="POST", url=f"{API}/users/search?page=1&per_page=250",
        match_json=search_body(("campaign_id", "7"), ("code", "ueONFmUp")),
        json={"data": [user(8, code="ueONFmUp", type="person_invited", referrer_id=1)]},
    )
    found = make_client().find_user_by_code(CAMPAIGN, "ueONFmUp")
    assert found is not None and found.is_lead and found.referrer_id == 1


# -- qualification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,body",
    [
        ({"id": 456}, {"qualified": True, "id": 456}),
        ({"code": "ueONFmUp"}, {"qualified": True, "code": "ueONFmUp"}),
        ({"email": "jane@example.com", "campaign_id": 7}, {"qualified": True, "email": "jane@example.com", "campaign_id": 7}),
    ],
)
def test_set_qualification_sends_one_identifier_form(httpx_mock: HTTPXMock, make_client, kwargs, body):
    httpx_mock.add_response(method="PUT", url=f"{API}/users/qualification", match_json=body,
                            json={"data": user(456, qualified_at="2025-06-01 10:00:00")})
    result = make_client().set_qualification(True, **kwargs)
    assert result is not None and result.qualified


def test_set_qualification_without_a_user_in_the_answer(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="PUT", url=f"{API}/users/qualification",
                            match_json={"qualified": False, "id": 456}, json={"message": "OK"})
    assert make_client().set_qualification(False, id=456) is None


@pytest.mark.parametrize("kwargs", [{}, {"id": 1, "code": "x"}, {"email": "a@b.c"}, {"id": 1, "campaign_id": 7}])
def test_set_qualification_rejects_ambiguous_identifiers(make_client, kwargs):
    with pytest.raises(ValueError):
        make_client().set_qualification(True, **kwargs)


# -- rate limits ------------------------------------------------------------------------


def test_first_429_slows_down_and_retries_after_retry_after(httpx_mock: HTTPXMock, make_client, fake):
    limiter = RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep)
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=429, headers={"Retry-After": "20"})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json=user(5))
    assert make_client(limiter=limiter).get_user(5).id == 5
    assert 20.0 in fake.sleeps
    assert limiter.rate_factor == 0.5


def test_second_429_stops_calling_referral_factory(httpx_mock: HTTPXMock, make_client, fake):
    limiter = RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep)
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=429, headers={"Retry-After": "5"})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json=user(5))
    httpx_mock.add_response(method="GET", url=f"{API}/users/6", status_code=429, headers={"Retry-After": "5"})
    client = make_client(limiter=limiter)
    client.get_user(5)
    with pytest.raises(RateLimited) as caught:
        client.get_user(6)
    assert caught.value.exit_code == 6
    assert "run stsync again after" in caught.value.hint
    # And nothing more is sent (strict mocks: a request would fail): the cool-down is in force.
    with pytest.raises(RateLimited):
        client.get_user(7)
    assert len(httpx_mock.get_requests()) == 3
    assert limiter.rate_factor == 0.5  # the first episode halved it; the second stopped everything
    assert limiter.cool_down() is not None


def test_a_429_without_retry_after_waits_a_whole_window(httpx_mock: HTTPXMock, make_client, fake):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=429, json={"message": "Too Many Attempts."})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json=user(5))
    make_client().get_user(5)
    assert 60.0 in fake.sleeps


def test_throttle_never_exceeds_the_limit_in_any_60s_window_with_4_workers(httpx_mock: HTTPXMock, make_client):
    clocks = ThreadClocks()
    limit = 50
    limiter = RateLimiter(limit, 60.0, clock=clocks.clock, sleep=clocks.sleep)
    sent: list[float] = []
    sent_lock = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        with sent_lock:
            sent.append(clocks.clock())  # runs in the sending thread: its clock is its slot
        clocks.sleep(0.05 + 0.2 * (len(sent) % 3))  # uneven latency
        return httpx.Response(200, json={"data": user(int(request.url.path.rsplit("/", 1)[1]))})

    httpx_mock.add_callback(answer, method="GET", is_reusable=True)
    client = make_client(limiter=limiter)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(60):
                client.get_user(offset * 1000 + i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(sent) == 240
    ordered = sorted(sent)
    for i, start in enumerate(ordered):
        in_window = sum(1 for t in ordered[i:] if t < start + 60.0)
        assert in_window <= limit, f"{in_window} requests in the 60 s from t={start:.2f}"
    floor = (240 - 1) * 60.0 / limit
    assert ordered[-1] - ordered[0] <= 1.15 * floor


def test_the_key_never_reaches_errors(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=400, json={"message": "Bad request"})
    with pytest.raises(ReferralFactoryApiError) as caught:
        make_client().get_user(5)
    assert KEY not in json.dumps(caught.value.to_dict()) + (caught.value.hint or "")


def test_a_blocked_ip_is_temporary_not_an_api_key_problem(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=403,
                            json={"message": "Your IP address has been blocked for abusing the API rate limit."})
    with pytest.raises(TemporaryError) as caught:
        make_client().get_campaign(7)
    assert caught.value.exit_code == 6
    assert "blocked this machine's IP" in str(caught.value)
    assert "API key" not in str(caught.value)
