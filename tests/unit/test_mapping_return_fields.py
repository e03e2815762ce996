"""A referrer's link and code → the customer's custom fields (stsync.mapping.return_fields)."""

from __future__ import annotations

import pytest

from stsync.errors import ConfigError
from stsync.mapping.return_fields import return_field_update, return_values_for
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
