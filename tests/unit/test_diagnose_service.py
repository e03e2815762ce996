"""`stsync diagnose`: every check of the troubleshooting guide, one referral's story and the
support bundle — against strict HTTP mocks (an unexpected request or an unused response fails
the test), a real ledger and the isolated keyring."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock

from stsync.checks.activity import check_run_locks
from stsync.checks.result import Check, NotRun
from stsync.cli.app import run
from stsync.errors import ServiceTitanApiError
from stsync.services.bundle import bundle_paths, write_bundle
from stsync.services.diagnose import diagnose
from stsync.storage.config import Config, default_config
from stsync.storage.config_writer import save_config
from stsync.storage.ledger import Ledger
from stsync.storage.locks import RunLock
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore

AUTH = "https://auth.servicetitan.io"
AUTH_INTEGRATION = "https://auth-integration.servicetitan.io"
API = "https://api.servicetitan.io"
RF = "https://referral-factory.com/api/v2"
TENANT, BP, CAMPAIGN = 1234567, 42, 7
SECRETS = {
    "STSYNC_ST_CLIENT_SECRET": "cs2.DIAG-client-secret",
    "STSYNC_ST_APP_KEY": "ak1.DIAG-app-key",
    "STSYNC_RF_API_KEY": "rf-DIAG-api-key",
}
TOKEN = "tok-DIAG-access-token"
TOKEN_URL = f"{AUTH}/connect/token"
FIELD_TYPES_URL = f"{API}/crm/v2/tenant/{TENANT}/customers/custom-fields?page=1&pageSize=200"
BOOKINGS = f"{API}/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings"
PROVIDER_CHECK_URL = f"{BOOKINGS}?page=1&pageSize=1"
CAMPAIGNS_URL = f"{RF}/campaigns?page=1&per_page=250"
CAMPAIGN_URL = f"{RF}/campaigns/{CAMPAIGN}"
SEARCH_URL = f"{RF}/users/search?page=1&per_page=250"
TEXT_TYPES = [{"id": 101, "name": "Referral Link", "dataType": "Text"}, {"id": 102, "name": "Referral Code", "dataType": "Text"}]
VALIDATION_ERROR = {
    "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    "title": "One or more validation errors occurred.",
    "status": 400,
    "traceId": "00-abc-01",
    "errors": {"Name": ["The Name field is required."]},
    "data": {},
}


# == fixtures and helpers =======================================================================


@pytest.fixture
def config_path(monkeypatch) -> Path:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = Path(os.environ["STSYNC_CONFIG"])
    save_config(default_config(tenant_id=TENANT, client_id="cid.diag", booking_provider=BP, campaign_id=CAMPAIGN), path)
    return path


@pytest.fixture
def paths(config_path: Path) -> ConnectionPaths:
    return ConnectionPaths.for_config(config_path)


def edit(path: Path, **sections) -> None:
    data = default_config(tenant_id=TENANT, client_id="cid.diag", booking_provider=BP, campaign_id=CAMPAIGN).model_dump(
        by_alias=True, exclude_none=True
    )
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    save_config(Config.model_validate(data), path)


def by_name(report) -> dict[str, Check]:
    return {check.name: check for check in report.checks}


def not_run(report) -> dict[str, NotRun]:
    return {item.name: item for item in report.not_run}


def st_token(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(method="POST", url=TOKEN_URL, json={"access_token": TOKEN, "expires_in": 900})


def st_ok(httpx_mock: HTTPXMock, *, types=TEXT_TYPES, provider_status: int = 200) -> None:
    st_token(httpx_mock)
    httpx_mock.add_response(method="GET", url=FIELD_TYPES_URL, json={"page": 1, "pageSize": 200, "hasMore": False, "data": types})
    if provider_status == 200:
        httpx_mock.add_response(method="GET", url=PROVIDER_CHECK_URL, json={"page": 1, "pageSize": 1, "hasMore": False, "data": []})
    else:
        httpx_mock.add_response(method="GET", url=PROVIDER_CHECK_URL, status_code=provider_status, json={"title": "Not Found", "status": provider_status})


def rf_ok(httpx_mock: HTTPXMock, *, status: str = "launched") -> None:
    campaign = {"id": CAMPAIGN, "name": "Spring Referrals", "status": status}
    httpx_mock.add_response(method="GET", url=CAMPAIGNS_URL, json={"data": [campaign]})
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, json={"data": campaign})


def record_failed_push(ledger: Ledger, *, code: str, email: str, error: dict) -> None:
    attempt = ledger.record_push_intent(code, kind="lead", email=email, name="Jane", rf_user_id=501, referral_code=code)
    ledger.record_push_result(attempt, outcome="failed", error=error)


def st_validation_error() -> dict:
    return ServiceTitanApiError(
        "ServiceTitan answered HTTP 400 to POST /bookings: One or more validation errors occurred.",
        status=400,
        title=VALIDATION_ERROR["title"],
        errors=VALIDATION_ERROR["errors"],
        trace_id=VALIDATION_ERROR["traceId"],
        method="POST",
        path=f"/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings",
    ).to_dict()


# == offline: the troubleshooting guide's common causes ==========================================


def test_a_healthy_connection_passes_offline_without_a_request(paths: ConnectionPaths):
    report = diagnose(paths, paths.config, offline=True)  # strict mocks: any request fails the test
    assert report.exit_code == 0, [c for c in report.checks if not c.passed]
    assert all(check.status == "pass" for check in report.checks)
    names = by_name(report)
    for expected in ("Config file", "Secret store", "Secrets", "Leads: when lead joins campaign", "Leads: field mapping",
                     "Qualification rule", "Return fields", "Runs in progress", "Last push run", "Push failures"):
        assert expected in names
    assert {item.reason for item in report.not_run} == {"--offline"}
    assert "ServiceTitan token" in not_run(report) and "Every check passes" in report.hint


def test_nothing_to_action_is_a_fail_with_the_guides_words_and_fix(config_path: Path, paths: ConnectionPaths):
    edit(config_path, leads={"action": "nothing"})
    report = diagnose(paths, config_path, offline=True)
    check = by_name(report)["Leads: when lead joins campaign"]
    assert check.status == "fail"
    assert check.message.startswith('"Nothing to action" is selected')
    assert check.fix == "stsync map action leads create-booking"
    assert report.exit_code == 1  # a config FAIL that stopped nothing else


def test_a_required_field_unmapped_is_setup_required_with_the_list(config_path: Path, paths: ConnectionPaths):
    fields = default_config().leads.model_dump(by_alias=True)["fields"]
    del fields["external_id"], fields["summary"]
    edit(config_path, leads={"fields": fields})
    check = by_name(diagnose(paths, config_path, offline=True))["Leads: field mapping"]
    assert check.status == "fail"
    assert "Setup Required" in check.message
    assert "Summary (summary)" in check.message and "External Id (external_id)" in check.message
    assert check.fix.startswith("stsync map set summary --from")


def test_no_config_exits_3_and_says_connect(paths: ConnectionPaths):
    paths.config.unlink()
    report = diagnose(paths, paths.config, offline=False)  # nothing online can run: no request
    config = by_name(report)["Config file"]
    assert config.status == "fail" and "stsync connect" in config.fix
    assert not_run(report)["ServiceTitan token"].blocked_by == "Config file"
    assert report.exit_code == 3


def test_missing_secret_blocks_the_live_checks_and_exits_3(paths: ConnectionPaths, monkeypatch, httpx_mock: HTTPXMock):
    monkeypatch.delenv("STSYNC_ST_APP_KEY")
    rf_ok(httpx_mock)  # Referral Factory still answers: its key is there
    report = diagnose(paths, paths.config, offline=False)
    secrets = by_name(report)["Secrets"]
    assert secrets.status == "fail" and "STSYNC_ST_APP_KEY" in secrets.message
    skipped = not_run(report)["ServiceTitan token"]
    assert skipped.blocked_by == "Secrets" and "st_app_key" in skipped.reason
    assert by_name(report)["Referral Factory campaign"].status == "pass"
    assert report.exit_code == 3


def test_unusable_keyring_names_the_backend_and_the_headless_remedies(config_path: Path, paths: ConnectionPaths, monkeypatch):
    store = SecretStore(paths)
    for env_name in SECRETS:
        monkeypatch.delenv(env_name)
    store.set("st_client_secret", SECRETS["STSYNC_ST_CLIENT_SECRET"])
    store.set("st_app_key", SECRETS["STSYNC_ST_APP_KEY"])
    store.set("rf_api_key", SECRETS["STSYNC_RF_API_KEY"])
    assert by_name(diagnose(paths, config_path, offline=True))["Secret store"].status == "pass"

    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")  # headless cron: the keyring cannot be opened
    report = diagnose(paths, config_path, offline=False)  # nothing online can run: no request
    check = by_name(report)["Secret store"]
    assert check.status == "fail"
    assert "isolated_keyring.FileKeyring" in check.message and "locked" in check.message
    for remedy in ("STSYNC_ST_CLIENT_SECRET", "environment variables", "keyring", "--secrets-store file"):
        assert remedy in check.fix
    assert not_run(report)["Secrets"].blocked_by == "Secret store"
    assert not_run(report)["ServiceTitan token"].blocked_by == "Secret store"
    assert report.exit_code == 3


def test_unusable_keyring_is_fine_when_the_environment_has_every_secret(paths: ConnectionPaths, monkeypatch):
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")
    check = by_name(diagnose(paths, paths.config, offline=True))["Secret store"]
    assert check.status == "pass" and "every secret is found elsewhere" in check.message and "env" in check.message


def test_a_secrets_file_readable_by_others_warns(paths: ConnectionPaths, monkeypatch):
    monkeypatch.delenv("STSYNC_RF_API_KEY")
    SecretStore(paths).set("rf_api_key", SECRETS["STSYNC_RF_API_KEY"], store="file")
    assert by_name(diagnose(paths, paths.config, offline=True))["Secret store"].status == "pass"
    paths.secrets_file.chmod(0o644)
    check = by_name(diagnose(paths, paths.config, offline=True))["Secret store"]
    assert check.status == "warn" and "0o644" in check.message and check.fix == f"chmod 600 {paths.secrets_file}"


# == online ======================================================================================


def test_online_all_good_exits_0(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    rf_ok(httpx_mock)
    report = diagnose(paths, paths.config, offline=False)
    assert report.exit_code == 0, [c for c in report.checks if not c.passed]
    assert not report.not_run
    for name in ("ServiceTitan token", "ServiceTitan app key and tenant access", "Booking Provider Value",
                 "Return fields in ServiceTitan", "Referral Factory API key", "Referral Factory campaign"):
        assert by_name(report)[name].status == "pass"


def test_wrong_booking_provider_value_is_the_guides_fail_and_fix(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock, provider_status=404)
    rf_ok(httpx_mock)
    report = diagnose(paths, paths.config, offline=False)
    check = by_name(report)["Booking Provider Value"]
    assert check.status == "fail"
    assert check.message.startswith("Booking Provider Value is incorrect")
    assert "Settings → Integrations → API Application Access" in check.fix and "--booking-provider" in check.fix
    assert report.hint.startswith("Authentication failed") and "stsync connect" in report.hint


def test_revoked_client_secret_fails_the_token_and_says_reconnect(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=400, json={"error": "invalid_client"})
    # Nobody to ask: the other environment is not asked (the strict mock would fail a request to it).
    rf_ok(httpx_mock)
    report = diagnose(paths, paths.config, offline=False)
    token = by_name(report)["ServiceTitan token"]
    assert token.status == "fail" and token.exit_code == 4
    assert "rejected the Client ID / Client Secret" in token.message
    assert "stsync connect" in token.fix
    assert not_run(report)["Booking Provider Value"].blocked_by == "ServiceTitan token"
    assert by_name(report)["Referral Factory campaign"].status == "pass"
    assert report.exit_code == 4 and "stsync connect" in report.hint


def test_credentials_of_the_other_environment_are_told_apart(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=400, json={"error": "invalid_client"})
    httpx_mock.add_response(method="POST", url=f"{AUTH_INTEGRATION}/connect/token", json={"access_token": "tok-other", "expires_in": 900})
    rf_ok(httpx_mock)
    questions: list[str] = []
    token = by_name(diagnose(paths, paths.config, offline=False, consent=lambda q: questions.append(q) or True))["ServiceTitan token"]
    assert len(questions) == 1 and "sends them to the integration token server" in questions[0]
    assert token.status == "fail"
    assert "they were made for integration" in token.message
    assert token.fix.endswith("`stsync connect --environment integration`")


def test_no_other_environment_is_asked_when_the_auth_url_is_overridden(paths: ConnectionPaths, httpx_mock: HTTPXMock, monkeypatch):
    monkeypatch.setenv("STSYNC_ST_AUTH_URL", "http://127.0.0.1:9/auth")
    httpx_mock.add_response(method="POST", url="http://127.0.0.1:9/auth/connect/token", status_code=400, json={"error": "invalid_client"})
    rf_ok(httpx_mock)
    questions: list[str] = []
    token = by_name(diagnose(paths, paths.config, offline=False, consent=lambda q: questions.append(q) or True))["ServiceTitan token"]
    assert questions == []  # nobody is even asked: the override names the one server
    assert token.status == "fail" and "Client ID / Client Secret" in token.message  # and no second token request


def test_wrong_app_key_is_told_apart(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=FIELD_TYPES_URL, status_code=403,
        json={"title": "The ST-App-Key header is missing or is not a valid app key for this application.", "status": 403},
    )
    rf_ok(httpx_mock)
    report = diagnose(paths, paths.config, offline=False)
    check = by_name(report)["ServiceTitan app key and tenant access"]
    assert check.status == "fail" and "ST-App-Key" in check.message and check.exit_code == 4
    assert by_name(report)["ServiceTitan token"].status == "pass"
    assert not_run(report)["Booking Provider Value"].blocked_by == check.name
    assert report.exit_code == 4


def test_a_tenant_the_app_cannot_access_is_told_apart(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_token(httpx_mock)
    httpx_mock.add_response(
        method="GET", url=FIELD_TYPES_URL, status_code=403,
        json={"title": f"The application is not authorized to access tenant {TENANT}.", "status": 403},
    )
    rf_ok(httpx_mock)
    check = by_name(diagnose(paths, paths.config, offline=False))["ServiceTitan app key and tenant access"]
    assert check.status == "fail" and f"refused access to tenant {TENANT}" in check.message
    assert "ST-App-Key" not in check.message and "API Application Access" in check.fix


def test_paused_campaign_fails_with_launch_fix(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    rf_ok(httpx_mock, status="paused")
    report = diagnose(paths, paths.config, offline=False)
    check = by_name(report)["Referral Factory campaign"]
    assert check.status == "fail" and "paused" in check.message and "launch" in check.fix
    assert report.exit_code == 1


def test_return_field_missing_in_servicetitan_fails(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock, types=[TEXT_TYPES[1]])
    rf_ok(httpx_mock)
    check = by_name(diagnose(paths, paths.config, offline=False))["Return fields in ServiceTitan"]
    assert check.status == "fail" and "'Referral Link'" in check.message
    assert "Text" in check.fix


def test_a_remote_that_is_down_is_a_fail_not_a_traceback(paths: ConnectionPaths, httpx_mock: HTTPXMock, monkeypatch):
    import httpx

    monkeypatch.setattr("stsync.connection.CHECK_RETRY_BUDGET_SECONDS", 0)
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), method="POST", url=TOKEN_URL, is_reusable=True)
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), method="GET", url=CAMPAIGNS_URL, is_reusable=True)
    report = diagnose(paths, paths.config, offline=False)
    assert by_name(report)["ServiceTitan token"].status == "fail"
    assert by_name(report)["Referral Factory API key"].status == "fail"
    assert report.exit_code == 1


# == the ledger: failures, runs, locks ==========================================================


def test_push_failures_show_the_email_and_servicetitans_exact_words(paths: ConnectionPaths):
    with Ledger.open(paths.ledger) as ledger:
        record_failed_push(ledger, code="JANE01", email="jane@example.com", error=st_validation_error())
        record_failed_push(ledger, code="BOB02", email="bob@example.com", error=st_validation_error())
        attempt = ledger.record_push_intent("BOB02", kind="lead", email="bob@example.com", name="Bob")
        ledger.record_push_result(attempt, outcome="created", booking_id=555)  # fixed and booked since
    report = diagnose(paths, paths.config, offline=True)
    check = by_name(report)["Push failures"]
    assert check.status == "fail"
    assert "1 referral(s) failed to book" in check.message
    assert "jane@example.com (JANE01): HTTP 400: One or more validation errors occurred. — Name: The Name field is required." in check.message
    assert "bob@example.com" not in check.message
    assert "stsync push-lead --code JANE01" in check.fix and "diagnose --email jane@example.com" in check.fix
    assert [f.email for f in report.recent_failures] == ["jane@example.com"]
    assert report.recent_failures[0].error["trace_id"] == "00-abc-01"


def test_creates_in_doubt_are_a_warning_apart_from_the_failures(paths: ConnectionPaths):
    with Ledger.open(paths.ledger) as ledger:
        attempt = ledger.record_push_intent("ANN01", kind="lead", email="ann@example.com", name="Ann")
        ledger.record_push_result(attempt, outcome="unknown", error={
            "type": "CreateInDoubt", "message": "unknown — will be checked again: HTTP 500", "in_doubt_since": "2025-01-01T00:00:00Z",
        })
        ledger.upsert_referrer(44, state="unknown", email="bob@example.com", error={"type": "CreateInDoubt", "message": "m"})
    names = by_name(diagnose(paths, paths.config, offline=True))
    assert names["Push failures"].status == "pass"  # a create in doubt is no failure
    doubt = names["Creates in doubt"]
    assert doubt.status == "warn"
    assert "1 booking(s) (externalId ANN01)" in doubt.message and "1 referrer(s) of customers 44" in doubt.message
    assert "unknown — will be checked again" in doubt.message and "nothing to fix" in doubt.fix

    story = diagnose(paths, paths.config, offline=True, email="ann@example.com").story
    assert any("unknown — will be checked again: HTTP 500" in line for line in story.summary)
    assert any("nothing to fix" in step and "ANN01" in step for step in story.next_steps)
    bob = diagnose(paths, paths.config, offline=True, email="bob@example.com").story
    assert any("customer 44 → referrer (unknown — will be checked again)" in line for line in bob.summary)


def test_customers_refused_for_their_own_custom_field_are_listed_with_the_fix(paths: ConnectionPaths):
    refusal = {
        "type": "CustomFieldRefused", "stage": "return_fields", "message": "ServiceTitan refuses to update customer 12 …",
        "hint": "fix it in ServiceTitan (customer 12: 'Preferred Technician'), then `stsync sync-customers --retry-failed`",
        "fields": [{"type_id": 104, "name": "Preferred Technician", "value": "Chris", "problem": "not one of the field's options"}],
    }
    with Ledger.open(paths.ledger) as ledger:
        ledger.upsert_referrer(12, state="created", rf_user_id=9, email="chris.fan@example.com", error=refusal)
    check = by_name(diagnose(paths, paths.config, offline=True))["Customers' own custom fields"]
    assert check.status == "warn"
    assert "customer 12: Preferred Technician = 'Chris' (not one of the field's options)" in check.message
    assert "--retry-failed" in check.fix
    story = diagnose(paths, paths.config, offline=True, email="chris.fan@example.com").story
    assert any("--retry-failed" in step for step in story.next_steps)


def test_last_runs_report_their_outcome(paths: ConnectionPaths):
    with Ledger.open(paths.ledger) as ledger:
        ok = ledger.start_run("push", "push-lead --new")
        ledger.finish_run(ok, "ok", {"created": 3})
        failed = ledger.start_run("sync", "sync-customers --once")
        ledger.finish_run(failed, "failed", {"created": 1}, error="ServiceTitan answered HTTP 403: tenant not accessible")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        killed = ledger.start_run("qualify", "qualify")
        with ledger.transaction() as tx:
            tx.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, killed))
    names = by_name(diagnose(paths, paths.config, offline=True))
    assert names["Last push run"].status == "pass" and "created 3" in names["Last push run"].message
    sync = names["Last customer sync"]
    assert sync.status == "fail" and "tenant not accessible" in sync.message and "sync-customers" in sync.fix
    assert names["Last qualify run"].status == "warn" and "interrupted" in names["Last qualify run"].message


def test_a_damaged_ledger_fails_and_the_checks_that_read_it_are_not_run(paths: ConnectionPaths):
    paths.ensure_state()
    paths.ledger.write_bytes(b"not a SQLite database, " * 100)
    report = diagnose(paths, paths.config, offline=True)
    ledger = by_name(report)["Ledger"]
    assert ledger.status == "fail" and "cannot be opened" in ledger.message and "move it aside" in ledger.fix
    for name in ("Last push run", "Last customer sync", "Last qualify run", "Push failures"):
        assert name not in by_name(report) and not_run(report)[name].blocked_by == "Ledger"
    assert by_name(report)["Runs in progress"].status == "pass"  # the locks do not need the ledger
    assert report.exit_code == 3  # a configuration failure that kept other checks from running


def test_the_lock_holder_is_named_and_a_long_hold_warns(paths: ConnectionPaths):
    with RunLock(paths, "sync", command="sync-customers --ongoing"):
        check = by_name(diagnose(paths, paths.config, offline=True))["Runs in progress"]
        assert check.status == "pass"
        assert "sync-customers --ongoing" in check.message and f"pid {os.getpid()}" in check.message
        later = check_run_locks(paths, now=time.time() + 7 * 3600)
        assert later.status == "warn" and f"kill {os.getpid()}" in later.fix
    assert "no stsync run holds a lock" in check_run_locks(paths).message
    # `stsync run` (like serve) holds its lock for as long as it runs: months are not stuck.
    with RunLock(paths, "run", command="run --webhooks"):
        months = check_run_locks(paths, now=time.time() + 90 * 86400)
        assert months.status == "pass" and "run: `run --webhooks`" in months.message


# == --email ====================================================================================


def test_email_story_offline_shows_every_attempt_and_the_exact_error(paths: ConnectionPaths):
    with Ledger.open(paths.ledger) as ledger:
        record_failed_push(ledger, code="JANE01", email="Jane@Example.com", error=st_validation_error())
    report = diagnose(paths, paths.config, offline=True, email="jane@example.com")
    story = report.story
    assert story.seen and story.referral_factory_note == "not looked up (--offline)"
    [push] = story.pushes
    assert push.state == "failed" and push.attempts[0].error["errors"] == {"Name": ["The Name field is required."]}
    text = "\n".join(story.summary)
    assert "One or more validation errors occurred. — Name: The Name field is required." in text
    assert any("stsync push-lead --code JANE01" in step for step in story.next_steps)


def test_email_story_tells_a_held_referral_and_until_when(paths: ConnectionPaths):
    edit(paths.config, leads={"qualification": {"rule": "job_status", "job_status": "Completed", "hold_days": 14}})
    with Ledger.open(paths.ledger) as ledger:
        attempt = ledger.record_push_intent("JANE01", kind="lead", email="jane@example.com", name="Jane", referral_code="JANE01")
        ledger.record_push_result(attempt, outcome="created", booking_id=5551)
        ledger.update_tracking("JANE01", booking_status="Converted", job_id=7100001, job_status="Completed")
        ledger.set_held_until("JANE01", "2025-07-14T10:00:00.000Z")
    report = diagnose(paths, paths.config, offline=True, email="jane@example.com")
    [push] = report.story.pushes
    assert push.held_until == "2025-07-14T10:00:00.000Z"
    text = "\n".join(report.story.summary)
    assert "Held until 2025-07-14T10:00:00.000Z" in text and "14-day hold" in text
    assert "held 14 days" in by_name(report)["Qualification rule"].message
    held = by_name(report)["Held referrals"]
    assert held.status == "pass" and "1 referral(s) held" in held.message
    assert "jane@example.com, held until 2025-07-14 10:00 UTC" in held.message


def test_email_story_online_tells_rf_user_referrer_booking_and_job(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    with Ledger.open(paths.ledger) as ledger:
        attempt = ledger.record_push_intent("JANE01", kind="lead", email="jane@example.com", name="Jane", rf_user_id=501, referral_code="JANE01")
        ledger.record_push_result(attempt, outcome="created", booking_id=5551)
    st_ok(httpx_mock)
    rf_ok(httpx_mock)
    user = {"id": 501, "campaign_id": CAMPAIGN, "referrer_id": 400, "first_name": "Jane", "email": "jane@example.com",
            "code": "JANE01", "type": "person_invited", "signed_up_at": "2026-11-01", "qualified_at": None}
    httpx_mock.add_response(method="POST", url=SEARCH_URL, json={"data": [user]})
    httpx_mock.add_response(method="GET", url=f"{RF}/users/400", json={"data": {
        "id": 400, "campaign_id": CAMPAIGN, "first_name": "John", "email": "john@example.com", "code": "JOHN", "type": "person_referring"}})
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}/5551", json={
        "id": 5551, "source": "Spring", "name": "Jane", "status": "Converted", "externalId": "JANE01", "bookingProviderId": BP, "jobId": 7100001})
    httpx_mock.add_response(method="GET", url=f"{API}/jpm/v2/tenant/{TENANT}/jobs/7100001", json={
        "id": 7100001, "jobNumber": "7100001", "customerId": 1, "jobStatus": "InProgress", "bookingId": 5551})
    report = diagnose(paths, paths.config, offline=False, email="jane@example.com")
    story = report.story
    assert story.referral_factory.type == "person_invited" and story.referral_factory.qualified is False
    assert story.referral_factory.referrer.email == "john@example.com"
    assert story.pushes[0].servicetitan.job.status == "InProgress"
    text = "\n".join(story.summary)
    assert "referred lead #501" in text and "referred by John <john@example.com>" in text and "not qualified (Pending)" in text
    assert "booking 5551 is Converted; job 7100001 is InProgress" in text
    # The JSON shape of `diagnose --json --email` (and of the bundle's story), key for key.
    data = json.loads(json.dumps(story.to_dict(), default=str))
    assert list(data) == ["email", "seen", "referral_factory", "referral_factory_note", "pushes", "referrer_record",
                          "deliveries", "summary", "next_steps"]
    assert list(data["referral_factory"]) == ["id", "campaign_id", "type", "type_label", "first_name", "email", "code", "url",
                                              "source", "signed_up_at", "qualified", "qualified_at", "referrer_id", "referrer"]
    assert data["referral_factory"]["referrer"] == {"id": 400, "first_name": "John", "email": "john@example.com", "code": "JOHN"}
    [push] = data["pushes"]
    assert list(push) == ["external_id", "kind", "email", "name", "rf_user_id", "referral_code", "state", "booking_id",
                          "booking_status", "job_id", "job_status", "final", "qualification", "qualified_at", "first_seen", "held_until",
                          "attempts", "qualifications", "servicetitan", "servicetitan_note"]
    assert list(push["attempts"][0]) == ["at", "outcome", "booking_id", "error_text", "error", "run_id"]
    assert list(push["servicetitan"]) == ["booking_id", "status", "job_id", "dismissing_reason_id", "modified_on", "job"]
    assert push["servicetitan"]["job"] == {"id": 7100001, "number": "7100001", "status": "InProgress", "completed_on": None}


def test_email_never_seen_says_what_to_check(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    rf_ok(httpx_mock)
    httpx_mock.add_response(method="POST", url=SEARCH_URL, json={"data": []})
    story = diagnose(paths, paths.config, offline=False, email="nobody@example.com").story
    assert not story.seen
    assert "never seen" in story.summary[0]
    steps = " ".join(story.next_steps)
    assert "campaign 7" in steps and "push-lead --new" in steps


def test_a_lead_in_the_campaign_that_was_never_pushed(paths: ConnectionPaths, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    rf_ok(httpx_mock)
    user = {"id": 502, "campaign_id": CAMPAIGN, "first_name": "Ann", "email": "ann@example.com", "code": "ANN03",
            "type": "person_invited", "signed_up_at": "2026-11-02"}
    httpx_mock.add_response(method="POST", url=SEARCH_URL, json={"data": [user]})
    httpx_mock.add_response(method="GET", url=f"{BOOKINGS}?externalId=ANN03&page=1&pageSize=200", json={"hasMore": False, "data": []})
    story = diagnose(paths, paths.config, offline=False, email="ann@example.com").story
    assert story.seen and "stsync never pushed this lead." in story.summary
    assert "push it now: `stsync push-lead --code ANN03`" in story.next_steps


# == the bundle and the CLI =====================================================================


def test_bundle_paths():
    assert bundle_paths(Path("out/support"), connection="c") == (Path("out/support.md"), Path("out/support.json"))
    assert bundle_paths(Path("out/support.md"), connection="c") == (Path("out/support.md"), Path("out/support.json"))
    md, js = bundle_paths("out/", connection="acme", generated_at="2026-11-25T17:14:03Z")
    assert md == Path("out/stsync-diagnose-acme-20261125T171403Z.md") and js.suffix == ".json"


def test_bundle_is_redacted_private_and_complete(paths: ConnectionPaths, tmp_path: Path):
    with Ledger.open(paths.ledger) as ledger:
        record_failed_push(ledger, code="JANE01", email="jane@example.com", error=st_validation_error())
    paths.ensure_state()
    # A log line that (by a bug) quoted a secret: the bundle must still not carry it.
    paths.log_file.write_text(f"2026 INFO stsync: calling with key {SECRETS['STSYNC_RF_API_KEY']}\nlast line\n")
    report = diagnose(paths, paths.config, offline=True, email="jane@example.com")
    written = write_bundle(report, paths, tmp_path / "tickets")
    assert written == [tmp_path / "tickets.md", tmp_path / "tickets.json"]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        for value in SECRETS.values():
            assert value not in text
    data = json.loads(written[1].read_text())
    assert data["versions"]["python"] == sys.version.split()[0] and data["versions"]["stsync"]
    assert data["config"]["servicetitan"]["tenant_id"] == TENANT and data["config"]["leads"]["fields"]["name"] == {"from": "first_name"}
    assert data["secrets"]["sources"] == {"st_client_secret": "env", "st_app_key": "env", "rf_api_key": "env"}
    assert data["log_tail"] == ["2026 INFO stsync: calling with key ***", "last line"]
    assert data["recent_failures"][0]["email"] == "jane@example.com"
    assert data["story"]["email"] == "jane@example.com"
    markdown = written[0].read_text()
    for text in ("## Versions", "## Checks", "| FAIL | Push failures |", "The Name field is required.", "```toml", "## Referral `jane@example.com`"):
        assert text in markdown


def test_cli_json_is_one_object_and_no_secret_is_printed(config_path: Path, tmp_path: Path, capsys):
    with Ledger.open(ConnectionPaths.for_config(config_path).ledger) as ledger:
        record_failed_push(ledger, code="JANE01", email="jane@example.com", error=st_validation_error())
    code = run(["--json", "diagnose", "--offline", "--email", "jane@example.com", "--bundle", str(tmp_path / "b")])
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert code == 1 and data["exit_code"] == 1 and data["ok"] is False
    assert data["bundle"] == [str(tmp_path / "b.md"), str(tmp_path / "b.json")]
    assert {c["name"] for c in data["checks"]} >= {"Config file", "Secret store", "Push failures"}
    assert data["story"]["pushes"][0]["attempts"][0]["error_text"].endswith("Name: The Name field is required.")
    assert str(tmp_path / "b.md") in data["hint"]
    for value in SECRETS.values():
        assert value not in out.out and value not in out.err


def test_cli_human_output_is_a_table_on_stdout_with_the_closing_hint(config_path: Path, capsys):
    edit(config_path, leads={"action": "nothing"})
    code = run(["diagnose", "--offline", "--email", "nobody@example.com"])
    out = capsys.readouterr()
    assert code == 1
    for text in ("FAIL", "Nothing to action", "stsync map action leads create-booking", "never seen", "attach the bundle"):
        assert text in out.out
    # The FAIL rows and the summary said it: no "Error:" line repeats them.
    assert "Error:" not in out.err
    for value in SECRETS.values():
        assert value not in out.out + out.err


def test_cli_rejects_an_empty_email(config_path: Path, capsys):
    assert run(["diagnose", "--offline", "--email", " "]) == 2
    assert "--email" in capsys.readouterr().err
