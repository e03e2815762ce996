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
FIELD_TYPES = f"{API}/crm/v2/tenant/{TENANT}/customers/custom-fields?page=1&pageSize=200"
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


def field_types_ok(httpx_mock: HTTPXMock) -> None:
    """The app key and tenant check (as validate runs it): one read of the custom-field types."""
    httpx_mock.add_response(method="GET", url=FIELD_TYPES, json={"page": 1, "pageSize": 200, "hasMore": False, "data": []})


def bookings_ok(httpx_mock: HTTPXMock) -> None:
    field_types_ok(httpx_mock)
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


def test_bad_client_id_or_secret_exits_4_sends_them_nowhere_else_and_stores_nothing(httpx_mock: HTTPXMock, capsys):
    httpx_mock.add_response(method="POST", url=f"{AUTH}/connect/token", status_code=400, json={"error": "invalid_client"})
    # No terminal: the other environment's token server is not asked (a request to it would
    # fail this strict mock), and the message says what to run if they are its credentials.
    assert run(argv()) == 4
    err = " ".join(capsys.readouterr().err.split())  # as read, not as wrapped
    assert "rejected the Client ID / Client Secret" in err and "uses the production environment" in err
    assert "not sent to integration" in err
    assert "if these credentials are for the integration environment, run `stsync connect --environment integration`" in err
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
        httpx_mock.add_response(method="GET", url=FIELD_TYPES, status_code=401,
                                json={"title": "Invalid ST-App-Key", "status": 401, "errors": {}})
    assert run(argv()) == 4
    assert "wrong ST-App-Key" in capsys.readouterr().err
    assert_nothing_stored()


def test_tenant_the_app_is_not_connected_to_is_told_apart(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=FIELD_TYPES, status_code=401, json={"title": "Unauthorized", "status": 401})
    # A 401 on a fresh token: connect refreshes once, then gives up with the tenant named.
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=FIELD_TYPES, status_code=401, json={"title": "Unauthorized", "status": 401})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert f"tenant {TENANT}" in err and "API Application Access" in err
    assert "Booking Provider Value" not in err
    assert_nothing_stored()


def test_a_tenant_the_app_cannot_access_is_not_blamed_on_the_booking_provider(httpx_mock: HTTPXMock, capsys):
    # ServiceTitan answers 403 for a tenant the app may not access — on the bookings path too,
    # where a 403 would read as a wrong Booking Provider Value. validate's order tells them apart.
    token_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=FIELD_TYPES, status_code=403,
                            json={"title": f"The application is not authorized to access tenant {TENANT}.", "status": 403})
    assert run(argv()) == 4
    err = capsys.readouterr().err
    assert f"refused access to tenant {TENANT}" in err
    assert "Booking Provider Value is incorrect" not in err
    assert_nothing_stored()


def test_incorrect_booking_provider_value_uses_the_troubleshooting_wording(httpx_mock: HTTPXMock, capsys):
    token_ok(httpx_mock)
    field_types_ok(httpx_mock)
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



# -- --secrets-from-stdin ---------------------------------------------------------------------


def test_secret_lines_take_names_or_variables_trimmed_and_skip_comments():
    from stsync.services.connect import read_secret_lines

    text = (
        "# provisioning\n\n"
        "  STSYNC_ST_CLIENT_SECRET =  cs2.one  \n"
        "st_app_key='ak1.two'\r\n"
        "export Rf_Api_Key=\"rf three\"\n"
    )
    assert read_secret_lines(text) == {"st_client_secret": "cs2.one", "st_app_key": "ak1.two", "rf_api_key": "rf three"}
    assert read_secret_lines("") == {}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("st_app_key=ak1.a\nst_app_key=ak1.b\n", "st_app_key is given twice (lines 1 and 2)"),
        ("st_app_key=  \n", "line 1: st_app_key has no value"),
        ("TOKEN=tok-secret-value\n", "line 1: 'TOKEN' is not a secret stsync knows"),
        ("just-a-secret-value\n", "line 1: not NAME=value"),
    ],
)
def test_bad_secret_lines_are_usage_errors_that_never_repeat_a_value(text, said):
    from stsync.errors import UsageError
    from stsync.services.connect import read_secret_lines

    with pytest.raises(UsageError) as caught:
        read_secret_lines(text)
    message = f"{caught.value} {caught.value.hint}"
    assert said in message
    for value in ("ak1.b", "tok-secret-value", "just-a-secret-value"):
        assert value not in message


def test_a_secret_given_as_option_and_on_stdin_is_refused(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("st_app_key=ak1.other\n"))
    assert run([*argv("--no-verify"), "--secrets-from-stdin"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert_nothing_stored()


# -- what a failed check rejected ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "error", "typed", "rejected"),
    [
        ("ServiceTitan token", "ServiceTitan rejected the Client ID / Client Secret for x", False, ("st_client_secret",)),
        ("ServiceTitan token", "ServiceTitan rejected the Client ID / Client Secret for x", True, ("client_id", "st_client_secret")),
        ("ServiceTitan token", "… the integration environment accepts them: they were made for integration", False, ("environment",)),
        ("ServiceTitan token", "ServiceTitan's token endpoint x answered HTTP 404", False, ("environment",)),
        ("ServiceTitan app key and tenant access", "ServiceTitan refused GET x: wrong ST-App-Key", False, ("st_app_key",)),
        ("ServiceTitan app key and tenant access", "ServiceTitan refused access to tenant 5 (…)", False, ("tenant_id",)),
        ("Booking Provider Value", "Booking Provider Value is incorrect — if the wrong … (HTTP 404)", False, ("booking_provider",)),
        ("Referral Factory campaign", "Referral Factory rejected the API key (HTTP 401 …)", False, ("rf_api_key",)),
    ],
)
def test_each_rejection_names_the_values_to_ask_again(check, error, typed, rejected):
    from stsync.errors import AuthError
    from stsync.services.connect import rejected_values

    origins = {"client_id": "typed" if typed else "config"}
    assert rejected_values(check, AuthError(error), origins) == rejected  # type: ignore[arg-type]


def test_a_campaign_problem_asks_for_the_campaign_and_a_remote_failure_for_nothing():
    from stsync.errors import ConfigError, TemporaryError
    from stsync.services.connect import rejected_values

    assert rejected_values("Referral Factory campaign", ConfigError("campaign 7 was not found"), {}) == ("campaign_id",)
    assert rejected_values("ServiceTitan token", TemporaryError("ServiceTitan is unavailable"), {}) == ()


# -- the connection's name ----------------------------------------------------------------------


def test_connect_writes_the_connection_and_the_store_into_the_config(capsys):
    assert run(argv("--no-verify")) == 0
    from stsync.storage.config import load_config

    config = load_config(config_path())
    assert config.connection == "default" and config.secrets.store == "file"


def test_a_used_connection_is_not_renamed(capsys):
    assert run(argv("--no-verify")) == 0
    assert run([*argv("--no-verify"), "--connection", "acme"]) == 2
    err = capsys.readouterr().err
    assert "cannot rename it to 'acme'" in err and "connection 'default'" in err


def test_a_new_config_can_be_named(capsys):
    assert run([*argv("--no-verify"), "--connection", "acme-hvac"]) == 0
    from stsync.storage.paths import ConnectionPaths, resolve_config_path

    paths = ConnectionPaths.for_config(resolve_config_path(None))
    assert paths.name == "acme-hvac" and paths.secrets_file.exists()
    assert "connection 'acme-hvac'" in capsys.readouterr().err


# -- where each value is found: the prompts' words are the README's ------------------------------


def test_where_each_value_is_found_is_word_for_word_the_readme():
    import re
    from pathlib import Path

    from stsync import credentials

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Getting your credentials", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and not set(cells[0]) <= {"-", " "}:
            rows[re.sub(r"[*`]", "", cells[0])] = cells[1]
    for value in credentials.CONNECT_VALUES:
        assert rows.get(value.label) == value.where, f"README's row for {value.label!r} says {rows.get(value.label)!r}"


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
    assert httpx_mock.get_requests()[3].headers["Authorization"] == f"Bearer {SECRETS['--rf-api-key']}"
    paths = ConnectionPaths.for_config(resolve_config_path(None))
    stored = json.loads(paths.secrets_file.read_text())
    assert stored == {"rf_api_key": SECRETS["--rf-api-key"], "st_app_key": SECRETS["--app-key"],
                      "st_client_secret": SECRETS["--client-secret"]}
