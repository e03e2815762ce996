"""Lead → CreateBookingRequest (stsync.mapping.booking), every body checked against
ServiceTitan's own schema as the sandbox checks it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mapping_cases import SEED_LEAD, leads_section, schema_errors, seed_fields  # tests/support

from stsync.errors import InvalidRecord, SetupRequired
from stsync.leads import LEAD_FIELDS, Lead
from stsync.mapping.booking import booking_request_for, external_id_for, lead_fields_read
from stsync.mapping.validation import booking_mapping_problems, missing_required
from stsync.servicetitan.vocabulary import REQUIRED_BOOKING_TARGETS
from stsync.storage.config import Config, default_config


def test_default_mapping_makes_the_seed_booking():
    body = booking_request_for(SEED_LEAD, default_config().leads)
    assert body == {
        "source": "Spring Referrals",
        "name": "Jane",
        "summary": "Referral",
        "isFirstTimeClient": True,
        "externalId": "ueONFmUp",
        "contacts": [{"type": "Email", "value": "jane@example.com"}],
    }
    assert schema_errors(body) == {}
    assert external_id_for(SEED_LEAD, default_config().leads) == "ueONFmUp"
    assert missing_required(default_config().leads) == []



def test_full_mapping_contacts_address_booleans_dates_and_ids():
    section = leads_section({
        "source": {"value": "Referral Factory"},
        "name": {"template": "{first_name} {meta.Last Name}"},
        "email": {"from": "email"},
        "phone": {"from": "meta.Phone"},
        "summary": {"template": "Referred by {referrer_first_name} ({referrer_code})"},
        "is_first_time_client": {"select": "no"},
        "external_id": {"from": "referral_code"},
        "address.street": {"from": "meta.Street"},
        "address.city": {"from": "meta.City"},
        "address.state": {"from": "meta.State"},
        "address.zip": {"from": "meta.Zip"},
        "address.country": {"from": "meta.Country"},
        "customer_type": {"select": "Residential"},
        "priority": {"select": "High"},
        "business_unit_id": {"value": 12},
        "start": {"from": "signed_up_at"},
        "send_confirmation_email": {"value": "no"},
    })
    lead = Lead(**{**SEED_LEAD.__dict__, "signed_up_at": "2025-06-02T08:00:00-07:00",
                   "referrer_first_name": "John", "referrer_code": "JOHN1"})
    body = booking_request_for(lead, section)
    assert body["name"] == "Jane Doe"
    assert body["summary"] == "Referred by John (JOHN1)"
    assert body["isFirstTimeClient"] is False and body["isSendConfirmationEmail"] is False
    assert body["contacts"] == [{"type": "Email", "value": "jane@example.com"}, {"type": "MobilePhone", "value": "8185550100"}]
    assert body["address"] == {"street": "1 Main St", "city": "Burbank", "state": "CA", "zip": "91501", "country": "USA"}
    assert body["customerType"] == "Residential" and body["priority"] == "High" and body["businessUnitId"] == 12
    assert body["start"] == "2025-06-02T15:00:00Z"
    assert schema_errors(body) == {}


def test_an_incomplete_address_is_left_out_never_sent_half():
    fields = {**seed_fields(), "address.street": {"from": "meta.Street"}, "address.city": {"from": "meta.City"},
              "address.state": {"from": "meta.State"}, "address.zip": {"from": "meta.Zip"},
              "address.country": {"from": "meta.Country"}}
    lead = SEED_LEAD.with_meta(Zip="")
    body = booking_request_for(lead, leads_section(fields))
    assert "address" not in body
    assert schema_errors(body) == {}


def test_a_missing_required_source_value_names_the_lead_and_the_field():
    lead = Lead(email="jane@example.com", referral_code="C1", campaign_name="Spring")  # no first name
    with pytest.raises(InvalidRecord) as caught:
        booking_request_for(lead, default_config().leads)
    message = str(caught.value)
    assert "jane@example.com (C1)" in message and "first_name" in message and "Name" in message
    assert caught.value.field == "name"


def test_a_missing_optional_source_value_leaves_the_field_out():
    fields = {**seed_fields(), "phone": {"from": "meta.Phone"}, "start": {"from": "signed_up_at"}}
    body = booking_request_for(Lead(**{**SEED_LEAD.__dict__, "meta": {}}), leads_section(fields))
    assert body["contacts"] == [{"type": "Email", "value": "jane@example.com"}] and "start" not in body


@pytest.mark.parametrize(
    ("target", "spec", "meta_value", "words"),
    [
        ("is_first_time_client", {"from": "meta.First"}, "maybe", "yes or no"),
        ("customer_type", {"from": "meta.Type"}, "Industrial", "Residential, Commercial"),
        ("business_unit_id", {"from": "meta.Unit"}, "twelve", "whole number"),
        ("start", {"from": "meta.When"}, "next tuesday", "date"),
        ("email", {"from": "meta.Mail"}, "not-an-email", "e-mail"),
        ("email", {"from": "meta.Mail"}, "josé@example.com", "non-ASCII characters before the @"),
        ("email", {"from": "meta.Mail"}, "a,b@example.com", "a comma"),
        ("email", {"from": "meta.Mail"}, "ann\u200f@example.com", "bidirectional-text character (U+200F)"),
        ("email", {"from": "meta.Mail"}, "a" * 65 + "@example.com", "longer than 64"),
    ],
)
def test_a_lead_value_the_target_cannot_take_is_an_invalid_record(target, spec, meta_value, words):
    label = spec["from"].split(".", 1)[1]
    section = leads_section({**seed_fields(), target: spec})
    lead = SEED_LEAD.with_meta(**{label: meta_value})
    with pytest.raises(InvalidRecord) as caught:
        booking_request_for(lead, section)
    assert words in str(caught.value) and "jane@example.com" in str(caught.value)
    assert caught.value.field == target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-12-27", "2024-12-27T00:00:00Z"),
        ("2024-12-27T10:00:00Z", "2024-12-27T10:00:00Z"),
        ("2024-12-27 10:00:00", "2024-12-27T10:00:00Z"),
        ("2024-12-27T10:00:00+02:00", "2024-12-27T08:00:00Z"),
        ("1735300800", "2024-12-27T12:00:00Z"),
    ],
)
def test_dates_become_utc_rfc3339(raw, expected):
    section = leads_section({**seed_fields(), "start": {"from": "signed_up_at"}})
    body = booking_request_for(Lead(**{**SEED_LEAD.__dict__, "signed_up_at": raw}), section)
    assert body["start"] == expected
    assert schema_errors(body) == {}


def test_setup_required_names_exactly_the_unmapped_required_targets():
    fields = seed_fields()
    del fields["summary"], fields["external_id"]
    section = leads_section(fields)
    assert missing_required(section) == ["summary", "external_id"]
    with pytest.raises(SetupRequired) as caught:
        booking_request_for(SEED_LEAD, section)
    assert caught.value.missing == ["summary", "external_id"] and caught.value.exit_code == 3
    with pytest.raises(SetupRequired):
        external_id_for(SEED_LEAD, section)


def test_referrers_section_is_named_in_setup_required():
    referrers = Config.model_validate({"referrers": {"action": "create_booking"}}).referrers
    with pytest.raises(SetupRequired) as caught:
        booking_request_for(SEED_LEAD, referrers)
    assert caught.value.section == "referrers" and caught.value.missing == list(REQUIRED_BOOKING_TARGETS)


def test_lead_fields_read_are_the_from_and_template_fields():
    section = leads_section({**seed_fields(), "name": {"template": "{first_name} {meta.Last Name}"},
                             "summary": {"template": "{{literal}} {referrer_code}"}, "phone": {"from": " meta.Phone "}})
    assert lead_fields_read(section) == {
        "campaign_name", "first_name", "meta.Last Name", "email", "referrer_code", "referral_code", "meta.Phone"}
    assert lead_fields_read(Config().referrers) == set()


# == property tests: any complete mapping + valid lead → a body the sandbox accepts ===============

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda s: s.strip())
_label = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12).filter(lambda s: s.strip())
_email = st.builds(lambda a, b: f"{a}@{b}.com", st.from_regex(r"[a-z0-9_+-]{1,8}(\.[a-z0-9_+-]{1,4})?", fullmatch=True), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
_string_fields = [f for f in LEAD_FIELDS if f not in ("email", "signed_up_at", "campaign_id")]


@st.composite
def lead_and_complete_mapping(draw):
    values: dict[str, str] = {"email": draw(_email)}
    meta: dict[str, str] = {}
    fields: dict[str, dict] = {"email": {"from": "email"}}

    def text_source(*, fixed: bool = True) -> dict:
        # The External Id is never fixed: it must differ for every lead (validation refuses it).
        choice = draw(st.sampled_from(["from", "meta", "value", "template"] if fixed else ["from", "meta", "template"]))
        if choice == "from":
            name = draw(st.sampled_from(_string_fields))
            values[name] = draw(_text)
            return {"from": name}
        if choice == "meta":
            label = f"{draw(_label)} {len(meta)}"  # unique: one form field per target
            meta[label] = draw(_text)
            return {"from": f"meta.{label}"}
        if choice == "value":
            return {"value": draw(_text)}
        first, second = draw(st.sampled_from(_string_fields)), draw(st.sampled_from(_string_fields))
        values[first] = draw(_text)
        values.setdefault(second, draw(_text))
        return {"template": f"{{{first}}} - {{{second}}}"}

    def meta_value(value: str) -> dict:
        label = f"{draw(_label)} {len(meta)}"
        meta[label] = value
        return {"from": f"meta.{label}"}

    for target in ("source", "name", "summary", "external_id"):
        fields[target] = text_source(fixed=target != "external_id")
    yes_no = st.sampled_from(["yes", "No", "TRUE", "false", "y", "0"])
    fields["is_first_time_client"] = draw(st.one_of(
        st.builds(lambda v: {"select": v}, st.sampled_from(["yes", "no"])),
        yes_no.map(meta_value),
    ))
    # Optional targets, each maybe.
    if draw(st.booleans()):
        fields["phone"] = meta_value(draw(st.from_regex(r"\+?[0-9 ()-]{7,15}", fullmatch=True).filter(str.strip)))
    if draw(st.booleans()):
        for part in ("street", "unit", "city", "state", "zip", "country"):
            if part == "unit" and draw(st.booleans()):
                continue
            fields[f"address.{part}"] = text_source()
    if draw(st.booleans()):
        fields["customer_type"] = draw(st.one_of(
            st.builds(lambda v: {"select": v}, st.sampled_from(["Residential", "Commercial"])),
            st.sampled_from(["residential", "COMMERCIAL"]).map(meta_value),
        ))
    if draw(st.booleans()):
        fields["priority"] = {"select": draw(st.sampled_from(["Low", "Normal", "High", "Urgent"]))}
    for target in ("campaign_id", "business_unit_id", "job_type_id"):
        if draw(st.booleans()):
            number = draw(st.integers(1, 2**63 - 1))
            fields[target] = draw(st.sampled_from([{"value": number}, meta_value(str(number))]))
    if draw(st.booleans()):
        moment = draw(st.datetimes(timezones=st.sampled_from([None, __import__("datetime").timezone.utc])))
        values["signed_up_at"] = draw(st.sampled_from([moment.isoformat(), moment.date().isoformat()]))
        fields["start"] = {"from": "signed_up_at"}
    if draw(st.booleans()):
        fields["send_confirmation_email"] = {"select": draw(st.sampled_from(["yes", "no"]))}
    order = draw(st.permutations(list(fields)))
    lead = Lead(**values, meta=meta)
    return lead, {target: fields[target] for target in order}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lead_and_complete_mapping())
def test_any_valid_lead_with_a_complete_mapping_yields_a_body_servicetitan_accepts(case):
    lead, fields = case
    section = leads_section(fields)
    assert booking_mapping_problems(section) == []
    body = booking_request_for(lead, section)
    assert schema_errors(body) == {}
    assert body["externalId"] == external_id_for(lead, section)
    assert {"type": "Email", "value": lead.email} in body["contacts"]
