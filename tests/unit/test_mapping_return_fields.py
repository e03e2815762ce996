"""A referrer's link and code → the customer's custom fields (stsync.mapping.return_fields)."""

from __future__ import annotations

import pytest

from stsync.errors import ConfigError
from stsync.mapping.return_fields import RefusedField, refused_custom_fields, return_field_update, return_values_for
from stsync.sandbox.schemas import validator
from stsync.servicetitan.models import Customer, CustomFieldType
from stsync.storage.config import default_config


def customer(**over) -> Customer:
    data = {"id": 1673, "name": "Jane Doe", "type": "Residential", "active": True,
            "customFields": [{"typeId": 57, "name": "Gate Code", "value": "1234"}]}
    return Customer.model_validate({**data, **over})


TYPES = [CustomFieldType(id=101, name="Referral Link", data_type="Text"), CustomFieldType(id=102, name="Referral Code", data_type="Text"),
         CustomFieldType(id=57, name="Gate Code", data_type="Text"), CustomFieldType(id=60, name="Tier", data_type="Dropdown")]
VALUES = {"Referral Link": "https://example.referral-factory.com/ueONFmUp", "Referral Code": "ueONFmUp"}


def test_return_fields_keep_every_other_custom_field():
    body = return_field_update(customer(), VALUES, TYPES)
    assert body == {"customFields": [{"typeId": 57, "value": "1234"},
                                     {"typeId": 101, "value": VALUES["Referral Link"]}, {"typeId": 102, "value": "ueONFmUp"}]}
    assert validator().errors("Crm.V2.Customers.UpdateCustomerRequest", body) == {}


def test_return_fields_unchanged_is_none_and_a_change_rewrites_in_place():
    written = customer(customFields=[{"typeId": 101, "name": "Referral Link", "value": VALUES["Referral Link"]},
                                     {"typeId": 102, "name": "Referral Code", "value": "ueONFmUp"}])
    assert return_field_update(written, VALUES, TYPES) is None
    changed = return_field_update(written, {**VALUES, "Referral Code": "NEW"}, TYPES)
    assert changed == {"customFields": [{"typeId": 101, "value": VALUES["Referral Link"]}, {"typeId": 102, "value": "NEW"}]}


def test_return_field_names_resolve_case_insensitively_and_unknown_or_non_text_fail():
    assert return_field_update(customer(customFields=[]), {"referral link": "x"}, TYPES) == {"customFields": [{"typeId": 101, "value": "x"}]}
    with pytest.raises(ConfigError) as caught:
        return_field_update(customer(), {"Referal Link": "x"}, TYPES)
    assert "did you mean 'Referral Link'" in str(caught.value) and "validate --online" in caught.value.hint
    with pytest.raises(ConfigError, match="not Text"):
        return_field_update(customer(), {"Tier": "x"}, TYPES)


def test_return_values_for_the_configured_fields():
    assert return_values_for(default_config().customer_sync.return_fields, referral_link="L", referral_code="C") == {
        "Referral Link": "L", "Referral Code": "C"}



def test_another_configured_return_field_is_never_the_suggestion():
    types = [CustomFieldType(id=101, name="Referral Link", data_type="Text")]
    with pytest.raises(ConfigError) as caught:
        return_field_update(customer(), {"Referral Link": "L", "Referral Code": "C"}, types)
    assert "'Referral Code'" in str(caught.value) and "did you mean" not in str(caught.value)


def test_empty_values_are_left_out_and_every_other_value_is_sent_back_even_of_a_retired_type():
    held = customer(customFields=[
        {"typeId": 57, "name": "Gate Code", "value": ""},            # empty: nothing to keep
        {"typeId": 60, "name": "Tier", "value": "   "},              # blank too
        {"typeId": 61, "name": "Old Note", "value": None},           # no value at all
        {"typeId": 106, "name": "Alarm Code", "value": "0123"},      # a type the tenant no longer lists
        {"typeId": 106, "name": "Alarm Code", "value": "9999"},      # a duplicate row: the first one wins
    ])
    body = return_field_update(held, VALUES, TYPES)
    assert body == {"customFields": [{"typeId": 106, "value": "0123"},
                                     {"typeId": 101, "value": VALUES["Referral Link"]}, {"typeId": 102, "value": "ueONFmUp"}]}


REFUSAL_TYPES = TYPES + [CustomFieldType(id=104, name="Preferred Technician", data_type="Dropdown", data_type_options=["Alex", "Sam"]),
                         CustomFieldType(id=105, name="Square Footage", data_type="Numeric")]
SENT = {"customFields": [{"typeId": 104, "value": "Chris"}, {"typeId": 105, "value": "about 900"},
                         {"typeId": 106, "value": "0123"}, {"typeId": 57, "value": "1234"},
                         {"typeId": 101, "value": "https://x/y"}, {"typeId": 102, "value": "y"}]}


def test_a_refusal_naming_entries_blames_those_of_the_customers_own():
    errors = {"CustomFields[0].Value": ["'Chris' is not an option."], "customFields[4].value": ["Too long."]}
    refused = refused_custom_fields(errors, SENT, REFUSAL_TYPES, written=[101, 102])
    assert refused == [RefusedField(104, "Preferred Technician", "Chris", "'Chris' is not an option.")]
    # Only our own value refused: nothing of the customer's to blame.
    assert refused_custom_fields({"CustomFields[4].Value": ["Too long."]}, SENT, REFUSAL_TYPES, written=[101, 102]) == []


def test_a_refusal_naming_nothing_blames_the_values_that_cannot_be_valid_today():
    refused = refused_custom_fields({}, SENT, REFUSAL_TYPES, written=[101, 102], names={106: "Alarm Code"})
    assert [(f.type_id, f.name, f.value, f.problem) for f in refused] == [
        (104, "Preferred Technician", "Chris", "not one of the field's options (Alex, Sam)"),
        (105, "Square Footage", "about 900", "not a number, and the field is Numeric"),
        (106, "Alarm Code", "0123", "the tenant no longer lists this custom field"),
    ]
    assert refused[0].describe() == (
        "custom field 'Preferred Technician' (type 104) = 'Chris' (not one of the field's options (Alex, Sam))"
    )
    fine = {"customFields": [{"typeId": 104, "value": "Sam"}, {"typeId": 105, "value": "1,200"[:1]}]}
    assert refused_custom_fields(None, fine, REFUSAL_TYPES, written=[]) == []
