"""`stsync sync-customers` end to end: the real CLI against the sandbox over sockets.

The expected outcome of every customer is computed here, independently of stsync's code,
from the sandbox's own data: the export feed's order, each customer's contacts, and the
campaign's users before the run.
"""

from __future__ import annotations

import json

import pytest
from customer_sync_expectations import custom_values, expected_outcomes, skips, tally

from stsync.cli.app import run
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config

pytestmark = pytest.mark.e2e

RF_PER_MINUTE = 60_000  # scaled up so a few hundred creates take about a second
ST_PER_SECOND = 1_000
RETURN_FIELDS = ("Referral Link", "Referral Code")


@pytest.fixture
def sandbox(isolated, monkeypatch):
    from stsync.sandbox import Sandbox

    with Sandbox(seed=11, customers=300, rf_per_minute=RF_PER_MINUTE, st_per_second=ST_PER_SECOND) as sb:
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        yield sb


@pytest.fixture
def connected(sandbox, isolated, capsys):
    assert run([*sandbox.connect_args(), "--secrets-store", "file"]) == 0
    config_path = isolated / "config.toml"
    config = load_config(config_path)
    config.limits.referral_factory_per_minute = RF_PER_MINUTE
    config.limits.servicetitan_per_second = ST_PER_SECOND
    save_config(config, config_path)
    capsys.readouterr()
    sandbox.clear_request_log()
    return sandbox


def sync(capsys, *args: str) -> tuple[int, dict]:
    code = run(["--json", "sync-customers", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def assert_no_referral_factory_429(sb) -> None:
    statuses = [r.status for r in sb.request_log if r.service == "referral_factory"]
    assert statuses and 429 not in statuses


def sign_up(sb, email: str, first_name: str) -> dict:
    """Someone joins the campaign on their own (through Referral Factory's API)."""
    import httpx

    response = httpx.post(
        f"{sb.rf_api_url}/users",
        json={"campaign_id": sb.credentials.campaign_id, "first_name": first_name, "email": email},
        headers={"Authorization": f"Bearer {sb.credentials.rf_api_key}", "Accept": "application/json"},
    )
    response.raise_for_status()
    return response.json().get("data", response.json())


def test_one_time_sync_then_a_second_run_then_changes_flow_through(connected, capsys):
    sb = connected
    eligible = [email for outcome, email in expected_outcomes(sb).values() if outcome == "created"]
    sign_up(sb, eligible[3], "Early")
    sign_up(sb, eligible[40].upper(), "Shouty")  # e-mails compare case-insensitively
    sb.clear_request_log()
    before = {c["id"]: custom_values(c) for c in sb.customers()}
    expected = expected_outcomes(sb)
    counts = tally(expected)
    assert counts["adopted"] == 2
    assert counts.get("created", 0) > 100 and all(counts.get(r) for r in ("no_email", "invalid_email", "inactive", "merged"))

    code, report = sync(capsys, "--once")

    assert code == 0, report
    assert report["counts"]["created"] == counts.get("created", 0)
    assert report["counts"]["adopted"] == counts.get("adopted", 0)
    assert (report["counts"]["updated"], report["counts"]["unchanged"], report["counts"]["failed"]) == (0, 0, 0)
    assert report["skipped_by_reason"] == skips(counts)
    assert report["counts"]["shared"] == counts.get("shared", 0) > 0  # households: index % 20 in 15, 16, 17
    assert report["counts"]["examined"] == len(expected) == 300
    # One Referral Factory user per enrolled e-mail, with the customer's link and code written back.
    campaign = sb.credentials.campaign_id
    users = sb.rf_users(campaign_id=campaign)
    by_email: dict[str, list[dict]] = {}
    for user in users:
        by_email.setdefault(user["email"].casefold(), []).append(user)
    enrolled = {cid: email for cid, (outcome, email) in expected.items() if outcome in ("created", "adopted")}
    shared = {cid: email for cid, (outcome, email) in expected.items() if outcome == "shared"}
    assert all(len(by_email[email.casefold()]) == 1 for email in enrolled.values())
    # Each shared customer is listed with the customer whose referrer it carries (first by the feed's order).
    owner_of = {email.casefold(): cid for cid, email in enrolled.items()}
    assert {item["customer_id"]: item["shares_referrer_of"] for item in report["shared_customers"]} == {
        cid: owner_of[email.casefold()] for cid, email in shared.items()
    }
    for customer in sb.customers():
        values = custom_values(customer)
        # Every other field keeps its value; an empty one ("") is not sent back, so it may be gone.
        others = {k: v for k, v in values.items() if k not in RETURN_FIELDS and v != ""}
        assert others == {k: v for k, v in before[customer["id"]].items() if k not in RETURN_FIELDS and v != ""}
        if customer["id"] in enrolled or customer["id"] in shared:
            email = enrolled.get(customer["id"]) or shared[customer["id"]]
            user = by_email[email.casefold()][0]
            assert (values.get("Referral Link"), values.get("Referral Code")) == (user["url"], user["code"])
            assert user["type"] == "person_referring"
        else:
            assert not values.get("Referral Link") and not values.get("Referral Code")
    assert report["counts"]["return_fields_written"] == 2 * (len(enrolled) + len(shared))
    creates = [r for r in sb.request_log if r.service == "referral_factory" and r.method == "POST" and r.path.endswith("/users")]
    assert len(creates) == counts.get("created", 0) + counts.get("adopted", 0)  # an adoption is a 422 first
    assert_no_referral_factory_429(sb)

    # A second run: nothing created, nothing written.
    sb.clear_request_log()
    code, again = sync(capsys, "--ongoing")
    assert code == 0
    assert (again["counts"]["created"], again["counts"]["adopted"], again["counts"]["updated"], again["counts"]["return_fields_written"]) == (0, 0, 0, 0)
    # Referral Factory is asked one thing only: is the campaign still launched.
    assert [r.path for r in sb.request_log if r.service == "referral_factory"] == [f"/api/v2/campaigns/{sb.credentials.campaign_id}"]
    assert [r for r in sb.request_log if r.method in ("POST", "PATCH", "PUT") and r.service != "auth"] == []

    # 10 new customers and 5 renamed referrers: the new eligible ones are created, the 5 renamed.
    sb.clear_request_log()
    taken = {email.casefold() for email in enrolled.values()}
    new_ids = {c["id"] for c in sb.add_customers(10)}
    renamed = sorted(cid for cid, (outcome, _) in expected.items() if outcome == "created")[:5]
    for n, customer_id in enumerate(renamed):
        sb.modify_customer(customer_id, name=f"Renamed{n} Lastname")
    new_expected = expected_outcomes(sb, new_ids, taken=taken)
    new_counts = tally(new_expected)

    code, ongoing = sync(capsys, "--ongoing")

    assert code == 0, ongoing
    assert ongoing["counts"]["created"] == new_counts.get("created", 0) > 0
    assert ongoing["counts"]["adopted"] == new_counts.get("adopted", 0)
    assert ongoing["counts"]["updated"] == 5
    assert ongoing["skipped_by_reason"] == skips(new_counts)
    for n, customer_id in enumerate(renamed):
        user = by_email[enrolled[customer_id].casefold()][0]
        assert next(u for u in sb.rf_users(campaign_id=campaign) if u["id"] == user["id"])["first_name"] == f"Renamed{n}"
    puts = [r for r in sb.request_log if r.service == "referral_factory" and r.method == "PUT"]
    posts = [r for r in sb.request_log if r.service == "referral_factory" and r.method == "POST" and r.path.endswith("/users")]
    assert len(puts) == 5 and len(posts) == new_counts.get("created", 0) + new_counts.get("adopted", 0)
    assert len(sb.rf_users(campaign_id=campaign)) == len(users) + new_counts.get("created", 0)
    for customer_id, (outcome, email) in new_expected.items():
        if outcome in ("created", "adopted"):
            values = custom_values(sb.customer(customer_id))
            assert values["Referral Code"] == next(u["code"] for u in sb.rf_users(campaign_id=campaign) if u["email"] == email)
    assert_no_referral_factory_429(sb)


def test_dry_run_is_the_confirm_step(connected, capsys):
    sb = connected
    expected = tally(expected_outcomes(sb))
    state = sb.snapshot()

    code, report = sync(capsys, "--once", "--dry-run")

    assert code == 0
    assert report["dry_run"] is True
    # Without asking Referral Factory, an e-mail already in the campaign counts as a creation.
    assert report["counts"]["created"] == expected.get("created", 0) + expected.get("adopted", 0)
    assert report["skipped_by_reason"] == skips(expected)
    assert report["counts"]["shared"] == expected.get("shared", 0)
    assert report["counts"]["return_fields_written"] == 2 * (report["counts"]["created"] + report["counts"]["shared"])
    assert len(report["sample"]) == 10 and {s["action"] for s in report["sample"]} <= {"create", "share"}
    creates = [s for s in report["sample"] if s["action"] == "create"]
    assert creates and all(s["referrer"]["email"] == s["email"] and s["referrer"]["notify"] is False for s in creates)
    assert [r for r in sb.request_log if r.service == "referral_factory"] == []
    assert [r for r in sb.request_log if r.method != "GET" and r.service != "auth"] == []
    assert sb.snapshot() == state

    code, real = sync(capsys, "--once")  # the dry run left no position behind: a full pass
    assert code == 0 and real["counts"]["created"] + real["counts"]["adopted"] == report["counts"]["created"]


def test_the_cli_says_what_it_did_and_refuses_two_modes(connected, capsys):
    code = run(["sync-customers", "--once", "--limit", "20"])
    said = capsys.readouterr()
    assert code == 0
    assert "became referrers" in said.out and "Stopped after --limit 20" in said.err

    assert run(["sync-customers", "--once", "--ongoing"]) == 2
    assert "not both" in capsys.readouterr().err


def test_a_paused_campaign_stops_the_sync_once_before_any_customer(connected, capsys):
    """Referral Factory refuses every new user of a paused campaign: the run reads the campaign
    once and stops with exit 3 and the fix, instead of failing every customer one by one and
    spending the Referral Factory budget on the refusals (issue 15 item 6)."""
    sb = connected
    sb.pause_campaign(sb.credentials.campaign_id)
    sb.clear_request_log()

    code = run(["--json", "sync-customers", "--once"])

    out, err = capsys.readouterr()
    assert code == 3
    error = json.loads(out)["error"]
    assert error["type"] == "ConfigError" and "paused" in error["message"] and "launch the campaign" in error["hint"]
    assert [(r.service, r.method) for r in sb.request_log if r.service != "auth"] == [("referral_factory", "GET")]
    assert not [u for u in sb.rf_users(campaign_id=sb.credentials.campaign_id) if u["source"] == "Api"]


def test_a_return_field_missing_in_servicetitan_is_exit_3_before_anything_is_created(connected, capsys):
    sb = connected
    sb.delete_custom_field_type("Referral Code")

    code = run(["sync-customers", "--once"])

    err = capsys.readouterr().err
    assert code == 3
    assert "Referral Code" in err and "validate --online" in err
    # Only the campaign was read (it must be launched); nothing was created.
    assert [r.path for r in sb.request_log if r.service == "referral_factory"] == [f"/api/v2/campaigns/{sb.credentials.campaign_id}"]
