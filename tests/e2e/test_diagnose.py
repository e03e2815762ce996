"""`stsync diagnose` end to end: the real CLI against the sandbox over sockets.

One test per common cause of the troubleshooting guide ("Nothing to action", a required field
unmapped, a wrong Booking Provider Value) and per way a working setup breaks later (a revoked
client secret, a keyring that cannot be opened, a paused campaign, a return field deleted in
ServiceTitan): each must come out as the right FAIL with the right fix. Then one referral's
story (ServiceTitan's error verbatim for a lead that failed to book) and the promise that no
secret reaches any output or the support bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e

ST_APP_KEY_REFUSED = "The ST-App-Key header is missing or is not a valid app key for this application."


def checks_by_name(result) -> dict[str, dict]:
    return {check["name"]: check for check in result.json["checks"]}


def failed(result) -> dict[str, dict]:
    return {name: check for name, check in checks_by_name(result).items() if check["status"] == "fail"}


def test_a_healthy_connection_passes_every_check(connected, cli):
    result = cli("--json", "diagnose")
    assert result.exit_code == 0, str(result)
    checks = checks_by_name(result)
    assert all(check["status"] == "pass" for check in checks.values()), str(result)
    for name in ("Config file", "Secret store", "Secrets", "ServiceTitan token", "ServiceTitan app key and tenant access",
                 "Booking Provider Value", "Return fields in ServiceTitan", "Referral Factory API key",
                 "Referral Factory campaign", "Leads: when lead joins campaign", "Leads: field mapping",
                 "Qualification rule", "Runs in progress", "Push failures"):
        assert name in checks
    assert result.json["not_run"] == [] and result.json["story"] is None

    human = cli("diagnose")
    assert human.exit_code == 0 and human.stderr == ""  # the checklist is the data: stdout
    assert "PASS" in human.stdout and "FAIL" not in human.stdout and "Every check passes" in human.stdout


def test_nothing_to_action(connected, cli):
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    result = cli("--json", "diagnose")
    assert result.exit_code == 1, str(result)
    assert set(failed(result)) == {"Leads: when lead joins campaign"}
    check = failed(result)["Leads: when lead joins campaign"]
    assert check["message"].startswith('"Nothing to action" is selected — if the Leads tab dropdown is set to "Nothing to action,"')
    assert check["fix"] == "stsync map action leads create-booking"


def test_a_required_field_unmapped(connected, cli):
    assert cli("map", "unset", "external_id").exit_code == 0
    result = cli("--json", "diagnose")
    assert result.exit_code == 1, str(result)
    check = failed(result)["Leads: field mapping"]
    assert "Setup Required: External Id (external_id) not mapped" in check["message"]
    assert "Required fields not mapped" in check["message"]
    assert check["fix"].startswith("stsync map set external_id --from <field> --for leads")


def test_a_wrong_booking_provider_value(connected, cli):
    config_path = Path(os.environ["STSYNC_CONFIG"])
    config = load_config(config_path)
    config.servicetitan.booking_provider = connected.credentials.booking_provider + 1000
    save_config(config, config_path)

    result = cli("--json", "diagnose")
    checks = checks_by_name(result)
    assert checks["ServiceTitan token"]["status"] == "pass"
    check = failed(result)["Booking Provider Value"]
    assert check["message"].startswith("Booking Provider Value is incorrect — if the wrong Booking Provider Value was entered")
    assert "Settings → Integrations → API Application Access" in check["fix"]
    assert "stsync connect --booking-provider" in check["fix"]
    assert set(failed(result)) == {"Booking Provider Value"}
    assert result.exit_code == 1 and "stsync connect" in result.json["hint"]


def test_a_revoked_client_secret(connected, cli):
    connected.rotate_client_secret()  # the admin generated a new secret in ServiceTitan
    result = cli("--json", "diagnose")
    assert result.exit_code == 4, str(result)
    check = failed(result)["ServiceTitan token"]
    assert "rejected the Client ID / Client Secret" in check["message"]
    assert "stsync connect" in check["fix"]
    assert set(failed(result)) == {"ServiceTitan token"}
    blocked = {item["name"]: item["blocked_by"] for item in result.json["not_run"]}
    assert blocked["Booking Provider Value"] == "ServiceTitan token"
    assert checks_by_name(result)["Referral Factory campaign"]["status"] == "pass"
    assert result.json["hint"].startswith("Authentication failed") and "`stsync connect`" in result.json["hint"]


def test_a_keyring_that_cannot_be_opened_names_the_remedies(sandbox_env, cli, monkeypatch):
    assert cli(*sandbox_env.connect_args()).exit_code == 0  # secrets in the (isolated) OS keyring
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")  # cron on a headless box
    result = cli("--json", "diagnose")
    assert result.exit_code == 3, str(result)
    check = failed(result)["Secret store"]
    assert "isolated_keyring.FileKeyring" in check["message"] and "locked" in check["message"]
    for remedy in ("STSYNC_ST_CLIENT_SECRET", "STSYNC_ST_APP_KEY", "STSYNC_RF_API_KEY", "keyring", "--secrets-store file"):
        assert remedy in check["fix"]
    assert check["fix"].startswith("1. unlock the keyring")  # locked: unlocking is the fix
    assert sandbox_env.count_requests(service="auth") == 1  # only connect's: nothing online could run


def test_a_paused_campaign(connected, cli):
    connected.pause_campaign(connected.credentials.campaign_id)
    result = cli("--json", "diagnose")
    assert result.exit_code == 1, str(result)
    check = failed(result)["Referral Factory campaign"]
    assert "paused" in check["message"] and "launch the campaign" in check["fix"]


def test_a_return_field_deleted_in_servicetitan(connected, cli):
    connected.delete_custom_field_type("Referral Link")
    result = cli("--json", "diagnose")
    assert result.exit_code == 1, str(result)
    check = failed(result)["Return fields in ServiceTitan"]
    assert "'Referral Link'" in check["message"] and "Text" in check["fix"]


def test_email_story_of_a_lead_that_failed_shows_servicetitans_words(connected, cli, monkeypatch):
    monkeypatch.setenv("STSYNC_ST_APP_KEY", "ak1.not-the-app-key")  # the environment wins over the stored key
    pushed = cli("push-lead", "--email", "Jane.Fail@example.com", "--first-name", "Jane", "--referral-code", "FAIL01",
                 "--campaign-name", "Spring")
    assert pushed.exit_code == 4, str(pushed)
    monkeypatch.delenv("STSYNC_ST_APP_KEY")

    result = cli("--json", "diagnose", "--email", "jane.fail@example.com")
    failures = failed(result)["Push failures"]
    assert "Jane.Fail@example.com (FAIL01)" in failures["message"] and ST_APP_KEY_REFUSED in failures["message"]
    story = result.json["story"]
    assert story["seen"] is True
    [push] = story["pushes"]
    assert push["state"] == "failed" and push["external_id"] == "FAIL01"
    assert ST_APP_KEY_REFUSED in push["attempts"][0]["error_text"]
    assert any("stsync push-lead --code FAIL01" in step for step in story["next_steps"])

    monkeypatch.setenv("COLUMNS", "2000")  # one line per sentence: the words are checked whole
    human = cli("diagnose", "--email", "jane.fail@example.com")
    assert ST_APP_KEY_REFUSED in human.stdout and "attempt " in human.stdout


def test_email_story_of_a_booked_lead_and_of_a_stranger(connected, cli):
    assert cli("push-lead", "--new").exit_code == 0
    booking = min(connected.bookings(), key=lambda b: b["id"])
    job = connected.convert_booking_to_job(booking["id"])
    connected.set_job_status(job["id"], "InProgress")
    lead = next(u for u in connected.rf_users(type="person_invited") if u["code"] == booking["externalId"])

    story = cli("--json", "diagnose", "--email", lead["email"].upper()).json["story"]
    assert story["referral_factory"]["type"] == "person_invited" and story["referral_factory"]["qualified"] is False
    assert story["referral_factory"]["referrer"]["id"] == lead["referrer_id"]
    [push] = story["pushes"]
    assert push["booking_id"] == booking["id"] and push["attempts"][0]["outcome"] == "created"
    assert push["servicetitan"]["status"] == "Converted" and push["servicetitan"]["job"]["status"] == "InProgress"

    stranger = cli("--json", "diagnose", "--email", "nobody@example.com").json["story"]
    assert stranger["seen"] is False and "never seen" in stranger["summary"][0]
    assert any("push-lead --new" in step for step in stranger["next_steps"])


def test_no_secret_in_any_output_or_in_the_bundle(connected, cli, cli_subprocess, tmp_path, monkeypatch):
    creds = connected.credentials
    monkeypatch.setenv("STSYNC_ST_APP_KEY", "ak1.not-the-app-key")
    cli("push-lead", "--email", "leak@example.com", "--first-name", "Lee", "--referral-code", "LEAK01", "--campaign-name", "S")
    monkeypatch.delenv("STSYNC_ST_APP_KEY")
    assert cli("push-lead", "--new").exit_code == 0
    paths = ConnectionPaths.for_config(Path(os.environ["STSYNC_CONFIG"]))
    tokens = [entry["access_token"] for entry in json.loads(paths.token_cache.read_text())["tokens"].values()]
    secrets = [creds.client_secret, creds.app_key, creds.rf_api_key, "ak1.not-the-app-key", *tokens]

    outputs = [
        cli("diagnose", "-vv"),
        cli("--json", "diagnose", "--email", "leak@example.com", "--bundle", tmp_path / "support"),
        cli("--json", "diagnose", "--offline", "--bundle", f"{tmp_path}/dir/"),
        cli_subprocess("diagnose", "--email", "leak@example.com"),
    ]
    bundle_files = sorted(tmp_path.glob("support.*")) + sorted((tmp_path / "dir").glob("stsync-diagnose-*"))
    assert [p.suffix for p in bundle_files] == [".json", ".md", ".json", ".md"]
    assert outputs[1].json["bundle"] == [str(tmp_path / "support.md"), str(tmp_path / "support.json")]
    bundle = json.loads((tmp_path / "support.json").read_text())
    assert bundle["secrets"]["sources"] == {"st_client_secret": "file", "st_app_key": "file", "rf_api_key": "file"}
    assert bundle["config"]["servicetitan"]["tenant_id"] == creds.tenant_id and bundle["log_tail"]
    assert any(f["email"] == "leak@example.com" for f in bundle["recent_failures"])

    texts = [r.stdout + r.stderr for r in outputs] + [p.read_text() for p in bundle_files] + [paths.log_file.read_text()]
    for secret in secrets:
        for text in texts:
            assert secret not in text
    assert outputs[3].exit_code == 1, str(outputs[3])  # the real entry point: a push failure is a FAIL
