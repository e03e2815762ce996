"""ServiceTitan auth: the token endpoint, Bearer tokens that expire, the app key, the tenant."""

from __future__ import annotations

import time

import pytest
from contract import assert_problem, raw_post

from stsync.sandbox import Faults


def test_token_endpoint_issues_a_bearer_token_for_client_credentials(sandbox):
    creds = sandbox.credentials
    response = raw_post(
        sandbox.st_auth_url + "/connect/token",
        data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["access_token"].count(".") == 2  # JWT-shaped
    assert sandbox.count_requests(service="auth") == 1


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"client_secret": "cs2.wrong"}, "invalid_client"),
        ({"client_id": "cid.someone-else"}, "invalid_client"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": None}, "invalid_request"),
    ],
)
def test_token_endpoint_refuses_bad_credentials_and_grants(sandbox, form, error):
    creds = sandbox.credentials
    data = {
        "grant_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        **form,
    }
    data = {k: v for k, v in data.items() if v is not None}
    response = raw_post(sandbox.st_auth_url + "/connect/token", data=data)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_token_endpoint_wants_a_form_not_json(sandbox):
    creds = sandbox.credentials
    response = raw_post(
        sandbox.st_auth_url + "/connect/token",
        json={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_api_without_token_or_with_a_bare_token_is_401(st):
    path = st.crm + "/customers"
    bare = st.headers["Authorization"].removeprefix("Bearer ")
    for headers in ({"Authorization": ""}, {"Authorization": bare}, {"Authorization": "Bearer not-a-token"}):
        response = st.get(path, headers=headers)
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_tokens_expire_and_expired_tokens_are_401(sandbox, st):
    path = st.crm + "/customers"
    assert st.get(path).status_code == 200
    sandbox.expire_tokens()
    response = st.get(path)
    assert_problem(response, 401)
    st.headers["Authorization"] = f"Bearer {st.token()}"
    assert st.get(path).status_code == 200


def test_early_token_expiry_fault_kills_a_token_before_its_announced_lifetime(sandbox, st):
    sandbox.set_faults(Faults(token_ttl=0.2))
    st.headers["Authorization"] = f"Bearer {st.token()}"
    assert st.get(st.crm + "/customers").status_code == 200
    time.sleep(0.25)
    response = st.get(st.crm + "/customers")
    assert_problem(response, 401)
    assert "expired" in response.headers["WWW-Authenticate"]


def test_token_uses_fault_kills_a_token_after_that_many_requests(sandbox, st):
    sandbox.set_faults(Faults(token_uses=2))
    st.headers["Authorization"] = f"Bearer {st.token()}"
    assert [st.get(st.crm + "/customers").status_code for _ in range(2)] == [200, 200]
    assert_problem(st.get(st.crm + "/customers"), 401)
    st.headers["Authorization"] = f"Bearer {st.token()}"  # a new token has its own count
    assert st.get(st.crm + "/customers").status_code == 200


def test_token_lifetime_is_configurable(make_sandbox):
    sb = make_sandbox(token_ttl=1)
    creds = sb.credentials
    response = raw_post(
        sb.st_auth_url + "/connect/token",
        data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret},
    )
    assert response.json()["expires_in"] == 1


@pytest.mark.parametrize("app_key", [None, "ak1.wrong"])
def test_missing_or_wrong_app_key_is_403_naming_the_app_key(st, app_key):
    headers = {"Authorization": st.headers["Authorization"]}
    if app_key:
        headers["ST-App-Key"] = app_key
    response = st.http.get(st.crm + "/customers", headers=headers)
    body = assert_problem(response, 403)
    assert "ST-App-Key" in body["title"]


def test_another_tenant_in_the_path_is_403(sandbox, st):
    other = sandbox.credentials.tenant_id + 1
    assert_problem(st.get(f"/crm/v2/tenant/{other}/customers"), 403)
    assert_problem(st.get(f"/jpm/v2/tenant/{other}/jobs"), 403)


def test_unknown_booking_provider_is_404(sandbox, st):
    creds = sandbox.credentials
    for provider in (creds.booking_provider + 1, creds.booking_provider + 1000):  # unknown; another app's tag
        response = st.get(f"{st.crm}/booking-provider/{provider}/bookings")
        assert_problem(response, 404, "booking_provider")


def test_rotated_client_secret_refuses_the_old_secret_but_old_tokens_live_on(sandbox, st):
    old_secret = sandbox.credentials.client_secret
    new_secret = sandbox.rotate_client_secret()
    assert new_secret != old_secret and sandbox.credentials.client_secret == new_secret
    response = st.http.post(
        "/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sandbox.credentials.client_id,
            "client_secret": old_secret,
        },
    )
    assert response.status_code == 400
    assert st.get(st.crm + "/customers").status_code == 200
    assert st.token()


def test_unknown_paths_are_404_and_wrong_methods_405(st):
    assert_problem(st.get(st.crm + "/no-such-thing"), 404)
    assert_problem(st.get(st.crm + "/customers/not-a-number"), 404)
    response = st.delete(st.crm + "/customers")
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]
