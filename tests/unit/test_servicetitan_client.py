"""ServiceTitanClient against strict HTTP mocks: token, headers, paging, errors, retries."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from fakes import FakeTime  # tests/support
from pytest_httpx import HTTPXMock

from stsync.errors import AnswerLost, AuthError, ConfigError, IncompleteListing, ServiceTitanApiError, TemporaryError
from stsync.http import RetryPolicy, shared_ssl_context
from stsync.ratelimit import RateLimiter
from stsync.servicetitan.client import ServiceTitanClient
from stsync.servicetitan.models import Booking, Customer, ExportPage, Job

AUTH = "https://auth.example.test"
API = "https://api.example.test"
TOKEN_URL = f"{AUTH}/connect/token"
TENANT = 1234567
BP = 42
CLIENT_ID = "cid.test-client"
SECRET = "cs2.TOP-SECRET-client-secret"
APP_KEY = "ak1.SECRET-app-key"
CRM = f"{API}/crm/v2/tenant/{TENANT}"
JPM = f"{API}/jpm/v2/tenant/{TENANT}"
BOOKINGS = f"{CRM}/booking-provider/{BP}/bookings"

BOOKING = {
    "id": 5551234,
    "source": "Referral Factory",
    "createdOn": "2025-05-30T18:22:11.123Z",
    "name": "Jane Doe",
    "start": None,
    "status": "New",
    "jobId": None,
    "dismissingReasonId": None,
    "externalId": "ueONFmUp",
    "bookingProviderId": 42,
    "modifiedOn": "2025-05-30T18:22:11.123Z",
    "summary": "Referral",
    "isFirstTimeClient": True,
    "customerType": "Residential",
    "somethingNew": {"live": "responses carry more than the spec"},
}
CUSTOMER = {
    "id": 1673,
    "active": True,
    "name": "Jane Doe",
    "type": "Residential",
    "address": {"street": "1 Main St", "unit": None, "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"},
    "customFields": [{"typeId": 57, "name": "Gate Code", "value": "1234"}],
    "balance": 0.0,
    "tagTypeIds": [],
    "doNotMail": False,
    "doNotService": False,
    "createdOn": "2024-01-01T00:00:00Z",
    "createdById": 1,
    "modifiedOn": "2025-01-01T00:00:00Z",
    "mergedToId": None,
    "externalData": [],
}

TLS = shared_ssl_context()  # the clients' own shared context: one CA-bundle load per run




@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(10.0)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "state" / "default" / "servicetitan-token.json"


@pytest.fixture
def make_client(fake: FakeTime, cache: Path):
    clients: list[ServiceTitanClient] = []

    def build(**overrides) -> ServiceTitanClient:
        settings = dict(
            auth_url=AUTH,
            api_url=API,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=SECRET,
            app_key=APP_KEY,
            token_cache=cache,
            limiter=RateLimiter(60, 1.0, clock=fake.clock, sleep=fake.sleep),
            retry=RetryPolicy(budget_seconds=30.0, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0),
            page_size=2,
            transport=httpx.HTTPTransport(verify=TLS),
        )
        settings.update(overrides)
        client = ServiceTitanClient(**settings)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def add_token(httpx_mock: HTTPXMock, token: str = "tok-1", expires_in: int = 900) -> None:
    httpx_mock.add_response(
        method="POST",
        url=TOKEN_URL,
        json={"access_token": token, "expires_in": expires_in, "token_type": "Bearer", "scope": "tn.crm"},
    )


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


# -- token ----------------------------------------------------------------------------


def test_token_is_fetched_form_encoded_and_sent_with_the_app_key(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1673", json=CUSTOMER)
    customer = make_client().get_customer(1673)
    assert isinstance(customer, Customer) and customer.custom_fields[0].type_id == 57

    token_request, api_request = httpx_mock.get_requests()
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(token_request) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [SECRET],
    }
    assert "ST-App-Key" not in token_request.headers  # the app key goes to the API only
    assert api_request.headers["Authorization"] == "Bearer tok-1"
    assert api_request.headers["ST-App-Key"] == APP_KEY


def test_one_token_request_shared_by_two_clients_through_the_cache(httpx_mock: HTTPXMock, make_client, cache: Path):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", json={**CUSTOMER, "id": 1})
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/2", json={**CUSTOMER, "id": 2})
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/3", json={**CUSTOMER, "id": 3})
    first = make_client()
    first.get_customer(1)
    first.get_customer(2)  # memory
    make_client().get_customer(3)  # another process or run: the cache file

    assert len(httpx_mock.get_requests(url=TOKEN_URL)) == 1
    assert all(r.headers["Authorization"] == "Bearer tok-1" for r in httpx_mock.get_requests(method="GET"))
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    text = cache.read_text()
    assert SECRET not in text and APP_KEY not in text
    entry = json.loads(text)["tokens"][f"{AUTH}|{TENANT}|{CLIENT_ID}"]
    assert entry["access_token"] == "tok-1"
    assert entry["expires_at"] == pytest.approx(time.time() + 900, abs=30)


def test_concurrent_clients_and_threads_fetch_one_token(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", json=CUSTOMER, is_reusable=True)
    clients = [make_client(), make_client()]  # two "processes": they share only the file lock
    errors: list[BaseException] = []

    def work(client: ServiceTitanClient) -> None:
        try:
            client.get_customer(1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(clients[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(httpx_mock.get_requests(url=TOKEN_URL)) == 1
    assert len(httpx_mock.get_requests(method="GET")) == 8


def test_a_token_expiring_within_60_seconds_is_renewed(httpx_mock: HTTPXMock, make_client, cache: Path):
    cache.parent.mkdir(parents=True)
    key = f"{AUTH}|{TENANT}|{CLIENT_ID}"
    cache.write_text(json.dumps({"version": 1, "tokens": {key: {"access_token": "old", "expires_at": time.time() + 45}}}))
    add_token(httpx_mock, "fresh")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", json=CUSTOMER)
    make_client().get_customer(1)
    assert httpx_mock.get_requests(method="GET")[0].headers["Authorization"] == "Bearer fresh"


def test_a_cached_token_is_reused_across_runs(httpx_mock: HTTPXMock, make_client, cache: Path):
    cache.parent.mkdir(parents=True)
    key = f"{AUTH}|{TENANT}|{CLIENT_ID}"
    cache.write_text(json.dumps({"version": 1, "tokens": {key: {"access_token": "cached", "expires_at": time.time() + 600}}}))
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", json=CUSTOMER)
    make_client().get_customer(1)
    assert httpx_mock.get_requests()[0].headers["Authorization"] == "Bearer cached"


def test_401_refreshes_the_token_once_and_retries(httpx_mock: HTTPXMock, make_client):
    sent: list[str] = []  # the header as it was at send time (the request object is reused)

    def answer(status: int, body: dict | None = None):
        def callback(request: httpx.Request) -> httpx.Response:
            sent.append(request.headers["Authorization"])
            return httpx.Response(status, json=body)

        return callback

    add_token(httpx_mock, "tok-1")
    httpx_mock.add_callback(answer(401), method="GET", url=f"{CRM}/customers/1")
    add_token(httpx_mock, "tok-2")
    httpx_mock.add_callback(answer(200, CUSTOMER), method="GET", url=f"{CRM}/customers/1")
    assert make_client().get_customer(1).id == 1673
    assert sent == ["Bearer tok-1", "Bearer tok-2"]


def test_401_after_the_refresh_is_an_auth_error(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock, "tok-1")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401)
    add_token(httpx_mock, "tok-2")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401)
    with pytest.raises(AuthError) as caught:
        make_client().get_customer(1)
    assert caught.value.exit_code == 4
    assert str(TENANT) in caught.value.message


@pytest.mark.parametrize("status", [400, 401])
def test_bad_client_id_or_secret_is_an_auth_error(httpx_mock: HTTPXMock, make_client, status):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=status, json={"error": "invalid_client"})
    with pytest.raises(AuthError) as caught:
        make_client().verify_token()
    error = caught.value
    assert error.exit_code == 4
    assert f"ServiceTitan rejected the Client ID / Client Secret for {AUTH}" in error.message
    assert "invalid_client" in error.message
    assert "stsync connect" in error.hint
    assert SECRET not in error.message + error.hint


def test_verify_token_always_asks_the_token_endpoint(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock, "tok-1")
    add_token(httpx_mock, "tok-2")
    client = make_client()
    client.verify_token()
    client.verify_token()  # a cached token would not prove a newly entered secret
    assert len(httpx_mock.get_requests(url=TOKEN_URL)) == 2


def test_token_endpoint_5xx_and_timeouts_are_retried(httpx_mock: HTTPXMock, make_client, fake):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=503)
    httpx_mock.add_exception(httpx.ReadTimeout("slow"), method="POST", url=TOKEN_URL)
    add_token(httpx_mock)
    make_client().verify_token()
    assert len(fake.sleeps) == 2


def test_token_endpoint_down_past_the_budget_is_temporary(httpx_mock: HTTPXMock, make_client, fake):
    retry = RetryPolicy(budget_seconds=2.0, base_delay=1.0, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0)
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=502)
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=502)
    with pytest.raises(TemporaryError) as caught:
        make_client(retry=retry).verify_token()
    assert caught.value.exit_code == 6
    assert "token endpoint" in caught.value.message


# -- 403 / booking provider --------------------------------------------------------------


def test_wrong_app_key_403_is_an_auth_error(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/customers/1", status_code=403, json={"title": "Invalid or missing ST-App-Key header."}
    )
    with pytest.raises(AuthError) as caught:
        make_client().get_customer(1)
    assert caught.value.exit_code == 4
    assert "wrong ST-App-Key" in caught.value.message
    assert APP_KEY not in caught.value.message + caught.value.hint


def test_a_401_about_the_app_key_blames_the_app_key(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock, "tok-1")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401, json={"title": "Invalid app key"})
    add_token(httpx_mock, "tok-2")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401, json={"title": "Invalid app key"})
    with pytest.raises(AuthError, match="wrong ST-App-Key"):
        make_client().get_customer(1)


def test_other_403_names_the_tenant(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{JPM}/jobs/5", status_code=403, json={"title": "Forbidden"})
    with pytest.raises(AuthError) as caught:
        make_client().get_job(5)
    assert f"tenant {TENANT}" in caught.value.message
    assert "scopes" in caught.value.hint


@pytest.mark.parametrize("status", [403, 404])
def test_wrong_booking_provider_uses_the_guides_words(httpx_mock: HTTPXMock, make_client, status):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}?page=1&pageSize=1", status_code=status, json={"title": "Not Found"})
    with pytest.raises(AuthError) as caught:
        make_client().check_booking_provider(BP)
    assert caught.value.exit_code == 4
    assert "Booking Provider Value is incorrect" in caught.value.message
    assert (
        "Settings → Integrations → API Application Access → your Referral Factory app details" in caught.value.hint
    )


def test_booking_provider_check_with_a_wrong_app_key_blames_the_app_key(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{BOOKINGS}?page=1&pageSize=1", status_code=403, json={"title": "Invalid app key"}
    )
    with pytest.raises(AuthError, match="wrong ST-App-Key"):
        make_client().check_booking_provider(BP)


def test_a_good_booking_provider_passes(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{BOOKINGS}?page=1&pageSize=1", json={"page": 1, "pageSize": 1, "hasMore": False, "data": []}
    )
    make_client().check_booking_provider(BP)


# -- bookings ---------------------------------------------------------------------------


def test_create_booking_posts_the_body_and_parses_the_answer(httpx_mock: HTTPXMock, make_client):
    body = {"source": "Referral Factory", "name": "Jane Doe", "summary": "Referral", "isFirstTimeClient": True,
            "externalId": "ueONFmUp"}
    add_token(httpx_mock)
    httpx_mock.add_response(method="POST", url=BOOKINGS, match_json=body, json=BOOKING)
    booking = make_client().create_booking(BP, body)
    assert isinstance(booking, Booking)
    assert (booking.id, booking.external_id, booking.status, booking.job_id) == (5551234, "ueONFmUp", "New", None)
    assert booking.created_on == datetime(2025, 5, 30, 18, 22, 11, 123000, tzinfo=UTC)
    assert not booking.converted


@pytest.mark.parametrize("failure", ["500", "timeout", "reset"])
def test_create_booking_with_a_lost_answer_is_answer_lost_and_not_retried(httpx_mock: HTTPXMock, make_client, failure):
    add_token(httpx_mock)
    if failure == "500":
        httpx_mock.add_response(method="POST", url=BOOKINGS, status_code=500)
    elif failure == "timeout":
        httpx_mock.add_exception(httpx.ReadTimeout("no answer"), method="POST", url=BOOKINGS)
    else:
        httpx_mock.add_exception(httpx.RemoteProtocolError("connection reset"), method="POST", url=BOOKINGS)
    with pytest.raises(AnswerLost) as caught:
        make_client().create_booking(BP, {"externalId": "ueONFmUp"})
    assert caught.value.exit_code == 6
    assert len(httpx_mock.get_requests(url=BOOKINGS)) == 1


def test_api_error_response_is_kept_verbatim(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    errors = {"Name": ["The Name field is required."], "Contacts[0].Value": ["'Value' must not be empty.", "Bad."]}
    httpx_mock.add_response(
        method="POST",
        url=BOOKINGS,
        status_code=400,
        json={"type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
              "title": "One or more validation errors occurred.", "status": 400,
              "traceId": "00-abc-def-00", "errors": errors, "data": {}},
    )
    with pytest.raises(ServiceTitanApiError) as caught:
        make_client().create_booking(BP, {"externalId": "x"})
    error = caught.value
    assert error.status == 400
    assert error.title == "One or more validation errors occurred."
    assert error.errors == errors
    assert error.trace_id == "00-abc-def-00"
    assert (error.method, error.path) == ("POST", f"/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings")
    assert "The Name field is required." in error.message
    assert error.to_dict()["errors"] == errors


def test_an_error_body_of_another_shape_still_gives_a_useful_error(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/9", status_code=400, text="<html>Bad Request</html>")
    with pytest.raises(ServiceTitanApiError) as caught:
        make_client().get_booking(BP, 9)
    assert caught.value.status == 400
    assert "Bad Request" in caught.value.message
    assert caught.value.errors == {}


def test_an_html_404_before_anything_answered_is_a_wrong_api_url_not_a_missing_record(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/9", status_code=404, text="<html>404 Not Found</html>",
                            headers={"Content-Type": "text/html"})
    with pytest.raises(ConfigError) as caught:
        make_client().get_booking(BP, 9)
    assert caught.value.exit_code == 3
    assert f"{BOOKINGS}/9" in caught.value.message
    assert caught.value.key_path == "servicetitan.api_url"


def test_a_wrong_api_url_is_not_called_a_wrong_booking_provider(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}?page=1&pageSize=1", status_code=404, text="<html>404</html>",
                            headers={"Content-Type": "text/html"})
    with pytest.raises(ConfigError, match="servicetitan.api_url does not point at the API"):
        make_client().check_booking_provider(BP)


def test_an_html_404_once_the_api_answered_is_temporary(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/5551234", json=BOOKING)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/9", status_code=404, text="<html>404</html>",
                            headers={"Content-Type": "text/html"})
    client = make_client()
    client.get_booking(BP, 5551234)
    with pytest.raises(TemporaryError) as caught:
        client.get_booking(BP, 9)
    assert caught.value.exit_code == 6


def test_get_booking_retries_5xx_then_succeeds(httpx_mock: HTTPXMock, make_client, fake):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/5551234", status_code=503)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/5551234", json={**BOOKING, "jobId": 77, "status": "Brand New Status"})
    booking = make_client().get_booking(BP, 5551234)
    assert booking.job_id == 77 and booking.converted
    assert booking.status == "Brand New Status"  # unknown enum values are kept, not rejected
    assert fake.sleeps == [0.5]


def test_429_waits_as_told_and_slows_the_limiter(httpx_mock: HTTPXMock, make_client, fake):
    limiter = RateLimiter(60, 1.0, clock=fake.clock, sleep=fake.sleep)
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/1", status_code=429, headers={"Retry-After": "4"})
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/1", json=BOOKING)
    make_client(limiter=limiter).get_booking(BP, 1)
    assert 4.0 in fake.sleeps
    assert limiter.rate_factor == 0.5


def test_budget_exhausted_is_a_temporary_error(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    for _ in range(6):
        httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=503)
    # Budget 30 s: after waits of 0.5, 1, 2, 4 and 8 s (six attempts), 16 s more would pass it.
    with pytest.raises(TemporaryError) as caught:
        make_client().get_customer(1)
    assert caught.value.exit_code == 6
    assert caught.value.message.startswith("ServiceTitan is unavailable")


def test_list_bookings_pages_while_has_more(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{BOOKINGS}?externalId=abc&page=1&pageSize=2",
        json={"page": 1, "pageSize": 2, "hasMore": True, "data": [{**BOOKING, "id": 1}, {**BOOKING, "id": 2}]},
    )
    httpx_mock.add_response(
        method="GET", url=f"{BOOKINGS}?externalId=abc&page=2&pageSize=2",
        json={"page": 2, "pageSize": 2, "hasMore": False, "data": [{**BOOKING, "id": 3}]},
    )
    assert [b.id for b in make_client().list_bookings(BP, external_id="abc")] == [1, 2, 3]


def test_find_bookings_by_external_id_keeps_exact_matches(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{BOOKINGS}?externalId=abc&page=1&pageSize=2",
        json={"hasMore": False, "data": [{**BOOKING, "id": 1, "externalId": "abc"}, {**BOOKING, "id": 2, "externalId": "ABC"}]},
    )
    assert [b.id for b in make_client().find_bookings_by_external_id(BP, "abc")] == [1]


def test_get_bookings_sends_ids_in_batches_of_50(httpx_mock: HTTPXMock, make_client):
    ids = list(range(1, 121))
    add_token(httpx_mock)
    for batch in (ids[:50], ids[50:100], ids[100:]):
        httpx_mock.add_response(
            method="GET",
            url=f"{BOOKINGS}?ids={','.join(map(str, batch))}&page=1&pageSize=2",
            json={"hasMore": False, "data": [{**BOOKING, "id": batch[0]}]},
        )
    assert [b.id for b in make_client().get_bookings(BP, ids + [1, 2])] == [1, 51, 101]


def test_list_bookings_formats_filters(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET",
        url=f"{BOOKINGS}?modifiedOnOrAfter=2025-05-01T00%3A00%3A00.000Z&sort=%2BModifiedOn&page=1&pageSize=2",
        json={"hasMore": False, "data": []},
    )
    since = datetime(2025, 5, 1, tzinfo=UTC)
    assert list(make_client().list_bookings(BP, modified_on_or_after=since, sort="+ModifiedOn")) == []


def test_list_booking_provider_tags(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/booking-provider-tags?page=1&pageSize=2",
        json={"hasMore": False, "data": [{"id": 42, "tagName": "Referral Factory", "description": "", "type": "V2Api",
                                           "createdOn": "2024-01-01T00:00:00Z", "modifiedOn": "2024-01-01T00:00:00Z", "active": True}]},
    )
    (tag,) = make_client().list_booking_provider_tags()
    assert (tag.id, tag.tag_name, tag.type, tag.active) == (42, "Referral Factory", "V2Api", True)


# -- customers --------------------------------------------------------------------------


def test_get_customers_includes_inactive_ones(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/customers?ids=1%2C2&active=Any&page=1&pageSize=2",
        json={"hasMore": False, "data": [{**CUSTOMER, "id": 1}, {**CUSTOMER, "id": 2, "active": False, "mergedToId": 1}]},
    )
    customers = make_client().get_customers([1, 2])
    assert [(c.id, c.active, c.merged_to_id) for c in customers] == [(1, True, None), (2, False, 1)]


def test_update_customer_patches_and_is_retried(httpx_mock: HTTPXMock, make_client):
    body = {"customFields": [{"typeId": 101, "value": "https://x/ueONFmUp"}, {"typeId": 57, "value": "1234"}]}
    updated = {**CUSTOMER, "customFields": [{"typeId": 101, "name": "Referral Link", "value": "https://x/ueONFmUp"},
                                             {"typeId": 57, "name": "Gate Code", "value": "1234"}]}
    add_token(httpx_mock)
    httpx_mock.add_response(method="PATCH", url=f"{CRM}/customers/1673", status_code=502)
    httpx_mock.add_response(method="PATCH", url=f"{CRM}/customers/1673", match_json=body, json=updated)
    customer = make_client().update_customer(1673, body)
    assert customer.custom_field("referral link").value == "https://x/ueONFmUp"


def test_list_custom_field_types(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/customers/custom-fields?page=1&pageSize=2",
        json={"hasMore": False, "data": [{"id": 101, "name": "Referral Link", "dataType": "Text", "dataTypeOptions": [],
                                           "createdOn": "2024-01-01T00:00:00Z", "modifiedOn": "2024-01-01T00:00:00Z"}]},
    )
    (field_type,) = make_client().list_custom_field_types()
    assert (field_type.id, field_type.name, field_type.data_type) == (101, "Referral Link", "Text")


def test_list_customer_contacts(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/customers/contacts?customerIds=1673&page=1&pageSize=2",
        json={"hasMore": False, "data": [{"id": 9, "customerId": 1673, "type": "Email", "value": "jane@example.com",
                                           "memo": None, "modifiedOn": "2025-01-01T00:00:00Z",
                                           "createdOn": "2025-01-01T00:00:00Z",
                                           "phoneSettings": {"phoneNumber": "", "doNotText": False}}]},
    )
    (contact,) = make_client().list_customer_contacts([1673])
    assert (contact.customer_id, contact.type, contact.value, contact.active) == (1673, "Email", "jane@example.com", True)


def test_export_customers_follows_continue_from(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/export/customers?includeRecentChanges=true",
        json={"hasMore": True, "continueFrom": "c1", "data": [{**CUSTOMER, "id": 1}, {**CUSTOMER, "id": 2}]},
    )
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/export/customers?from=c1&includeRecentChanges=true",
        json={"hasMore": False, "continueFrom": "c2", "data": [{**CUSTOMER, "id": 3, "active": False}]},
    )
    pages = list(make_client().export_customers(None))
    assert [[c.id for c in p.data] for p in pages] == [[1, 2], [3]]
    assert [(p.continue_from, p.has_more) for p in pages] == [("c1", True), ("c2", False)]
    assert isinstance(pages[0], ExportPage) and isinstance(pages[0].data[0], Customer)


def test_export_resumes_from_a_stored_position(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/export/customers/contacts?from=saved-token&includeRecentChanges=true",
        json={"hasMore": False, "continueFrom": "next", "data": [
            {"id": 5, "customerId": 1, "type": "MobilePhone", "value": "8185550100", "active": True,
             "modifiedOn": "2025-01-01T00:00:00Z", "createdOn": "2025-01-01T00:00:00Z",
             "phoneSettings": {"phoneNumber": "8185550100", "doNotText": False}}]},
    )
    (page,) = make_client().export_customer_contacts("saved-token")
    assert page.continue_from == "next" and page.data[0].type == "MobilePhone"


# -- jobs -------------------------------------------------------------------------------

JOB = {"id": 77, "jobNumber": "77", "customerId": 1673, "locationId": 3, "jobStatus": "Completed",
       "completedOn": "2025-06-03T10:00:00Z", "bookingId": 5551234, "modifiedOn": "2025-06-03T10:00:00Z",
       "businessUnitId": 1, "jobTypeId": 2, "priority": "Normal", "campaignId": 3}


def test_jobs_by_id_and_by_booking(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{JPM}/jobs/77", json=JOB)
    httpx_mock.add_response(method="GET", url=f"{JPM}/jobs?ids=77&page=1&pageSize=2", json={"hasMore": False, "data": [JOB]})
    httpx_mock.add_response(
        method="GET", url=f"{JPM}/jobs?bookingId=5551234&jobStatus=Completed&page=1&pageSize=2",
        json={"hasMore": False, "data": [JOB]},
    )
    client = make_client()
    job = client.get_job(77)
    assert isinstance(job, Job)
    assert (job.job_number, job.customer_id, job.location_id, job.job_status, job.booking_id) == ("77", 1673, 3, "Completed", 5551234)
    assert job.completed_on == datetime(2025, 6, 3, 10, tzinfo=UTC)
    assert [j.id for j in client.get_jobs([77])] == [77]
    assert [j.id for j in client.list_jobs(booking_id=5551234, job_status="Completed")] == [77]


# -- secrets ----------------------------------------------------------------------------


def test_secrets_never_reach_logs_or_errors(httpx_mock: HTTPXMock, make_client, caplog):
    caplog.set_level(logging.DEBUG)
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=503)
    add_token(httpx_mock, "eyJ-SECRET-ACCESS-TOKEN")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401)
    add_token(httpx_mock, "eyJ-SECRET-ACCESS-TOKEN-2")
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", status_code=401)
    with pytest.raises(AuthError) as caught:
        make_client().get_customer(1)
    shown = caplog.text + caught.value.message + (caught.value.hint or "") + repr(caught.value)
    for secret in (SECRET, APP_KEY, "eyJ-SECRET-ACCESS-TOKEN"):
        assert secret not in shown


# -- models -----------------------------------------------------------------------------


def test_models_are_lenient_and_speak_both_spellings():
    booking = Booking.model_validate({**BOOKING, "createdOn": "2025-05-30T18:22:11.1234567", "priority": "Someday"})
    assert booking.created_on == datetime(2025, 5, 30, 18, 22, 11, 123456, tzinfo=UTC)  # naive = UTC
    assert booking.priority == "Someday"
    assert Booking(id=1, external_id="a", job_id=2).external_id == "a"  # snake_case works too
    customer = Customer.model_validate({**CUSTOMER, "type": {"name": "Commercial"}, "customFields": None})
    assert customer.type == "Commercial" and customer.custom_fields == []
    assert customer.address.zip == "78701"


def test_a_gateway_401_about_the_subscription_key_is_the_app_key_and_asks_no_new_token(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock, "tok-1")  # one token: a new one cannot help with the app key
    httpx_mock.add_response(
        method="GET", url=f"{CRM}/customers/1", status_code=401,
        json={"statusCode": 401, "message": "Access denied due to invalid subscription key. Make sure to provide a valid key "
              "for an active subscription."},
    )
    with pytest.raises(AuthError) as caught:
        make_client().get_customer(1)
    assert caught.value.exit_code == 4
    assert "wrong ST-App-Key" in caught.value.message
    assert "App Key" in caught.value.hint and "STSYNC_ST_APP_KEY" in caught.value.hint


def test_secrets_are_sent_without_surrounding_whitespace(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{CRM}/customers/1", json={"id": 1, "name": "A"})
    make_client(client_secret=f"{SECRET}\r\n", app_key=f" {APP_KEY}\n").get_customer(1)
    token_request, api_request = httpx_mock.get_requests()
    assert form(token_request)["client_secret"] == [SECRET]
    assert api_request.headers["ST-App-Key"] == APP_KEY


def test_a_list_saying_has_more_with_an_empty_page_is_incomplete_not_cut_short(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}?page=1&pageSize=2",
                            json={"page": 1, "pageSize": 2, "hasMore": True, "data": [{**BOOKING, "id": 1}, {**BOOKING, "id": 2}]})
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}?page=2&pageSize=2", json={"page": 2, "pageSize": 2, "hasMore": True, "data": []})
    with pytest.raises(IncompleteListing) as caught:
        list(make_client().list_bookings(BP))
    assert caught.value.exit_code == 6


def test_an_export_that_says_more_without_moving_on_is_incomplete(httpx_mock: HTTPXMock, make_client):
    add_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=f"{CRM}/export/customers?includeRecentChanges=true",
                            json={"data": [], "hasMore": True, "continueFrom": None})
    with pytest.raises(IncompleteListing):
        list(make_client().export_customers(None))
