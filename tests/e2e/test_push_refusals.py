"""push-lead's advice and refusals (issue 15 items 5 and 6), through the real CLI in a child
process against the sandbox: the exit code, what goes to stderr, and what ServiceTitan and the
ledger hold afterwards.

- a lead typed without its referral code is told to pass ``--referral-code`` (never to fix the
  External Id to one value), and a fixed External Id is refused by ``map set`` (2), ``validate``
  (3) and ``push-lead`` (3);
- ``--dry-run`` asks the ledger first: a booked lead "would not be sent";
- an External Id booked for one e-mail is refused for another (exit 5, both named, the ledger
  unchanged);
- ``--phone`` and ``--field`` values no mapping reads are warned about; the README's phone
  mapping books the phone;
- a file's user of another campaign, a referrer pushed as a lead and a lead pushed as a
  referrer are refused;
- a paused campaign stops ``push-lead`` once, with exit 3 and its fix, before anything is sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sandbox_world import leads_of

pytestmark = pytest.mark.e2e


def said(result) -> str:
    """What the run said, on either stream (each lead's outcome is data, on stdout; the advice
    is on stderr), with the terminal's line wrapping taken out."""
    return " ".join((result.stdout + result.stderr).split())


def test_a_lead_typed_without_its_referral_code_is_told_to_pass_it(connected, cli_subprocess):
    result = cli_subprocess("push-lead", "--email", "jo@example.com", "--first-name", "Jo")

    assert result.exit_code == 5, str(result)
    assert "--referral-code" in said(result)
    assert "--value" not in said(result), "a fixed External Id is never the advice"
    assert connected.bookings() == []


def test_a_fixed_external_id_is_refused_by_map_set_validate_and_push(connected, cli_subprocess, isolated):
    refused = cli_subprocess("map", "set", "external_id", "--value", "REF-1")
    assert refused.exit_code == 2, str(refused)
    assert "already booked" in said(refused) and "--from referral_code" in said(refused)

    config = isolated / "config.toml"
    config.write_text(config.read_text().replace('external_id = { from = "referral_code" }', 'external_id = { value = "REF-1" }'))
    validate = cli_subprocess("--json", "validate")
    assert validate.exit_code == 3, str(validate)
    mapping = next(c for c in validate.json["checks"] if c["name"] == "Leads: field mapping")
    assert mapping["status"] == "fail" and "external_id" in mapping["message"] and "already booked" in mapping["message"]

    push = cli_subprocess("push-lead", "--new")
    assert push.exit_code == 3, str(push)
    assert "external_id" in said(push)
    assert connected.bookings() == []


def test_a_dry_run_asks_the_ledger_and_a_booked_lead_would_not_be_sent(connected, cli_subprocess, isolated):
    code = leads_of(connected)[0]["code"]
    before = cli_subprocess("--json", "push-lead", "--code", code, "--dry-run")
    assert before.exit_code == 0 and before.json["results"][0]["outcome"] == "skipped"
    assert not (isolated / "state" / "default" / "ledger.sqlite3").exists(), "a dry run creates no ledger"
    assert cli_subprocess("push-lead", "--code", code).exit_code == 0

    after = cli_subprocess("push-lead", "--code", code, "--dry-run")

    assert after.exit_code == 0, str(after)
    assert after.stdout.strip() in ("", "null", "[]"), "no body: nothing would be POSTed"
    assert "already booked" in said(after) and "nothing would be sent" in said(after)
    as_json = cli_subprocess("--json", "push-lead", "--code", code, "--dry-run").json
    [result] = as_json["results"]
    assert result["outcome"] == "already_booked" and result["booking_id"] == connected.bookings()[0]["id"]
    assert len(connected.bookings()) == 1


def test_one_external_id_booked_for_another_email_is_refused_and_the_ledger_kept(connected, cli_subprocess):
    first = cli_subprocess("push-lead", "--email", "ann@example.com", "--first-name", "Ann", "--referral-code", "share001")
    assert first.exit_code == 0, str(first)
    ledger_before = cli_subprocess("--json", "history").json["attempts"]

    second = cli_subprocess("push-lead", "--email", "bob@example.com", "--first-name", "Bob", "--referral-code", "share001")

    assert second.exit_code == 5, str(second)
    assert "ann@example.com" in said(second) and "bob@example.com" in said(second)
    assert cli_subprocess("--json", "history").json["attempts"] == ledger_before, "nothing recorded"
    story = cli_subprocess("--json", "diagnose", "--offline", "--email", "ann@example.com").json["story"]
    assert [push["external_id"] for push in story["pushes"]] == ["share001"], "the booking stays Ann's"
    [booking] = connected.bookings()
    assert booking["externalId"] == "share001"
    same_person = cli_subprocess("push-lead", "--email", "ANN@example.com", "--first-name", "Ann", "--referral-code", "share001")
    assert same_person.exit_code == 0 and "already booked" in said(same_person), str(same_person)


def test_values_no_mapping_reads_are_warned_about_and_the_readme_phone_mapping_books_the_phone(connected, cli_subprocess):
    unread = cli_subprocess(
        "push-lead", "--email", "pat@example.com", "--first-name", "Pat", "--referral-code", "phone001",
        "--phone", "555-0100", "--field", "meta.Gate Code=1234",
    )  # fmt: skip
    assert unread.exit_code == 0, str(unread)
    assert '--phone: no field of [leads] is mapped from meta.Phone Number' in said(unread)
    assert 'stsync map set phone --from "meta.Phone Number"' in said(unread)
    assert "--field meta.Gate Code=…" in said(unread)
    assert "555-0100" not in unread.stdout

    # The README's Mapping example, as written, then a push with --phone.
    assert cli_subprocess("map", "set", "phone", "--from", "meta.Phone Number").exit_code == 0
    mapped = cli_subprocess(
        "push-lead", "--email", "sam@example.com", "--first-name", "Sam", "--referral-code", "phone002", "--phone", "555-0199",
    )  # fmt: skip
    assert mapped.exit_code == 0, str(mapped)
    assert "--phone" not in said(mapped), "no warning: the mapping reads it"
    [booking] = connected.bookings(external_id="phone002")
    assert {"type": "MobilePhone", "value": "555-0199"} in [
        {"type": c["type"], "value": c["value"]} for c in connected.booking_contacts(booking["id"])
    ]


def test_a_file_user_of_another_campaign_is_refused_and_the_rest_pushed(connected, cli_subprocess, tmp_path: Path):
    sb = connected
    own = leads_of(sb)[0]
    elsewhere = leads_of(sb, sb.credentials.paused_campaign_id)[0]
    path = tmp_path / "leads.json"
    path.write_text(json.dumps([own, elsewhere]))

    result = cli_subprocess("push-lead", "--file", path)

    assert result.exit_code == 5, str(result)
    assert f"belongs to campaign {elsewhere['campaign_id']}" in said(result)
    assert [b["externalId"] for b in sb.bookings()] == [own["code"]]

    alone = tmp_path / "one.json"
    alone.write_text(json.dumps(elsewhere))
    single = cli_subprocess("push-lead", "--file", alone)
    assert single.exit_code == 5 and f"not to this connection's campaign {sb.credentials.campaign_id}" in said(single)
    assert "use --config for the connection of that campaign" in said(single)
    assert len(sb.bookings()) == 1


def test_a_referrer_is_not_pushed_as_a_lead_nor_a_lead_as_a_referrer(connected, cli_subprocess, tmp_path: Path):
    sb = connected
    referrer = leads_of(sb, type="person_referring")[0]
    lead = leads_of(sb)[0]

    by_id = cli_subprocess("push-lead", "--rf-user-id", referrer["id"])
    assert by_id.exit_code == 2, str(by_id)
    assert "is a referrer (person_referring), not a referred lead" in said(by_id) and "--referrer" in said(by_id)
    by_code = cli_subprocess("push-lead", "--code", referrer["code"])
    assert by_code.exit_code == 2 and "is a referrer" in said(by_code)
    path = tmp_path / "referrer.json"
    path.write_text(json.dumps(referrer))
    in_a_file = cli_subprocess("push-lead", "--file", path)
    assert in_a_file.exit_code == 5 and "is a referrer" in said(in_a_file)

    assert cli_subprocess("map", "action", "referrers", "create-booking").exit_code == 0
    as_referrer = cli_subprocess("push-lead", "--rf-user-id", lead["id"], "--referrer")
    assert as_referrer.exit_code == 2 and "is a referred lead" in said(as_referrer), str(as_referrer)
    assert sb.bookings() == []


def test_a_paused_campaign_stops_push_lead_once_before_anything_is_sent(connected, cli_subprocess):
    sb = connected
    sb.pause_campaign(sb.credentials.campaign_id)
    sb.clear_request_log()

    new = cli_subprocess("--json", "push-lead", "--new")

    assert new.exit_code == 3, str(new)
    error = new.json["error"]
    assert "paused" in error["message"] and "launch the campaign" in error["hint"]
    campaign = f"/api/v2/campaigns/{sb.credentials.campaign_id}"
    assert [(r.service, r.method, r.path) for r in sb.request_log] == [("referral_factory", "GET", campaign)]

    sb.clear_request_log()
    single = cli_subprocess("push-lead", "--email", "kim@example.com", "--first-name", "Kim", "--referral-code", "kim00001")
    assert single.exit_code == 3 and "paused" in said(single), str(single)
    assert [r.path for r in sb.request_log] == [campaign]
    assert sb.bookings() == []

    dry = cli_subprocess("push-lead", "--email", "kim@example.com", "--first-name", "Kim", "--referral-code", "kim00001", "--dry-run")
    assert dry.exit_code == 0, "a dry run sends nothing: it shows the body whatever the campaign's state"
