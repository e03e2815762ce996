"""ReferralFactoryClient against the readings api/referral-factory.md §11 leaves open: cursor
paging, a search that refuses a field or a page size, mixed meta values, route-level 404s,
403s that are not about permissions, and the shared 429 fate. Strict HTTP mocks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fakes import FakeTime  # tests/support
from pytest_httpx import HTTPXMock

from stsync.errors import (
    AuthError,
    ConfigError,
    CoolingDown,
    IncompleteListing,
    NotFound,
    ReferralFactoryApiError,
    TemporaryError,
)
from stsync.http import RetryPolicy, shared_ssl_context
from stsync.ratelimit import IP_BLOCKED, RATE_LIMITED, RateLimiter
from stsync.referralfactory.client import ReferralFactoryClient

API = "https://rf.example.test/api/v2"
SEARCH = f"{API}/users/search"
CAMPAIGN = 7
TLS = shared_ssl_context()
START = 1_800_000_000.0  # a wall-clock epoch for the fake clock


def user(id: int, **fields) -> dict:
    base = {"id": id, "campaign_id": CAMPAIGN, "first_name": "Jane", "email": f"user{id}@example.com",
            "code": f"code{id}", "type": "person_invited", "meta": []}
    base.update(fields)
    return base


def filters(*conditions: tuple[str, str]) -> dict:
    return {"filters": {"operator": "AND", "value": [{"field": f, "value": v, "operator": "="} for f, v in conditions]}}


def cursor_page(rows: list, next_url: str | None) -> dict:
    return {"data": rows, "links": {"first": None, "last": None, "prev": None, "next": next_url},
            "meta": {"path": SEARCH, "per_page": 2, "next_cursor": "x" if next_url else None, "prev_cursor": None}}


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(START)


@pytest.fixture
def make_client(fake: FakeTime, tmp_path: Path):
    clients: list[ReferralFactoryClient] = []

    def build(**overrides) -> ReferralFactoryClient:
        settings = dict(
            api_url=API,
            api_key="rf-key",
            limiter=RateLimiter(600, 60.0, clock=fake.clock, sleep=fake.sleep, wall_clock=fake.clock),
            retry=RetryPolicy(budget_seconds=120.0, clock=fake.clock, sleep=fake.sleep, jitter=lambda: 1.0),
            transport=httpx.HTTPTransport(verify=TLS),
            search_shape_file=tmp_path / "state" / "referral-factory-search.json",
        )
        settings.update(overrides)
        client = ReferralFactoryClient(**settings)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def shared_limiter(tmp_path: Path, fake: FakeTime) -> RateLimiter:
    """A limiter on the connection's state file: what another process of it would build."""
    return RateLimiter(600, 60.0, state_file=tmp_path / "rate.json", clock=fake.clock, sleep=fake.sleep,
                       wall_clock=fake.clock)


# -- paging ------------------------------------------------------------------------------


def test_cursor_paging_follows_links_next_with_the_same_search_body(httpx_mock: HTTPXMock, make_client):
    body = filters(("campaign_id", "7"), ("type", "person_invited"))
    second = f"{SEARCH}?per_page=2&cursor=eyJpZCI6Mn0"
    third = f"{SEARCH}?per_page=2&cursor=eyJpZCI6NH0"
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=2", match_json=body,
                            json=cursor_page([user(1), user(2)], second))
    httpx_mock.add_response(method="POST", url=second, match_json=body, json=cursor_page([user(3), user(4)], third))
    httpx_mock.add_response(method="POST", url=third, match_json=body, json=cursor_page([user(5)], None))

    found = make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")], per_page=2)

    assert [u.id for u in found] == [1, 2, 3, 4, 5]


def test_a_next_link_without_per_page_gets_ours_and_keeps_its_own_parameters(httpx_mock: HTTPXMock, make_client):
    # Laravel builds links without the request's query unless told to: an offset page of
    # another size would repeat or skip rows, so our per_page is added (and nothing else).
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns?page=1&per_page=250",
                            json={"data": [{"id": 1}], "links": {"next": f"{API}/campaigns?page=2"},
                                  "meta": {"current_page": 1, "last_page": 2}})
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns?page=2&per_page=250",
                            json={"data": [{"id": 2}], "links": {"next": None}, "meta": {"current_page": 2, "last_page": 2}})
    assert [c.id for c in make_client().list_campaigns()] == [1, 2]


def test_page_numbers_only_when_there_is_no_next_link(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json={"data": [user(1)], "meta": {"current_page": 1, "last_page": 2}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=2&per_page=250",
                            json={"data": [user(2)], "meta": {"current_page": 2, "last_page": 2}})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)])] == [1, 2]


def test_a_cursor_in_meta_without_a_link_is_sent_as_cursor(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json={"data": [user(1)], "meta": {"next_cursor": "abc"}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?cursor=abc&per_page=250",
                            json={"data": [user(2)], "meta": {"next_cursor": None}})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)])] == [1, 2]


def test_a_server_that_ignores_page_numbers_is_an_incomplete_listing_not_a_warning(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json={"data": [user(1)], "meta": {"current_page": 1, "last_page": 3}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=2&per_page=250",
                            json={"data": [user(1)], "meta": {"current_page": 1, "last_page": 3}})
    found = []
    with pytest.raises(IncompleteListing) as caught:
        for found_user in make_client().search_users([("campaign_id", CAMPAIGN)]):
            found.append(found_user.id)
    assert found == [1]
    assert caught.value.exit_code == 6
    assert "cannot be followed to its end" in caught.value.message


def test_a_next_link_back_to_a_page_already_read_raises(httpx_mock: HTTPXMock, make_client):
    first = f"{SEARCH}?page=1&per_page=250"
    httpx_mock.add_response(method="POST", url=first, json=cursor_page([user(1)], f"{SEARCH}?per_page=250&cursor=a"))
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?per_page=250&cursor=a", json=cursor_page([user(2)], first))
    with pytest.raises(IncompleteListing, match="already read"):
        list(make_client().search_users([("campaign_id", CAMPAIGN)]))


def test_a_repeated_page_raises(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json=cursor_page([user(1), user(2)], f"{SEARCH}?per_page=250&cursor=a"))
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?per_page=250&cursor=a",
                            json=cursor_page([user(1), user(2)], f"{SEARCH}?per_page=250&cursor=b"))
    with pytest.raises(IncompleteListing, match="repeated"):
        list(make_client().search_users([("campaign_id", CAMPAIGN)]))


def test_a_next_link_outside_the_api_is_never_followed(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json=cursor_page([user(1)], "https://rf.example.test/login?cursor=a"))
    with pytest.raises(IncompleteListing, match="outside the API"):
        list(make_client().search_users([("campaign_id", CAMPAIGN)]))


def test_a_next_link_on_another_host_or_scheme_is_sent_to_our_origin(httpx_mock: HTTPXMock, make_client):
    # A proxy in front of Laravel makes it write http://internal-host/... links: the key
    # goes only where the config points.
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json=cursor_page([user(1)], "http://10.0.0.7:8080/api/v2/users/search?per_page=250&cursor=a"))
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?per_page=250&cursor=a", json=cursor_page([user(2)], None))
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)])] == [1, 2]


def test_a_row_met_twice_in_one_listing_is_yielded_once(httpx_mock: HTTPXMock, make_client):
    # Page-number paging while a user joins: the offsets shift and a row comes again.
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=2",
                            json={"data": [user(1), user(2)], "meta": {"current_page": 1, "last_page": 2}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=2&per_page=2",
                            json={"data": [user(2), user(3)], "meta": {"current_page": 2, "last_page": 2}})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)], per_page=2)] == [1, 2, 3]


# -- search refusals ---------------------------------------------------------------------


def refuses_type(index: int = 1) -> dict:
    key = f"filters.value.{index}.field"
    return {"code": 422, "message": f"The selected {key} is invalid.",
            "errors": {key: [{"field": key, "message": f"The selected {key} is invalid."}]}}


def test_a_search_refusing_type_is_retried_without_it_and_filtered_here(httpx_mock: HTTPXMock, make_client, tmp_path, caplog):
    caplog.set_level("INFO", logger="stsync")
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            match_json=filters(("campaign_id", "7"), ("type", "person_invited")),
                            status_code=422, json=refuses_type())
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", match_json=filters(("campaign_id", "7")),
                            json={"data": [user(1), user(2, type="person_referring"), user(3)]})

    found = make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")])

    assert [u.id for u in found] == [1, 3]
    remembered = json.loads((tmp_path / "state" / "referral-factory-search.json").read_text())
    assert remembered["refused_fields"] == ["type"]
    assert "search refused the filter field(s) type" in caplog.text
    assert "remembering it for this connection" in caplog.text


def test_the_remembered_shape_is_used_at_once_by_the_next_process(httpx_mock: HTTPXMock, make_client, tmp_path, caplog):
    shape_file = tmp_path / "state" / "referral-factory-search.json"
    shape_file.parent.mkdir(parents=True)
    shape_file.write_text(json.dumps({"refused_fields": ["type"], "max_per_page": 100}))
    caplog.set_level("INFO", logger="stsync")
    # One request: the shape that worked, nothing refused again (strict mock).
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=100", match_json=filters(("campaign_id", "7")),
                            json={"data": [user(1)]})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")])] == [1]
    assert "using the shape remembered for this connection" in caplog.text


def test_a_search_refusing_the_page_size_retries_with_the_maximum_it_names(httpx_mock: HTTPXMock, make_client, tmp_path):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", status_code=422,
                            json={"code": 422, "message": "The per page must not be greater than 100.",
                                  "errors": {"per_page": [{"field": "per_page", "message": "The per page must not be greater than 100."}]}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=100", json={"data": [user(1)]})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)])] == [1]
    assert json.loads((tmp_path / "state" / "referral-factory-search.json").read_text())["max_per_page"] == 100


def test_a_page_size_refusal_without_a_number_falls_back_to_the_default_page(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", status_code=422,
                            json={"message": "Invalid per_page", "errors": {"per_page": ["Invalid per_page"]}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1", json={"data": [user(1)]})
    assert [u.id for u in make_client().search_users([("campaign_id", CAMPAIGN)])] == [1]


def test_both_refusals_in_turn_each_retried_once(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            match_json=filters(("campaign_id", "7"), ("type", "person_referring")),
                            status_code=422, json=refuses_type())
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", match_json=filters(("campaign_id", "7")),
                            status_code=422, json={"message": "The per page must not be greater than 100.",
                                                   "errors": {"per_page": ["The per page must not be greater than 100."]}})
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=100", match_json=filters(("campaign_id", "7")),
                            json={"data": [user(1, type="person_referring"), user(2)]})
    found = make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_referring")])
    assert [u.id for u in found] == [1]


def test_a_refusal_of_a_field_seen_in_use_is_the_search_own_error(httpx_mock: HTTPXMock, make_client, tmp_path):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", status_code=422,
                            json=refuses_type(index=0))
    with pytest.raises(ReferralFactoryApiError) as caught:
        list(make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")]))
    assert caught.value.status == 422
    assert not (tmp_path / "state" / "referral-factory-search.json").exists()


def test_a_refusal_after_rows_were_returned_is_not_retried(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250",
                            json=cursor_page([user(1)], f"{SEARCH}?per_page=250&cursor=a"))
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?per_page=250&cursor=a", status_code=422, json=refuses_type())
    with pytest.raises(ReferralFactoryApiError):
        list(make_client().search_users([("campaign_id", CAMPAIGN), ("type", "person_invited")]))


# -- mixed meta --------------------------------------------------------------------------


def test_list_and_object_meta_values_keep_the_page_readable(httpx_mock: HTTPXMock, make_client):
    mixed = user(2, meta=[{"field": "Days", "value": ["Mon", "Wed", None]},
                          {"field": "Address", "value": {"street": "1 Main", "zip": 12345}},
                          {"field": "Consent", "value": True}, {"value": "no label"}, "junk"])
    httpx_mock.add_response(method="POST", url=f"{SEARCH}?page=1&per_page=250", json={"data": [user(1), mixed, user(3)]})
    found = list(make_client().search_users([("campaign_id", CAMPAIGN)]))
    assert [u.id for u in found] == [1, 2, 3]
    assert found[1].meta_value("Days") == "Mon, Wed"
    assert found[1].meta_value("Address") == '{"street":"1 Main","zip":12345}'
    assert found[1].meta_value("Consent") == "true"
    assert [m.field for m in found[1].meta] == ["Days", "Address", "Consent"]


# -- 404 ---------------------------------------------------------------------------------


HTML_404 = "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center></body></html>"


def test_the_api_json_404_is_not_found_with_its_url(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, json={"code": 404, "message": "User not found."})
    with pytest.raises(NotFound) as caught:
        make_client().get_user(5)
    assert caught.value.url == f"{API}/users/5"
    assert caught.value.to_dict()["url"] == f"{API}/users/5"


def test_an_html_404_before_anything_answered_is_a_wrong_api_url(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, text=HTML_404,
                            headers={"Content-Type": "text/html"})
    with pytest.raises(ConfigError) as caught:
        make_client().get_user(5)
    assert caught.value.exit_code == 3
    assert f"{API}/users/5" in caught.value.message
    assert caught.value.key_path == "referral_factory.api_url"


def test_a_non_json_404_after_the_api_answered_is_temporary(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", json={"data": {"id": 7}})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, text="Not Found",
                            headers={"Content-Type": "text/plain"})
    client = make_client()
    client.get_campaign(7)
    with pytest.raises(TemporaryError) as caught:
        client.get_user(5)
    assert caught.value.exit_code == 6
    assert "nothing was recorded as deleted" in caught.value.hint


def test_confirm_deleted_reads_the_campaign_once_when_nothing_did(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, json={"message": "User not found."})
    httpx_mock.add_response(method="GET", url=f"{API}/users/6", status_code=404, json={"message": "User not found."})
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", json={"data": {"id": 7}})
    client = make_client()
    for missing_id in (5, 6):
        with pytest.raises(NotFound) as caught:
            client.get_user(missing_id)
        client.confirm_deleted(caught.value, campaign_id=CAMPAIGN)  # returns: proven
    assert len([r for r in httpx_mock.get_requests() if "/campaigns/" in r.url.path]) == 1


def test_confirm_deleted_when_the_campaign_is_not_found_either_is_a_config_error(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, json={"message": "Not Found"})
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=404, json={"message": "Not Found"})
    client = make_client()
    with pytest.raises(NotFound) as caught:
        client.get_user(5)
    with pytest.raises(ConfigError) as config:
        client.confirm_deleted(caught.value, campaign_id=CAMPAIGN)
    assert config.value.exit_code == 3
    assert f"{API}/users/5" in config.value.message and f"{API}/campaigns/7" in config.value.message


def test_confirm_deleted_when_the_campaign_read_fails_is_temporary(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=404, json={"message": "Not Found"})
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=400, json={"message": "Bad Request"})
    client = make_client()
    with pytest.raises(NotFound) as caught:
        client.get_user(5)
    with pytest.raises(TemporaryError) as temporary:
        client.confirm_deleted(caught.value, campaign_id=CAMPAIGN)
    assert temporary.value.exit_code == 6


# -- 403 ---------------------------------------------------------------------------------


def test_a_403_on_an_endpoint_that_answered_earlier_is_temporary(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5)})
    httpx_mock.add_response(method="GET", url=f"{API}/users/6", status_code=403,
                            json={"code": 403, "message": "This action is unauthorized."})
    client = make_client()
    client.get_user(5)
    with pytest.raises(TemporaryError) as caught:
        client.get_user(6)
    assert caught.value.exit_code == 6
    assert "answered earlier in this run" in caught.value.message


def test_a_403_on_an_endpoint_never_answered_is_an_admin_only_refusal(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5)})
    httpx_mock.add_response(method="PUT", url=f"{API}/users/qualification", status_code=403,
                            json={"code": 403, "message": "This action is unauthorized."})
    client = make_client()
    client.get_user(5)
    with pytest.raises(AuthError) as caught:
        client.set_qualification(True, id=5)
    assert caught.value.exit_code == 4
    assert "admin" in caught.value.hint


def test_a_403_saying_blocked_stops_every_process_and_says_when(httpx_mock: HTTPXMock, make_client, tmp_path, fake):
    heard = []
    httpx_mock.add_response(method="GET", url=f"{API}/campaigns/7", status_code=403,
                            json={"message": "Your IP address has been blocked for abusing the API rate limit."})
    client = make_client(limiter=shared_limiter(tmp_path, fake), on_cool_down=heard.append)
    with pytest.raises(CoolingDown) as caught:
        client.get_campaign(7)
    error = caught.value
    assert error.exit_code == 6 and error.reason == IP_BLOCKED
    assert "UTC" in error.message and "blocked this machine's IP address" in error.message
    assert [c.reason for c in heard] == [IP_BLOCKED]
    # Another process of the connection sends nothing (strict mock: a request would fail).
    other = make_client(limiter=shared_limiter(tmp_path, fake))
    with pytest.raises(CoolingDown):
        other.get_user(5)
    assert len(httpx_mock.get_requests()) == 1


# -- 429: the shared fate ----------------------------------------------------------------


def test_two_processes_each_seeing_one_429_the_second_stops(httpx_mock: HTTPXMock, make_client, tmp_path, fake):
    heard = []
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", status_code=429, headers={"Retry-After": "5"})
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5)})
    httpx_mock.add_response(method="GET", url=f"{API}/users/6", status_code=429, headers={"Retry-After": "5"})
    first = make_client(limiter=shared_limiter(tmp_path, fake))
    assert first.get_user(5).id == 5
    fake.now += 600  # ten minutes later, another cron job
    second = make_client(limiter=shared_limiter(tmp_path, fake), on_cool_down=heard.append)
    with pytest.raises(CoolingDown) as caught:
        second.get_user(6)
    assert caught.value.reason == RATE_LIMITED
    # An hour after the second episode, in UTC (the message says it in local time too).
    assert caught.value.safe_after == datetime.fromtimestamp(fake.now + 3600, UTC).isoformat(timespec="seconds")
    assert [c.reason for c in heard] == [RATE_LIMITED]
    third = make_client(limiter=shared_limiter(tmp_path, fake))
    with pytest.raises(CoolingDown):
        third.get_user(7)
    assert len(httpx_mock.get_requests()) == 3
    fake.now += 3601  # the cool-down is over
    httpx_mock.add_response(method="GET", url=f"{API}/users/7", json={"data": user(7)})
    assert third.get_user(7).id == 7


def test_the_key_is_sent_without_surrounding_whitespace(httpx_mock: HTTPXMock, make_client):
    httpx_mock.add_response(method="GET", url=f"{API}/users/5", json={"data": user(5)})
    make_client(api_key="  rf-key\r\n").get_user(5)
    assert httpx_mock.get_request().headers["Authorization"] == "Bearer rf-key"
