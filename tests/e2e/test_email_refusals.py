"""E-mails Referral Factory refuses (issue 14 item 8), end to end: stsync's own check comes
first, so a customer with such an e-mail is a skipped record (``invalid_email``) and a lead
with one fails alone with the reason — before any request that would be refused.

The sandbox refuses the same e-mails with Referral Factory's 422 (the strict reading of
Laravel's ``email`` rule), so a create that slipped through would show as a failure here.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

REFUSED = {
    "José Núñez": "josé@example.com",          # non-ASCII before the @
    "Two People": "a,b@example.com",           # a comma
    "Hidden Mark": "ann\u202e@example.com",    # a bidirectional-text override
    "Very Long": "l" * 65 + "@example.com",     # a local part over 64 characters
}


def test_customers_with_emails_referral_factory_refuses_are_skipped_before_any_request(connected, cli):
    sb = connected
    ids = {sb.add_customer(name, email=email)["id"]: email for name, email in REFUSED.items()}
    fine = sb.add_customer("Fine Person", email="fine.person@example.com")["id"]
    sb.clear_request_log()

    result = cli("--json", "sync-customers", "--once")

    assert result.exit_code == 0, str(result)
    assert result.json["counts"]["failed"] == 0 and result.json["skipped_by_reason"]["invalid_email"] >= len(REFUSED)
    sent = [r for r in sb.request_log if r.service == "referral_factory" and r.status == 422]
    assert sent == []  # nothing Referral Factory had to refuse
    users = {u["email"] for u in sb.rf_users(campaign_id=sb.credentials.campaign_id)}
    assert not set(REFUSED.values()) & users and "fine.person@example.com" in users
    with_values = {f["name"] for f in sb.customer(fine)["customFields"]}
    assert "Referral Code" in with_values
    for customer_id in ids:
        assert "Referral Code" not in {f["name"] for f in sb.customer(customer_id)["customFields"]}

    story = cli("--json", "diagnose", "--offline", "--email", "josé@example.com").json["story"]
    assert any("invalid_email" in line for line in story["summary"]), story["summary"]


def test_a_lead_whose_email_would_be_refused_fails_alone_with_the_reason(connected, cli, tmp_path):
    sb = connected
    leads = [
        {"first_name": "José", "email": "josé@example.com", "code": "JOSE0001"},
        {"first_name": "Pair", "email": "a,b@example.com", "code": "PAIR0002"},
        {"first_name": "Fine", "email": "fine@example.com", "code": "FINE0003"},
    ]
    path = tmp_path / "leads.json"
    path.write_text(json.dumps(leads), encoding="utf-8")

    result = cli("--json", "push-lead", "--file", str(path))

    assert result.exit_code == 5, str(result)
    by_code = {r["external_id"]: r for r in result.json["results"]}
    assert by_code["FINE0003"]["outcome"] == "created"
    assert by_code["JOSE0001"]["outcome"] == "failed"
    assert "non-ASCII characters before the @" in by_code["JOSE0001"]["message"]
    assert by_code["JOSE0001"]["error"]["type"] == "InvalidRecord" and by_code["JOSE0001"]["error"]["field"] == "email"
    assert "a comma" in by_code["PAIR0002"]["message"]
    assert [b["externalId"] for b in sb.bookings()] == ["FINE0003"]
