"""`stsync connect` / `disconnect`: every verification failure with its message and exit code,
and what is (and is not) stored when it fails. Strict HTTP mocks: an unexpected request or an
unused response fails the test."""

from __future__ import annotations

import json
import os
import stat

import pytest
from pytest_httpx import HTTPXMock

from stsync.cli.app import run

AUTH = "https://auth.servicetitan.io"
AUTH_INTEGRATION = "https://auth-integration.servicetitan.io"
API = "https://api.servicetitan.io"
RF = "https://referral-factory.com/api/v2"
TENANT, BP, CAMPAIGN = 1234567, 42, 7
SECRETS = {"--client-secret": "cs2.KNOWN-client-secret", "--app-key": "ak1.KNOWN-app-key", "--rf-api-key": "rf-KNOWN-api-key"}
BOOKINGS = f"{API}/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings?page=1&pageSize=1"
CAMPAIGN_URL = f"{RF}/campaigns/{CAMPAIGN}"
LAUNCHED = {"data": {"id": CAMPAIGN, "code": "spring", "name": "Spring Referrals", "status": "launched"}}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """A request the mocks do not expect must fail the test now, not after the 120 s budget."""
    import functools

    import stsync.http

    monkeypatch.setattr(
        stsync.http, "RetryPolicy", functools.partial(stsync.http.RetryPolicy, budget_seconds=0.5, sleep=lambda s: None)
    )


def argv(*extra: str) -> list[str]:
    base = ["connect", "--environment", "production", "--tenant-id", str(TENANT), "--client-id", "cid.test",
            "--booking-provider", str(BP), "--campaign-id", str(CAMPAIGN), "--secrets-store", "file"]
    for flag, value in SECRETS.items():
        base += [flag, value]
    return [*base, *extra]


def token_ok(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token",
                            json={"access_token": "tok-1", "expires_in": 900, "token_type": "Bearer"})


def bookings_ok(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="GET", url=BOOKINGS, json={"page": 1, "pageSize": 1, "hasMore": False, "data": []})


def config_path() -> str:
    return os.environ["STSYNC_CONFIG"]


def assert_nothing_stored() -> None:
    from stsync.storage.paths import ConnectionPaths, resolve_config_path

    paths = ConnectionPaths.for_config(resolve_config_path(None))
    assert not paths.config.exists(), "a failed connect must not write the config"
    assert not paths.secrets_file.exists(), "a failed connect must not store secrets"


def test_connect_verifies_stores_secrets_0600_and_writes_the_default_mapping(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    bookings_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, json=LAUNCHED)

    assert run(["--json", *argv()]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["created_config"] is True and out["verified"] is True
    assert out["verification"]["campaign_name"] == "Spring Referrals"

    from stsync.storage.config import default_config, load_config
    from stsync.storage.paths import ConnectionPaths, resolve_config_path

    paths = ConnectionPaths.for_config(resolve_config_path(None))
    config = load_config(paths.config)
    assert config.servicetitan.tenant_id == TENANT and config.servicetitan.booking_provider == BP
    assert config.referral_factory.campaign_id == CAMPAIGN
    assert config.leads == default_config().leads
    assert stat.S_IMODE(paths.secrets_file.stat().st_mode) == 0o600
    text = paths.config.read_text()
    for secret in SECRETS.values():
        assert secret not in text

    # The token cache was written by the verification, readable by the owner only.
    assert stat.S_IMODE(paths.token_cache.stat().st_mode) == 0o600


def test_bad_client_id_or_secret_exits_4_and_stores_nothing(httpx_mock: HTTPXMock, capsys):
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token", status_code=400, json={"error": "invalid_client"})
    # The other environment is asked too (the check diagnose and validate run): it refuses them as well.
    httpx_mock.add_response(method="POST", url=f"{AUTH_INTEGRATION}/connect/token", status_code=400, json={"error": "invalid_client"})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert "rejected the Client ID / Client Secret" in err and "uses the production environment" in err
    assert "stsync connect" in err
    assert_nothing_stored()


def test_credentials_made_for_the_other_environment_are_told_apart(httpx_mock: HTTPXMock, capsys):
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token", status_code=400, json={"error": "invalid_client"})
    httpx_mock.add_response(method="POST", url=f"{AUTH_INTEGRATION}/connect/token", json={"access_token": "tok-other", "expires_in": 900})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert "they were made for integration" in err and "stsync connect --environment integration" in err
    assert_nothing_stored()


def test_wrong_environment_token_endpoint_exits_4_naming_the_environment(httpx_mock: HTTPXMock, capsys):
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token", status_code=404, text="Not Found")
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert "token endpoint" in err and "servicetitan.environment" in err
    assert_nothing_stored()


def test_wrong_app_key_is_told_apart(httpx_mock: HTTPXMock, capsys):
    for _ in range(2):  # the 401 renews the token once, then the app key is blamed
        token_ok(httpx_mock)
        httpx_mock.add_response(method="GET", url=BOOKINGS, status_code=401,
                                json={"title": "Invalid ST-App-Key", "status": 401, "errors": {}})
    assert run(argv()) == 4
    assert "wrong ST-App-Key" in capsys.readouterr().err
    assert_nothing_stored()


def test_tenant_the_app_is_not_connected_to_is_told_apart(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=BOOKINGS, status_code=401, json={"title": "Unauthorized", "status": 401})
    # A 401 on a fresh token: connect refreshes once, then gives up with the tenant named.
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=BOOKINGS, status_code=401, json={"title": "Unauthorized", "status": 401})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert f"tenant {TENANT}" in err and "API Application Access" in err
    assert_nothing_stored()


def test_incorrect_booking_provider_value_uses_the_troubleshooting_wording(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=BOOKINGS, status_code=404,
                            json={"title": "Not Found", "status": 404, "errors": {}})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert "Booking Provider Value is incorrect" in err
    assert "Settings → Integrations → API Application Access" in err
    assert_nothing_stored()


def test_bad_referral_factory_key_exits_4(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    bookings_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, status_code=401, json={"message": "Unauthenticated."})
    assert run(argv()) == 4
    assert "Referral Factory rejected the API key" in capsys.readouterr().err
    assert_nothing_stored()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"message": "Not found"}, "campaign 7 was not found"),
        (200, {"data": {"id": CAMPAIGN, "name": "Spring Referrals", "status": "paused"}}, "is paused, not launched"),
    ],
)
def test_missing_or_unlaunched_campaign_exits_3(httpx_mock: HTTPXMock, capsys, status, body, expected):
    token_ok(httpx_mock)
    bookings_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, status_code=status, json=body)
    assert run(argv()) == 3
    assert expected in capsys.readouterr().err
    assert_nothing_stored()


def test_no_verify_sends_nothing_and_says_how_to_check(httpx_mock: HTTPXMock, capsys):
    assert run(argv("--no-verify")) == 0
    assert "stsync validate --online" in capsys.readouterr().err


def test_missing_values_off_a_terminal_are_listed_as_flags(capsys):
    assert run(["connect", "--tenant-id", str(TENANT)]) == 2
    err = capsys.readouterr().err
    for flag in ("--client-id", "--booking-provider", "--campaign-id", "--client-secret", "--app-key", "--rf-api-key"):
        assert flag in err
    assert "--tenant-id" not in err  # given, so not asked for
    assert "STSYNC_ST_CLIENT_SECRET" in err


def test_secrets_from_the_environment_are_used_and_not_copied_into_a_store(httpx_mock: HTTPXMock, monkeypatch, capsys):
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", SECRETS["--client-secret"])
    monkeypatch.setenv("STSYNC_ST_APP_KEY", SECRETS["--app-key"])
    monkeypatch.setenv("STSYNC_RF_API_KEY", SECRETS["--rf-api-key"])
    args = ["connect", "--tenant-id", str(TENANT), "--client-id", "cid.test", "--booking-provider", str(BP),
            "--campaign-id", str(CAMPAIGN), "--no-verify", "--json"]
    assert run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stored_secrets"] == []


def test_reconnect_keeps_the_mapping_and_drops_the_cached_token(httpx_mock: HTTPXMock, capsys):
    assert run(argv("--no-verify")) == 0
    assert run(["map", "action", "leads", "nothing"]) == 0
    from stsync.storage.config import load_config
    from stsync.storage.paths import ConnectionPaths, resolve_config_path

    paths = ConnectionPaths.for_config(resolve_config_path(None))
    before = load_config(paths.config)
    paths.token_cache.write_text("{}")
    assert run([*argv("--no-verify"), "--booking-provider", "43"]) == 0
    after = load_config(paths.config)
    assert after.servicetitan.booking_provider == 43
    assert after.leads == before.leads
    assert not paths.token_cache.exists()
    assert "mapping kept" in capsys.readouterr().err


def test_disconnect_removes_secrets_and_token_but_keeps_config(capsys):
    assert run(argv("--no-verify")) == 0
    from stsync.storage.paths import ConnectionPaths, resolve_config_path
    from stsync.storage.secrets import SecretStore

    paths = ConnectionPaths.for_config(resolve_config_path(None))
    paths.token_cache.write_text("{}")
    assert run(["disconnect"]) == 2  # off a terminal, --yes is required
    assert run(["--json", "disconnect", "--yes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["removed_secrets"]) == ["rf_api_key", "st_app_key", "st_client_secret"]
    assert out["removed_token"] is True
    assert paths.config.exists()
    store = SecretStore(paths)
    assert store.get("st_client_secret") is None



def test_secrets_given_with_a_trailing_cr_lf_are_verified_and_stored_without_it(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    bookings_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, json=LAUNCHED)
    given = argv()
    padded = [f"{value}\r\n" if flag in SECRETS else value for flag, value in zip(["", *given], given, strict=False)]
    assert run(padded) == 0, capsys.readouterr().err

    from stsync.storage.paths import ConnectionPaths, resolve_config_path

    token_request = httpx_mock.get_requests()[0]
    assert f"client_secret={SECRETS['--client-secret']}&" in token_request.content.decode() + "&"
    assert httpx_mock.get_requests()[1].headers["ST-App-Key"] == SECRETS["--app-key"]
    assert httpx_mock.get_requests()[2].headers["Authorization"] == f"Bearer {SECRETS['--rf-api-key']}"
    paths = ConnectionPaths.for_config(resolve_config_path(None))
    stored = json.loads(paths.secrets_file.read_text())
    assert stored == {"rf_api_key": SECRETS["--rf-api-key"], "st_app_key": SECRETS["--app-key"],
                      "st_client_secret": SECRETS["--client-secret"]}
