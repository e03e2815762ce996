"""Contract-test helpers: raw HTTP clients (httpx, not stsync's clients) for a running sandbox,
and checks of the real error and response shapes."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from stsync.sandbox.schemas import response_validator

# httpx builds an SSL context per client (~50 ms) even for plain http: build one, share it.
TLS = ssl.create_default_context()


def raw_get(url: str, **kwargs: Any) -> httpx.Response:
    """One request outside any client (no default headers): what a stranger would send."""
    return httpx.get(url, verify=TLS, **kwargs)


def raw_post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=TLS, **kwargs)


def assert_schema(name: str, instance: Any) -> None:
    """``instance`` is a valid ``name`` as ServiceTitan's spec states it."""
    errors = sorted(response_validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"not a valid {name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


class ServiceTitanApi:
    """ServiceTitan as a careful client calls it: Bearer token, ST-App-Key, tenant in the path."""

    def __init__(self, sb) -> None:
        self.sb = sb
        creds = sb.credentials
        self.http = httpx.Client(base_url=sb.base_url, timeout=10, verify=TLS)
        self.crm = f"/crm/v2/tenant/{creds.tenant_id}"
        self.jpm = f"/jpm/v2/tenant/{creds.tenant_id}"
        self.bookings = f"{self.crm}/booking-provider/{creds.booking_provider}/bookings"
        self.headers = {"Authorization": f"Bearer {self.token()}", "ST-App-Key": creds.app_key}

    def token(self, **overrides: str) -> str:
        creds = self.sb.credentials
        form = {
            "grant_type": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            **overrides,
        }
        response = self.http.post("/connect/token", data=form)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def create_booking(self, **fields: Any) -> dict:
        response = self.post(self.bookings, json=booking_body(**fields))
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.http.close()


def booking_body(**fields: Any) -> dict:
    body = {
        "source": "Referral Factory",
        "name": "Jane Doe",
        "summary": "Referral",
        "isFirstTimeClient": True,
        "externalId": "ueONFmUp",
        "customerType": "Residential",
        "contacts": [{"type": "Email", "value": "jane@example.com"}, {"type": "MobilePhone", "value": "8185550100"}],
        "isSendConfirmationEmail": False,
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


def assert_problem(response: httpx.Response, status: int, *keys: str) -> dict:
    """An ApiErrorResponse with ``status`` whose ``errors`` name every one of ``keys``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert_schema("ApiErrorResponse", body)
    assert body["status"] == status
    for key in keys:
        assert key in body["errors"], f"{key!r} not in {body['errors']}"
    return body


class ReferralFactoryApi:
    def __init__(self, sb) -> None:
        self.sb = sb
        self.http = httpx.Client(
            base_url=sb.rf_api_url,
            timeout=10,
            verify=TLS,
            headers={"Authorization": f"Bearer {sb.credentials.rf_api_key}", "Accept": "application/json"},
        )

    def __getattr__(self, name: str) -> Any:  # get, post, put, delete, request
        return getattr(self.http, name)

    def create_user(self, **fields: Any) -> httpx.Response:
        body = {
            "campaign_id": self.sb.credentials.campaign_id,
            "first_name": "Jane",
            "email": "jane@example.com",
            **fields,
        }
        return self.http.post("/users", json=body)

    def close(self) -> None:
        self.http.close()


def assert_rf_error(response: httpx.Response, status: int, *fields: str) -> dict:
    """Referral Factory's ``{code, message, errors: {field: [{field, message}]}}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("message"), str) and body["message"]
    assert body.get("code") == status
    for field in fields:
        items = body["errors"][field]
        assert items and all(isinstance(i, dict) and i["field"] == field and i["message"] for i in items), body
    return body
