"""Rate limits and fault injection trigger as configured."""

from __future__ import annotations

import time

import pytest
from contract import ReferralFactoryApi, ServiceTitanApi, assert_problem, assert_rf_error, booking_body

from stsync.sandbox import Faults


@pytest.fixture
def limited(make_sandbox):
    sb = make_sandbox(st_per_second=5, rf_per_minute=3)
    st, rf = ServiceTitanApi(sb), ReferralFactoryApi(sb)
    yield sb, st, rf
    st.close()
    rf.close()


def test_servicetitan_allows_n_calls_per_second_then_429_with_retry_after(limited):
    sb, st, _ = limited
    statuses = [st.get(st.crm + "/customers", params={"pageSize": 1}).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    response = st.get(st.crm + "/customers")
    body = assert_problem(response, 429)
    assert response.headers["Retry-After"] == "1"
    assert body["title"] == "Rate limit is exceeded. Try again in 1 seconds."
    time.sleep(1.0)
    assert st.get(st.crm + "/customers").status_code == 200
    assert st.token()  # the token endpoint is not counted with the API


def test_referral_factory_allows_n_calls_per_minute_then_429_then_blocks_the_ip(limited):
    sb, _, rf = limited
    sb.block_ip_after_429s = 2
    assert [rf.get("/campaigns").status_code for _ in range(3)] == [200] * 3
    for _ in range(2):
        response = rf.get("/campaigns")
        assert_rf_error(response, 429)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert_rf_error(rf.get("/campaigns"), 429)  # the third refusal: more than two → blocked
    blocked = rf.get("/campaigns")
    assert_rf_error(blocked, 403)
    assert "blocked" in blocked.json()["message"]
    sb.unblock_ips()
    assert rf.get("/campaigns").status_code == 200


def test_burst_429_refuses_the_next_n_servicetitan_calls(sandbox, st, rf):
    sandbox.set_faults(Faults(burst_429=2, retry_after=3))
    first, second = st.get(st.crm + "/customers"), st.get(st.crm + "/customers")
    for response in (first, second):
        assert_problem(response, 429)
        assert response.headers["Retry-After"] == "3"
    assert st.get(st.crm + "/customers").status_code == 200
    assert rf.get("/campaigns").status_code == 200


def test_rf_burst_429_refuses_the_next_n_referral_factory_calls_and_counts_towards_the_block(sandbox, st, rf):
    sandbox.block_ip_after_429s = 2
    sandbox.set_faults(Faults(rf_burst_429=2, retry_after=4))
    assert st.get(st.crm + "/customers").status_code == 200  # ServiceTitan is not touched
    for _ in range(2):
        response = rf.get("/campaigns")
        assert_rf_error(response, 429)
        assert response.headers["Retry-After"] == "4"
    assert rf.get("/campaigns").status_code == 200
    sandbox.set_faults(Faults(rf_burst_429=1))
    assert_rf_error(rf.get("/campaigns"), 429)  # the third 429 from this IP: blocked
    assert "blocked" in rf.get("/campaigns").json()["message"]


def test_error_rate_answers_503_before_any_change(sandbox, st, rf):
    sandbox.set_faults(Faults(error_rate=1.0))
    assert_problem(st.post(st.bookings, json=booking_body()), 503)
    assert sandbox.bookings() == []
    response = rf.create_user(email="new@example.com")
    assert_rf_error(response, 503)
    assert not [u for u in sandbox.rf_users() if u["email"] == "new@example.com"]
    sandbox.set_faults(None)
    assert st.post(st.bookings, json=booking_body()).status_code == 200


def test_commit_then_500_applies_writes_and_loses_the_answer(sandbox, st, rf):
    sandbox.set_faults(Faults(commit_then_500_rate=1.0))
    assert_problem(st.post(st.bookings, json=booking_body(externalId="LOST1")), 500)
    assert [b["externalId"] for b in sandbox.bookings()] == ["LOST1"]
    assert st.get(st.bookings, params={"externalId": "LOST1"}).status_code == 200  # reads are unaffected
    assert_rf_error(rf.create_user(email="lost@example.com"), 500)
    assert [u["email"] for u in sandbox.rf_users() if u["email"] == "lost@example.com"] == ["lost@example.com"]


def test_faults_can_target_paths_and_are_deterministic(sandbox, st):
    sandbox.set_faults(Faults(error_rate=1.0, path_contains="/customers"))
    assert_problem(st.get(st.crm + "/customers"), 503)
    assert st.get(st.bookings).status_code == 200

    def pattern(seed: int) -> list[int]:
        sandbox.set_faults(Faults(error_rate=0.5, seed=seed))
        return [st.get(st.bookings).status_code for _ in range(16)]

    first = pattern(7)
    assert set(first) == {200, 503}
    assert pattern(7) == first
    assert pattern(8) != first


def test_faults_can_target_the_end_of_a_path(sandbox, rf):
    sandbox.set_faults(Faults(commit_then_500_rate=1.0, path_ends_with="/api/v2/users"))
    assert_rf_error(rf.create_user(email="lost@example.com"), 500)  # the create: applied, answer lost
    found = rf.post("/users/search", json={"filters": {"operator": "AND", "value": [
        {"field": "email", "value": "lost@example.com", "operator": "="}]}})
    assert found.status_code == 200 and [u["email"] for u in found.json()["data"]] == ["lost@example.com"]


def test_latency_and_spikes(make_sandbox):
    sb = make_sandbox(latency=0.15)
    st = ServiceTitanApi(sb)
    started = time.monotonic()
    st.get(st.crm + "/customers")
    assert time.monotonic() - started >= 0.15
    sb.set_faults(Faults(spike_rate=1.0, spike_seconds=0.2, path_contains="/export"))
    started = time.monotonic()
    st.get(st.crm + "/customers/custom-fields")
    quick = time.monotonic() - started
    started = time.monotonic()
    st.get(st.crm + "/export/customers")
    assert time.monotonic() - started >= 0.35 > quick
    st.close()


def test_fault_settings_are_checked():
    with pytest.raises(ValueError):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError):
        Faults.from_dict({"eror_rate": 0.1})
    assert Faults.from_dict(Faults(burst_429=2).to_dict()) == Faults(burst_429=2)
