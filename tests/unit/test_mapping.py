"""The mapping engine: leads → CreateBookingRequest (checked against ServiceTitan's own schema,
as the sandbox checks it), customers → referrers, return fields → custom-field updates, and
the seed's defaults and "Setup Required"."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stsync.errors import ConfigError, InvalidRecord, SetupRequired
from stsync.sandbox.schemas import validator
from stsync.services import mapping
from stsync.services.leads import LEAD_FIELDS, Lead
from stsync.servicetitan.models import Customer, CustomerContact, CustomFieldType
from stsync.servicetitan.vocabulary import REQUIRED_BOOKING_TARGETS
from stsync.storage.config import Config, default_config

CREATE_BOOKING = "Crm.V2.CreateBookingRequest"


def schema_errors(body: dict) -> dict:
    """What the sandbox would answer (``{}`` = accepted)."""
    return validator().errors(CREATE_BOOKING, body)


def leads_section(fields: dict, action: str = "create_booking"):
    return Config.model_validate({"leads": {"action": action, "fields": fields}}).leads


SEED_LEAD = Lead(
    first_name="Jane", email="jane@example.com", referral_code="ueONFmUp", campaign_name="Spring Referrals",
    meta={"Last Name": "Doe", "Phone": "8185550100", "Street": "1 Main St", "City": "Burbank", "State": "CA",
          "Zip": "91501", "Country": "USA"},
)


# == the seed's defaults ==========================================================================


def test_default_mapping_is_the_setup_guides_step_5_table(shared_dir: Path):
    """Every row of the seed's table, as `map show` renders it, from the default config."""
    text = (shared_dir / "seeds" / "servicetitan-integration-setup.txt").read_text(encoding="utf-8")
    seed_rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("Dynamic Value", "Fixed Value (Manual Input)", "Fixed Value (Manual Select)"):
            seed_rows.append(cells)
    assert len(seed_rows) == 6
    rows = mapping.booking_rows(default_config().leads)
    assert len(rows) == 6 and all(row.required for row in rows)
    for (data_type, source, target), row in zip(seed_rows, rows):
        assert row.data_type == data_type
        assert row.source.strip('"').casefold() == source.replace("*", "").strip().strip('"').casefold()
        # The seed leaves Email's target blank (it becomes a booking contact).
        assert row.target_label == (target.replace("*", "").strip() or "Email")


def test_default_mapping_makes_the_seed_booking():
    body = mapping.booking_request_for(SEED_LEAD, default_config().leads, kind="lead")
    assert body == {
        "source": "Spring Referrals",
        "name": "Jane",
        "summary": "Referral",
        "isFirstTimeClient": True,
        "externalId": "ueONFmUp",
        "contacts": [{"type": "Email", "value": "jane@example.com"}],
    }
    assert schema_errors(body) == {}
    assert mapping.external_id_for(SEED_LEAD, default_config().leads) == "ueONFmUp"
    assert mapping.missing_required(default_config().leads) == []


def test_troubleshooting_guides_required_fields_are_the_required_targets(shared_dir: Path):
    text = (shared_dir / "seeds" / "servicetitan-troubleshooting.txt").read_text(encoding="utf-8")
    listed = re.search(r"The required ServiceTitan fields are: (.+?)\. Make sure", text).group(1)
    names = [n.strip() for n in re.split(r",\s*(?:and\s+)?|\s+and\s+", listed) if n.strip()]
    assert [mapping.BOOKING_TARGET_LABELS[t] for t in REQUIRED_BOOKING_TARGETS] == names


# == lead → booking ===============================================================================


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
    body = mapping.booking_request_for(lead, section, kind="lead")
    assert body["name"] == "Jane Doe"
    assert body["summary"] == "Referred by John (JOHN1)"
    assert body["isFirstTimeClient"] is False and body["isSendConfirmationEmail"] is False
    assert body["contacts"] == [{"type": "Email", "value": "jane@example.com"}, {"type": "MobilePhone", "value": "8185550100"}]
    assert body["address"] == {"street": "1 Main St", "city": "Burbank", "state": "CA", "zip": "91501", "country": "USA"}
    assert body["customerType"] == "Residential" and body["priority"] == "High" and body["businessUnitId"] == 12
    assert body["start"] == "2025-06-02T15:00:00Z"
    assert schema_errors(body) == {}


def test_an_incomplete_address_is_left_out_never_sent_half():
    fields = {**_seed_fields(), "address.street": {"from": "meta.Street"}, "address.city": {"from": "meta.City"},
              "address.state": {"from": "meta.State"}, "address.zip": {"from": "meta.Zip"},
              "address.country": {"from": "meta.Country"}}
    lead = SEED_LEAD.with_meta(Zip="")
    body = mapping.booking_request_for(lead, leads_section(fields))
    assert "address" not in body
    assert schema_errors(body) == {}


def test_a_missing_required_source_value_names_the_lead_and_the_field():
    lead = Lead(email="jane@example.com", referral_code="C1", campaign_name="Spring")  # no first name
    with pytest.raises(InvalidRecord) as caught:
        mapping.booking_request_for(lead, default_config().leads)
    message = str(caught.value)
    assert "jane@example.com (C1)" in message and "first_name" in message and "Name" in message
    assert caught.value.field == "name"


def test_a_missing_optional_source_value_leaves_the_field_out():
    fields = {**_seed_fields(), "phone": {"from": "meta.Phone"}, "start": {"from": "signed_up_at"}}
    body = mapping.booking_request_for(Lead(**{**SEED_LEAD.__dict__, "meta": {}}), leads_section(fields))
    assert body["contacts"] == [{"type": "Email", "value": "jane@example.com"}] and "start" not in body


@pytest.mark.parametrize(
    ("target", "spec", "meta_value", "words"),
    [
        ("is_first_time_client", {"from": "meta.First"}, "maybe", "yes or no"),
        ("customer_type", {"from": "meta.Type"}, "Industrial", "Residential, Commercial"),
        ("business_unit_id", {"from": "meta.Unit"}, "twelve", "whole number"),
        ("start", {"from": "meta.When"}, "next tuesday", "date"),
        ("email", {"from": "meta.Mail"}, "not-an-email", "e-mail"),
    ],
)
def test_a_lead_value_the_target_cannot_take_is_an_invalid_record(target, spec, meta_value, words):
    label = spec["from"].split(".", 1)[1]
    section = leads_section({**_seed_fields(), target: spec})
    lead = SEED_LEAD.with_meta(**{label: meta_value})
    with pytest.raises(InvalidRecord) as caught:
        mapping.booking_request_for(lead, section)
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
    section = leads_section({**_seed_fields(), "start": {"from": "signed_up_at"}})
    body = mapping.booking_request_for(Lead(**{**SEED_LEAD.__dict__, "signed_up_at": raw}), section)
    assert body["start"] == expected
    assert schema_errors(body) == {}


def test_setup_required_names_exactly_the_unmapped_required_targets():
    fields = _seed_fields()
    del fields["summary"], fields["external_id"]
    section = leads_section(fields)
    assert mapping.missing_required(section) == ["summary", "external_id"]
    with pytest.raises(SetupRequired) as caught:
        mapping.booking_request_for(SEED_LEAD, section)
    assert caught.value.missing == ["summary", "external_id"] and caught.value.exit_code == 3
    with pytest.raises(SetupRequired):
        mapping.external_id_for(SEED_LEAD, section)


def test_referrers_section_is_named_in_setup_required():
    referrers = Config.model_validate({"referrers": {"action": "create_booking"}}).referrers
    with pytest.raises(SetupRequired) as caught:
        mapping.booking_request_for(SEED_LEAD, referrers)
    assert caught.value.section == "referrers" and caught.value.missing == list(REQUIRED_BOOKING_TARGETS)


@pytest.mark.parametrize(
    ("target", "spec", "words"),
    [
        ("nmae", {"from": "first_name"}, "did you mean 'name'"),
        ("name", {"from": "frist_name"}, "did you mean 'first_name'"),
        ("priority", {"select": "ASAP"}, "Low, Normal, High, Urgent"),
        ("summary", {"select": "Referral"}, "not a Manual Select"),
        ("name", {"template": "{first_name} {last_nam}"}, "last_nam"),
        ("job_type_id", {"value": "abc"}, "whole number"),
    ],
)
def test_an_invalid_mapping_entry_is_a_config_error_with_key_path(target, spec, words):
    section = leads_section({**_seed_fields(), target: spec})
    problems = mapping.booking_mapping_problems(section, kind="leads")
    assert len(problems) == 1 and words in str(problems[0]) + (problems[0].hint or "")
    assert problems[0].key_path == f"leads.fields.{target}"
    with pytest.raises(ConfigError):
        mapping.booking_request_for(SEED_LEAD, section)


def test_template_literal_braces_and_unmatched_braces():
    assert mapping.template_fields("{{code}} {referral_code}") == ["referral_code"]
    assert mapping.render_template("{{x}} {a}", {"a": "1"}.get) == "{x} 1"
    with pytest.raises(ConfigError, match="unmatched"):
        mapping.template_fields("{first_name")


# == property tests: any complete mapping + valid lead → a body the sandbox accepts ===============

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda s: s.strip())
_label = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12).filter(lambda s: s.strip())
_email = st.builds(lambda a, b: f"{a}@{b}.com", st.from_regex(r"[a-z0-9._+-]{1,12}", fullmatch=True), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
_string_fields = [f for f in LEAD_FIELDS if f not in ("email", "signed_up_at", "campaign_id")]


@st.composite
def lead_and_complete_mapping(draw):
    values: dict[str, str] = {"email": draw(_email)}
    meta: dict[str, str] = {}
    fields: dict[str, dict] = {"email": {"from": "email"}}

    def text_source() -> dict:
        choice = draw(st.sampled_from(["from", "meta", "value", "template"]))
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
        fields[target] = text_source()
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
    assert mapping.booking_mapping_problems(section, kind="leads") == []
    body = mapping.booking_request_for(lead, section, kind="lead")
    assert schema_errors(body) == {}
    assert body["externalId"] == mapping.external_id_for(lead, section)
    assert {"type": "Email", "value": lead.email} in body["contacts"]


@settings(max_examples=100, deadline=None)
@given(
    dropped=st.sets(st.sampled_from(REQUIRED_BOOKING_TARGETS), min_size=1),
    action=st.sampled_from(["create_booking", "nothing"]),
)
def test_any_incomplete_mapping_is_setup_required_with_exactly_the_missing_targets(dropped, action):
    fields = {t: s for t, s in _seed_fields().items() if t not in dropped}
    section = leads_section(fields, action=action)
    expected = [t for t in REQUIRED_BOOKING_TARGETS if t in dropped]
    assert mapping.missing_required(section) == expected
    with pytest.raises(SetupRequired) as caught:
        mapping.booking_request_for(SEED_LEAD, section, kind="lead")
    assert caught.value.missing == expected
    config = Config.model_validate({"leads": {"action": action, "fields": fields}})
    overview = mapping.mapping_overview(config, sections=("leads",))["leads"]
    assert overview["missing"] == expected
    assert overview["setup_required"] is (action == "create_booking")
    assert [r["target"] for r in overview["fields"] if not r["mapped"]] == expected


# == customers → referrers ========================================================================


def customer(**over) -> Customer:
    data = {"id": 1673, "name": "Jane Doe", "type": "Residential", "active": True,
            "customFields": [{"typeId": 57, "name": "Gate Code", "value": "1234"}],
            "address": {"street": "1 Main St", "city": "Burbank", "state": "CA", "zip": "91501", "country": "USA"}}
    return Customer.model_validate({**data, **over})


def contact(id: int, type: str, value: str, active: bool = True) -> CustomerContact:
    return CustomerContact.model_validate({"id": id, "customerId": 1673, "type": type, "value": value, "active": active})


SYNC_FIELDS = default_config().customer_sync.fields


def test_default_customer_mapping_makes_the_referrer_body():
    request = mapping.referrer_request_for(
        customer(), [contact(9, "Email", "second@example.com"), contact(3, "Phone", "555"), contact(5, "Email", "jane@example.com")],
        SYNC_FIELDS, campaign_id=7,
    )
    assert isinstance(request, mapping.ReferrerRequest)
    assert request.body == {"campaign_id": 7, "first_name": "Jane", "email": "jane@example.com", "notify": False}
    assert request.email == "jane@example.com" and request.customer_id == 1673
    again = mapping.referrer_request_for(customer(), [contact(5, "Email", "jane@example.com")], SYNC_FIELDS, campaign_id=7)
    assert again.fingerprint == request.fingerprint
    renamed = mapping.referrer_request_for(customer(name="Janet Doe"), [contact(5, "Email", "jane@example.com")], SYNC_FIELDS, campaign_id=7)
    assert renamed.fingerprint != request.fingerprint


def test_meta_fields_last_name_custom_fields_and_templates():
    fields = Config.model_validate({"customer_sync": {"fields": {
        "first_name": {"from": "customer.first_name"}, "email": {"from": "contact.email"},
        "meta.Last Name": {"from": "customer.last_name"}, "meta.Gate": {"from": "custom.gate code"},
        "meta.City": {"template": "{address.city}, {address.state}"}, "meta.Phone": {"from": "contact.phone"},
    }}}).customer_sync.fields
    request = mapping.referrer_request_for(customer(name="Doe, Jane"), [contact(1, "Email", "jane@example.com"), contact(2, "MobilePhone", "8185550100")], fields, campaign_id=7)
    assert request.body["first_name"] == "Jane"
    assert request.body["meta"] == [
        {"field": "City", "value": "Burbank, CA"}, {"field": "Gate", "value": "1234"},
        {"field": "Last Name", "value": "Doe"}, {"field": "Phone", "value": "8185550100"},
    ]


def test_commercial_customers_use_the_company_name():
    request = mapping.referrer_request_for(customer(name="Acme Plumbing LLC", type="Commercial"), [contact(1, "Email", "ops@acme.com")], SYNC_FIELDS, campaign_id=7)
    assert request.body["first_name"] == "Acme Plumbing LLC"


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [("Jane Doe", "Jane", "Doe"), ("Doe, Jane", "Jane", "Doe"), ("John & Mary Smith", "John & Mary", "Smith"),
     ("Ana de la Cruz Jr.", "Ana", "de la Cruz Jr."), ("Cher", "Cher", None), ("John Smith, Jr.", "John", "Smith Jr.")],
)
def test_residential_name_split(name, first, last):
    assert mapping.split_customer_name(name, "Residential") == (first, last)


@pytest.mark.parametrize(
    ("over", "contacts", "reason"),
    [
        ({"mergedToId": 99, "active": False}, [contact(1, "Email", "a@b.co")], "merged"),
        ({"active": False}, [contact(1, "Email", "a@b.co")], "inactive"),
        ({}, [contact(1, "Phone", "555")], "no_email"),
        ({}, [contact(1, "Email", "a@b.co", active=False)], "no_email"),
        ({}, [contact(1, "Email", "not an email"), contact(2, "Email", "also@bad")], "invalid_email"),
    ],
)
def test_skip_reasons(over, contacts, reason):
    result = mapping.referrer_request_for(customer(**over), contacts, SYNC_FIELDS, campaign_id=7)
    assert isinstance(result, mapping.Skip) and result.reason == reason


def test_inactive_customers_can_be_included():
    result = mapping.referrer_request_for(customer(active=False), [contact(1, "Email", "a@b.co")], SYNC_FIELDS, campaign_id=7, include_inactive=True)
    assert isinstance(result, mapping.ReferrerRequest)


def test_ledger_contact_rows_work_as_contacts():
    rows = [SimpleNamespace(contact_id=4, customer_id=1673, type="Email", value="jane@example.com", active=1, modified_on=None)]
    result = mapping.referrer_request_for(customer(), rows, SYNC_FIELDS, campaign_id=7)
    assert result.email == "jane@example.com"


# == return fields ================================================================================

TYPES = [CustomFieldType(id=101, name="Referral Link", data_type="Text"), CustomFieldType(id=102, name="Referral Code", data_type="Text"),
         CustomFieldType(id=57, name="Gate Code", data_type="Text"), CustomFieldType(id=60, name="Tier", data_type="Dropdown")]
VALUES = {"Referral Link": "https://example.referral-factory.com/ueONFmUp", "Referral Code": "ueONFmUp"}


def test_return_fields_keep_every_other_custom_field():
    body = mapping.return_field_update(customer(), VALUES, TYPES)
    assert body == {"customFields": [{"typeId": 57, "value": "1234"},
                                     {"typeId": 101, "value": VALUES["Referral Link"]}, {"typeId": 102, "value": "ueONFmUp"}]}
    assert validator().errors("Crm.V2.Customers.UpdateCustomerRequest", body) == {}


def test_return_fields_unchanged_is_none_and_a_change_rewrites_in_place():
    written = customer(customFields=[{"typeId": 101, "name": "Referral Link", "value": VALUES["Referral Link"]},
                                     {"typeId": 102, "name": "Referral Code", "value": "ueONFmUp"}])
    assert mapping.return_field_update(written, VALUES, TYPES) is None
    changed = mapping.return_field_update(written, {**VALUES, "Referral Code": "NEW"}, TYPES)
    assert changed == {"customFields": [{"typeId": 101, "value": VALUES["Referral Link"]}, {"typeId": 102, "value": "NEW"}]}


def test_return_field_names_resolve_case_insensitively_and_unknown_or_non_text_fail():
    assert mapping.return_field_update(customer(customFields=[]), {"referral link": "x"}, TYPES) == {"customFields": [{"typeId": 101, "value": "x"}]}
    with pytest.raises(ConfigError) as caught:
        mapping.return_field_update(customer(), {"Referal Link": "x"}, TYPES)
    assert "did you mean 'Referral Link'" in str(caught.value) and "validate --online" in caught.value.hint
    with pytest.raises(ConfigError, match="not Text"):
        mapping.return_field_update(customer(), {"Tier": "x"}, TYPES)


def test_return_values_for_the_configured_fields():
    assert mapping.return_values_for(default_config().customer_sync.return_fields, referral_link="L", referral_code="C") == {
        "Referral Link": "L", "Referral Code": "C"}


def _seed_fields() -> dict:
    return {
        "source": {"from": "campaign_name"},
        "name": {"from": "first_name"},
        "email": {"from": "email"},
        "summary": {"value": "Referral"},
        "is_first_time_client": {"select": "yes"},
        "external_id": {"from": "referral_code"},
    }


def test_another_configured_return_field_is_never_the_suggestion():
    types = [CustomFieldType(id=101, name="Referral Link", data_type="Text")]
    with pytest.raises(ConfigError) as caught:
        mapping.return_field_update(customer(), {"Referral Link": "L", "Referral Code": "C"}, types)
    assert "'Referral Code'" in str(caught.value) and "did you mean" not in str(caught.value)
