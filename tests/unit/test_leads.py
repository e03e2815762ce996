"""Leads from their three sources (Referral Factory users, JSON files and webhooks, flags) and
the lead field values a mapping reads."""

from __future__ import annotations

import pytest

from stsync.errors import ConfigError, InvalidRecord, UsageError
from stsync.leads import (
    LEAD_FIELDS,
    Lead,
    is_lead_source,
    lead_from_flags,
    lead_from_json_object,
    lead_from_user,
    leads_from_json,
)
from stsync.referralfactory.models import Campaign, User

JANE = {
    "id": 456,
    "campaign_id": 7,
    "referrer_id": 123,
    "first_name": "Jane",
    "email": "jane@example.com",
    "code": "ueONFmUp",
    "url": "https://example.referral-factory.com/ueONFmUp",
    "type": "person_invited",
    "source": "Referred",
    "signed_up_at": "2024-12-27",
    "qualified_at": None,
    "meta": [{"field": "Last Name", "value": "Doe"}, {"field": "Phone Number", "value": "8185550100"}],
}
JOHN = {"id": 123, "campaign_id": 7, "first_name": "John", "email": "john@example.com", "code": "JOHN1", "type": "person_referring"}


def test_lead_from_user_carries_every_spec_field_with_campaign_and_referrer():
    lead = lead_from_user(
        User.model_validate(JANE),
        campaign=Campaign.model_validate({"id": 7, "name": "Spring Referrals", "status": "launched"}),
        referrer=User.model_validate(JOHN),
    )
    assert lead.value("first_name") == "Jane"
    assert lead.value("email") == "jane@example.com"
    assert lead.value("referral_code") == "ueONFmUp"
    assert lead.value("referral_link") == "https://example.referral-factory.com/ueONFmUp"
    assert lead.value("campaign_id") == "7"
    assert lead.value("campaign_name") == "Spring Referrals"
    assert lead.value("source") == "Referred"
    assert lead.value("signed_up_at") == "2024-12-27"
    assert (lead.value("referrer_first_name"), lead.value("referrer_email"), lead.value("referrer_code")) == (
        "John", "john@example.com", "JOHN1",
    )
    assert lead.value("meta.Last Name") == "Doe"
    assert lead.rf_user_id == 456 and lead.type == "person_invited"
    assert lead.describe() == "jane@example.com (ueONFmUp)"


def test_meta_labels_match_exactly_first_then_ignoring_case_and_spacing():
    lead = Lead(email="a@b.co", meta={"Last Name": "Doe", "last name": "other", "Phone  Number": "555"})
    assert lead.value("meta.Last Name") == "Doe"
    assert lead.value("meta.LAST NAME") in ("Doe", "other")
    assert lead.value("meta.phone number") == "555"
    assert lead.value("meta.Missing") is None


def test_blank_values_read_as_absent_and_unknown_fields_are_config_errors():
    lead = Lead(email="a@b.co", first_name="   ", meta={"Note": ""})
    assert lead.value("first_name") is None
    assert lead.value("meta.Note") is None
    with pytest.raises(ConfigError, match="did you mean 'first_name'"):
        lead.value("frist_name")


def test_lead_sources_are_the_spec_fields_and_meta_labels():
    assert all(is_lead_source(name) for name in LEAD_FIELDS)
    assert is_lead_source("meta.Last Name")
    assert not is_lead_source("meta.")
    assert not is_lead_source("last_name")


@pytest.mark.parametrize(
    "payload",
    [
        {"first_name": "Jane", "email": "jane@example.com", "referral_code": "C1"},
        {"firstName": "Jane", "emailAddress": "jane@example.com", "referralCode": "C1"},
        {"name": "Jane", "email_address": "jane@example.com", "code": "C1"},
        {"First Name": "Jane", "Email": "jane@example.com", "Referral Code": "C1"},
        {"event": "lead.created", "data": {"first_name": "Jane", "email": "jane@example.com", "code": "C1"}},
        {"data": {"user": {"first_name": "Jane", "email": "jane@example.com", "code": "C1"}}},
    ],
)
def test_webhook_key_spellings_and_envelopes(payload):
    [lead] = leads_from_json(payload)
    assert (lead.first_name, lead.email, lead.referral_code) == ("Jane", "jane@example.com", "C1")


def test_webhook_payload_with_referrer_object_campaign_object_and_meta_dict():
    [lead] = leads_from_json(
        {
            "id": "456",
            "email": "jane@example.com",
            "first_name": "Jane",
            "code": "C1",
            "campaign": {"id": 7, "name": "Spring Referrals"},
            "referrer": {"first_name": "John", "email": "john@example.com", "code": "JOHN1"},
            "meta": {"Last Name": "Doe", "Age": 41},
        }
    )
    assert lead.rf_user_id == 456 and lead.campaign_id == 7 and lead.campaign_name == "Spring Referrals"
    assert (lead.referrer_first_name, lead.referrer_email, lead.referrer_code) == ("John", "john@example.com", "JOHN1")
    assert lead.meta == {"Last Name": "Doe", "Age": "41"}


def test_a_list_of_leads_and_the_record_without_email_is_named():
    leads = leads_from_json([JANE, {**JANE, "email": "second@example.com"}])
    assert [lead.email for lead in leads] == ["jane@example.com", "second@example.com"]
    with pytest.raises(InvalidRecord) as caught:
        leads_from_json([JANE, {"first_name": "Nomail", "code": "XYZ"}])
    assert "record #2" in str(caught.value) and "XYZ" in str(caught.value)
    assert "email" in str(caught.value) and caught.value.field == "email"


@pytest.mark.parametrize("bad", ["text", 42, None, [], [1, 2]])
def test_input_that_is_not_a_lead_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        leads_from_json(bad)


def test_a_non_numeric_id_is_named():
    with pytest.raises(InvalidRecord, match="campaign_id must be a whole number"):
        lead_from_json_object({"email": "a@b.co", "campaign_id": "seven"})


def test_lead_from_flags_files_phone_and_fields():
    lead = lead_from_flags(
        "jane@example.com", "Jane", "C1", "Spring", phone="8185550100",
        fields={"meta.Last Name": "Doe", "referrer_code": "JOHN1", "campaign_id": "7"},
    )
    assert lead.value("meta.Phone Number") == "8185550100"  # the label the README's mapping reads
    assert lead.value("meta.Last Name") == "Doe"
    assert lead.referrer_code == "JOHN1" and lead.campaign_id == 7 and lead.campaign_name == "Spring"
    assert lead.type == "person_invited"


def test_lead_from_flags_rejects_unknown_fields_and_bad_email():
    with pytest.raises(UsageError, match="did you mean 'referrer_code'"):
        lead_from_flags("jane@example.com", "Jane", fields={"referer_code": "X"})
    with pytest.raises(UsageError, match="not an e-mail"):
        lead_from_flags("jane.example.com", "Jane")


def test_the_fields_own_spelling_beats_a_looser_alias_and_envelopes_keep_the_referrer():
    [lead] = leads_from_json({"name": "Jane Doe", "first_name": "Jane", "url": "u1", "referral_link": "u2", "email": "a@b.co"})
    assert lead.first_name == "Jane" and lead.referral_link == "u2"
    [lead] = leads_from_json({"event": "lead.created", "data": {"email": "a@b.co", "code": "C1"},
                              "referrer": {"email": "r@b.co", "code": "R1"}, "campaign": {"id": 7, "name": "Spring"}})
    assert (lead.referrer_email, lead.referrer_code, lead.campaign_name, lead.campaign_id) == ("r@b.co", "R1", "Spring", 7)
