"""The shared send loop: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import logging
from email.utils import formatdate

import httpx
import pytest
from fakes import FakeTime  # tests/support
from pytest_httpx import HTTPXMock

from stsync.errors import AnswerLost, ConfigError, RateLimited, TemporaryError
from stsync.http import RetryPolicy, retry_after_seconds, send_with_retries, shared_ssl_context

URL = "https://api.example.test/crm/v2/tenant/7/customers"
WALL = 1_700_000_000.0  # a pinned wall clock for HTTP-dates
TLS = shared_ssl_context()  # the clients' own shared context: one CA-bundle load per run




class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime(100.0)


def policy(fake: FakeTime, **overrides) -> RetryPolicy:
    settings = dict(
        budget_seconds=120.0,
        base_delay=0.5,
        max_delay=30.0,
        clock=fake.clock,
        sleep=fake.sleep,
        jitter=lambda: 1.0,
        wall_clock=lambda: WALL,
    )
    settings.update(overrides)
    return RetryPolicy(**settings)


def send(fake: FakeTime, method: str = "GET", *, json=None, **kwargs) -> httpx.Response:
    with httpx.Client(verify=TLS) as client:
        request = client.build_request(method, URL, json=json, headers={"Authorization": "Bearer SECRET-TOKEN"})
        return send_with_retries(
            client, request, service="ServiceTitan", policy=kwargs.pop("retry", None) or policy(fake), **kwargs
        )


def test_success_is_returned_without_waiting(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).json() == {"ok": True}
    assert fake.sleeps == []


def test_429_with_retry_after_in_seconds(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [7.0]


def test_429_with_retry_after_as_an_http_date(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": formatdate(WALL + 12, usegmt=True)})
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [12.0]


def test_429_with_the_gateway_sentence_in_the_body(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(
        url=URL,
        status_code=429,
        json={"type": "x", "title": "Rate limit is exceeded. Try again in 3 seconds.", "status": 429},
    )
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [3.0]


def test_429_without_a_hint_backs_off(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=429, text="slow down")
    httpx_mock.add_response(url=URL, status_code=429, text="slow down")
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [0.5, 1.0]


def test_429_without_a_hint_waits_at_least_the_callers_floor(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=429)
    httpx_mock.add_response(url=URL, json={})
    send(fake, unsaid_rate_limit_wait=60.0)
    assert fake.sleeps == [60.0]


def test_429_is_retried_even_for_a_create(httpx_mock: HTTPXMock, fake):
    """A 429 means the server did nothing: resending a POST cannot duplicate it."""
    httpx_mock.add_response(method="POST", url=URL, status_code=429, headers={"Retry-After": "1"})
    httpx_mock.add_response(method="POST", url=URL, status_code=201, json={"id": 1})
    assert send(fake, "POST", json={"name": "x"}).status_code == 201


def test_a_retry_after_beyond_the_budget_fails_at_once(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimited) as caught:
        send(fake)
    assert caught.value.exit_code == 6
    assert "ServiceTitan" in caught.value.message
    assert "retry later" in caught.value.hint
    assert fake.sleeps == []


def test_5xx_then_success(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=502)
    httpx_mock.add_response(url=URL, status_code=503)
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [0.5, 1.0]


def test_503_with_retry_after_waits_as_told(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=503, headers={"Retry-After": "2"})
    httpx_mock.add_response(url=URL, json={})
    send(fake)
    assert fake.sleeps == [2.0]


def test_transport_errors_on_a_read_are_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_exception(httpx.ReadTimeout("slow"), url=URL)
    httpx_mock.add_exception(httpx.RemoteProtocolError("reset"), url=URL)
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert len(fake.sleeps) == 2


def test_put_and_patch_are_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(method="PATCH", url=URL, status_code=500)
    httpx_mock.add_response(method="PATCH", url=URL, json={"id": 1})
    assert send(fake, "PATCH", json={"a": 1}).status_code == 200


def test_budget_exhausted_raises_temporary_error(httpx_mock: HTTPXMock, fake):
    # Waits 1, 2, then 4 would pass the 5 s budget: three attempts, then exit 6.
    for _ in range(3):
        httpx_mock.add_response(url=URL, status_code=503)
    with pytest.raises(TemporaryError) as caught:
        send(fake, retry=policy(fake, budget_seconds=5.0, base_delay=1.0))
    error = caught.value
    assert error.exit_code == 6
    assert not isinstance(error, (AnswerLost, RateLimited))
    assert "ServiceTitan is unavailable" in error.message
    assert "HTTP 503" in error.message
    assert "retry later" in error.hint
    assert fake.sleeps == [1.0, 2.0]


def test_max_attempts_bounds_retries(httpx_mock: HTTPXMock, fake):
    for _ in range(3):
        httpx_mock.add_exception(httpx.ConnectError("refused"), url=URL)
    with pytest.raises(TemporaryError) as caught:
        send(fake, retry=policy(fake, max_attempts=3))
    assert "3 attempts" in caught.value.message


def test_a_create_answered_500_is_answer_lost_and_not_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(method="POST", url=URL, status_code=500)
    with pytest.raises(AnswerLost) as caught:
        send(fake, "POST", json={"externalId": "abc"})
    assert caught.value.exit_code == 6
    assert len(httpx_mock.get_requests()) == 1
    assert fake.sleeps == []


def test_a_create_that_timed_out_is_answer_lost_and_not_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_exception(httpx.ReadTimeout("no answer"), method="POST", url=URL)
    with pytest.raises(AnswerLost):
        send(fake, "POST", json={"externalId": "abc"})
    assert len(httpx_mock.get_requests()) == 1


def test_a_create_whose_connection_never_opened_is_retried(httpx_mock: HTTPXMock, fake):
    """Nothing reached the server, so nothing can have been created."""
    httpx_mock.add_exception(httpx.ConnectError("refused"), method="POST", url=URL)
    httpx_mock.add_response(method="POST", url=URL, json={"id": 9})
    assert send(fake, "POST", json={"externalId": "abc"}).json() == {"id": 9}


def test_an_unusable_url_scheme_fails_at_once_as_a_config_error(fake):
    with httpx.Client(verify=TLS) as client:
        request = client.build_request("GET", "htp://api.example.test/x")
        with pytest.raises(ConfigError) as caught:
            send_with_retries(client, request, service="ServiceTitan", policy=policy(fake))
    assert caught.value.exit_code == 3
    assert fake.sleeps == []


def test_a_post_marked_idempotent_is_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(method="POST", url=URL, status_code=500)
    httpx_mock.add_response(method="POST", url=URL, json={"data": []})
    assert send(fake, "POST", json={"filters": {}}, idempotent=True).status_code == 200


def test_client_errors_and_permanent_5xx_are_returned_not_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=400, json={"title": "bad"})
    assert send(fake).status_code == 400
    httpx_mock.add_response(url=URL, status_code=501)
    assert send(fake).status_code == 501
    assert fake.sleeps == []


def test_every_attempt_passes_the_limiter(httpx_mock: HTTPXMock, fake):
    limiter = CountingLimiter()
    httpx_mock.add_response(url=URL, status_code=503)
    httpx_mock.add_response(url=URL, json={})
    send(fake, limiter=limiter)
    assert limiter.acquired == 2


def test_on_rate_limited_sees_each_429_and_may_stop(httpx_mock: HTTPXMock, fake):
    seen = []

    def stop(response: httpx.Response) -> None:
        seen.append(response.status_code)
        raise RateLimited("stop")

    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "1"})
    with pytest.raises(RateLimited):
        send(fake, on_rate_limited=stop)
    assert seen == [429]
    assert fake.sleeps == []


def test_retries_are_logged_without_headers_or_query(httpx_mock: HTTPXMock, fake, caplog):
    caplog.set_level(logging.DEBUG, logger="stsync")
    httpx_mock.add_response(url=URL + "?name=Jane", status_code=503)
    httpx_mock.add_response(url=URL + "?name=Jane", json={})
    with httpx.Client(verify=TLS) as client:
        request = client.build_request("GET", URL, params={"name": "Jane"}, headers={"Authorization": "Bearer SECRET-TOKEN"})
        send_with_retries(client, request, service="ServiceTitan", policy=policy(fake))
    assert "ServiceTitan GET /crm/v2/tenant/7/customers: HTTP 503" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text
    assert "Jane" not in caplog.text


def test_backoff_is_capped_exponential_with_full_jitter(fake):
    full = policy(fake, jitter=lambda: 1.0)
    assert [full.backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    half = policy(fake, jitter=lambda: 0.5)
    assert half.backoff(3) == 1.0
    none = policy(fake, jitter=lambda: 0.0)
    assert none.backoff(5) == 0.0


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Retry-After": "30"}, None, 30.0),
        ({"Retry-After": "1.5"}, None, 1.5),
        ({"Retry-After": formatdate(WALL + 90, usegmt=True)}, None, 90.0),
        ({"Retry-After": formatdate(WALL - 90, usegmt=True)}, None, 0.0),  # already past
        ({}, {"title": "Rate limit is exceeded. Try again in 17 seconds."}, 17.0),
        ({}, {"message": "Too many requests, retry in 1 second"}, 1.0),
        ({"Retry-After": "soon"}, None, None),
        ({}, {"title": "Too Many Requests"}, None),
        ({}, None, None),
    ],
)
def test_retry_after_seconds(headers, body, expected):
    response = httpx.Response(429, headers=headers, json=body) if body is not None else httpx.Response(429, headers=headers)
    assert retry_after_seconds(response, lambda: WALL) == expected


# -- ServiceTitan's maintenance 409 and the gateway's 429 (api/servicetitan.md §11) ----------------

MAINTENANCE = {"type": "https://api.servicetitan.io/errors/conflict", "title": "The service is suspended for maintenance",
               "status": 409, "traceId": "00-1-00", "errors": {}, "data": {}}


def test_a_409_saying_maintenance_is_retried_like_a_503(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=409, json=MAINTENANCE)
    httpx_mock.add_response(url=URL, status_code=409, json=MAINTENANCE)
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [0.5, 1.0]


def test_a_409_that_is_a_real_conflict_is_returned_not_retried(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=409, json={**MAINTENANCE, "title": "Some conflict occurred"})
    assert send(fake).status_code == 409
    assert fake.sleeps == []


def test_a_create_refused_for_maintenance_is_answer_lost_like_a_503(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, method="POST", status_code=409, json=MAINTENANCE)
    with pytest.raises(AnswerLost):
        send(fake, "POST", json={"name": "x"})


def test_maintenance_past_the_budget_is_temporary(httpx_mock: HTTPXMock, fake):
    httpx_mock.add_response(url=URL, status_code=409, json=MAINTENANCE, is_reusable=True)
    with pytest.raises(TemporaryError) as caught:
        send(fake, retry=policy(fake, budget_seconds=10.0))
    assert "suspended for maintenance" in caught.value.message


def test_429_with_the_api_management_body_and_no_retry_after(httpx_mock: HTTPXMock, fake):
    # Azure API Management's own 429: {"statusCode", "message"}, no Retry-After.
    httpx_mock.add_response(url=URL, status_code=429,
                            json={"statusCode": 429, "message": "Rate limit is exceeded. Try again in 4 seconds."})
    httpx_mock.add_response(url=URL, json={"ok": True})
    assert send(fake).status_code == 200
    assert fake.sleeps == [4.0]


def test_429_with_neither_header_nor_body_backs_off_with_jitter_under_a_cap(httpx_mock: HTTPXMock, fake):
    for _ in range(8):
        httpx_mock.add_response(url=URL, status_code=429)
    httpx_mock.add_response(url=URL, json={"ok": True})
    jitters = iter([0.5, 0.25, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    assert send(fake, retry=policy(fake, jitter=lambda: next(jitters), max_delay=8.0)).status_code == 200
    assert fake.sleeps == [0.25, 0.25, 2.0, 0.0, 8.0, 8.0, 8.0, 8.0]


def test_the_tls_context_is_built_ahead_in_a_thread_and_shared(monkeypatch, tmp_path):
    """Connection.open starts the CA bundle's load in a thread of its own; the first client
    gets that very context, and nothing is loaded twice."""
    import ssl
    import threading

    from stsync import http
    from stsync.connection import Connection
    from stsync.storage.config import default_config
    from stsync.storage.paths import ConnectionPaths

    built_by: list[str] = []
    real = ssl.create_default_context

    def recording(*args, **kwargs):
        built_by.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(http, "_ssl_context", None)
    monkeypatch.setattr(http.ssl, "create_default_context", recording)
    started = threading.enumerate()
    connection = Connection.open(ConnectionPaths.for_config(tmp_path / "config.toml"), default_config())
    try:
        [ahead] = [t for t in threading.enumerate() if t.name == "tls-context" and t not in started] or [None]
        if ahead is not None:
            ahead.join(10)
        context = http.shared_ssl_context()
        assert built_by == ["tls-context"]
        assert http.shared_ssl_context() is context
        assert http.load_ssl_context_ahead() is None  # built: nothing more to start
    finally:
        connection.close()
