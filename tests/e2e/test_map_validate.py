"""`stsync map` and `stsync validate` end to end: the real CLI against the sandbox over sockets.

The sandbox checks every booking body against ServiceTitan's own schema, so a push through an
edited mapping proves the body is one ServiceTitan accepts; `validate --online` must catch what
the troubleshooting guide lists (a wrong booking provider) and what breaks a working setup
later (a paused campaign, a return-field custom field deleted in ServiceTitan).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

pytestmark = pytest.mark.e2e


def checks_by_name(result) -> dict[str, dict]:
    return {check["name"]: check for check in result.json["checks"]}


def test_a_fresh_connection_validates_online(connected, cli):
    result = cli("--json", "validate", "--online")
    assert result.exit_code == 0, str(result)
    checks = checks_by_name(result)
    assert all(check["status"] == "pass" for check in checks.values()), str(result)
    for name in ("ServiceTitan token", "Booking Provider Value", "Return fields in ServiceTitan",
                 "Referral Factory API key", "Referral Factory campaign"):
        assert name in checks
    human = cli("validate", "--online")
    assert human.exit_code == 0 and "PASS" in human.stdout and "FAIL" not in human.stdout


def test_map_show_after_connect_is_the_seed_table(connected, cli):
    result = cli("map", "show", "--for", "leads")
    assert result.exit_code == 0, str(result)
    for text in ("Data Type", "From Referral Factory", "To ServiceTitan", "Campaign Name", "Source *",
                 '"Referral"', "Is First Time Client *", "Referral Code", "External Id *"):
        assert text in result.stdout
    assert "Setup Required" not in result.stdout and result.stderr == ""


def test_a_wrong_booking_provider_is_caught_with_the_troubleshooting_wording(connected, cli):
    config_path = Path(os.environ["STSYNC_CONFIG"])
    config = load_config(config_path)
    config.servicetitan.booking_provider = connected.credentials.booking_provider + 1000
    save_config(config, config_path)

    result = cli("--json", "validate", "--online")
    assert result.exit_code == 4, str(result)
    checks = checks_by_name(result)
    assert checks["ServiceTitan token"]["status"] == "pass"
    provider = checks["Booking Provider Value"]
    assert provider["status"] == "fail"
    assert provider["message"].startswith("Booking Provider Value is incorrect — if the wrong Booking Provider Value")
    assert "Allowed 'booking_provider' value" in provider["fix"]


def test_a_paused_campaign_is_caught(connected, cli):
    connected.pause_campaign(connected.credentials.campaign_id)
    result = cli("--json", "validate", "--online")
    assert result.exit_code == 3, str(result)
    campaign = checks_by_name(result)["Referral Factory campaign"]
    assert campaign["status"] == "fail" and "paused, not launched" in campaign["message"]


def test_a_return_field_custom_field_missing_in_servicetitan_is_caught(connected, cli):
    connected.delete_custom_field_type("Referral Code")
    result = cli("--json", "validate", "--online")
    assert result.exit_code == 3, str(result)
    check = checks_by_name(result)["Return fields in ServiceTitan"]
    assert check["status"] == "fail"
    assert "no customer custom field named 'Referral Code'" in check["message"]
    assert "Referral Link" not in check["message"]  # the one that exists is not blamed


def test_setup_required_and_nothing_to_action_as_the_troubleshooting_guide_describes(connected, cli):
    assert cli("map", "unset", "summary").exit_code == 0
    result = cli("--json", "validate")
    assert result.exit_code == 3, str(result)
    assert "Setup Required: Summary (summary) not mapped" in checks_by_name(result)["Leads: field mapping"]["message"]
    shown = cli("--json", "map", "show", "--for", "leads").json["leads"]
    assert shown["setup_required"] is True and shown["missing"] == ["summary"]

    assert cli("map", "set", "summary", "--value", "Referral").exit_code == 0
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    result = cli("--json", "validate")
    assert result.exit_code == 0, str(result)
    action = checks_by_name(result)["Leads: when lead joins campaign"]
    assert action["status"] == "warn" and '"Nothing to action" is selected' in action["message"]


def test_an_edited_mapping_makes_a_booking_the_sandbox_accepts(connected, cli):
    for args in (
        ("name", "--template", "{first_name} {meta.Last Name}"),
        ("phone", "--from", "meta.Phone Number"),  # the README's mapping: --phone fills it
        ("customer_type", "--select", "residential"),
        ("priority", "--select", "High"),
        ("summary", "--template", "Referred by {referrer_first_name}"),
    ):
        result = cli("map", "set", *args)
        assert result.exit_code == 0, str(result)
    assert cli("validate").exit_code == 0

    result = cli(
        "--json", "push-lead", "--email", "jane.e2e@example.com", "--first-name", "Jane", "--referral-code", "E2EJANE",
        "--campaign-name", "Spring Referrals", "--phone", "8185550100",
        "--field", "meta.Last Name=Doe", "--field", "referrer_first_name=John",
    )
    assert result.exit_code == 0, str(result)
    [booking] = connected.bookings(external_id="E2EJANE")
    assert booking["name"] == "Jane Doe" and booking["summary"] == "Referred by John"
    assert booking["customerType"] == "Residential" and booking["priority"] == "High"
    contacts = {(c["type"], c["value"]) for c in connected.booking_contacts(booking["id"])}
    assert contacts == {("Email", "jane.e2e@example.com"), ("MobilePhone", "8185550100")}
