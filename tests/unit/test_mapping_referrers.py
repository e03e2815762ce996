"""ServiceTitan customer → Referral Factory referrer (stsync.mapping.referrers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stsync.mapping.referrers import ReferrerRequest, Skip, referrer_request_for, split_customer_name
from stsync.servicetitan.models import Customer, CustomerContact
from stsync.storage.config import Config, TemplateValue, default_config


def customer(**over) -> Customer:
    data = {"id": 1673, "name": "Jane Doe", "type": "Residential", "active": True,
            "customFields": [{"typeId": 57, "name": "Gate Code", "value": "1234"}],
            "address": {"street": "1 Main St", "city": "Burbank", "state": "CA", "zip": "91501", "country": "USA"}}
    return Customer.model_validate({**data, **over})


def contact(id: int, type: str, value: str, active: bool = True) -> CustomerContact:
    return CustomerContact.model_validate({"id": id, "customerId": 1673, "type": type, "value": value, "active": active})


SYNC_FIELDS = default_config().customer_sync.fields


def test_default_customer_mapping_makes_the_referrer_body():
    request = referrer_request_for(
        customer(), [contact(9, "Email", "second@example.com"), contact(3, "Phone", "555"), contact(5, "Email", "jane@example.com")],
        SYNC_FIELDS, campaign_id=7,
    )
    assert isinstance(request, ReferrerRequest)
    assert request.body == {"campaign_id": 7, "first_name": "Jane", "email": "jane@example.com", "notify": False}
    assert request.email == "jane@example.com" and request.customer_id == 1673
    again = referrer_request_for(customer(), [contact(5, "Email", "jane@example.com")], SYNC_FIELDS, campaign_id=7)
    assert again.fingerprint == request.fingerprint
    renamed = referrer_request_for(customer(name="Janet Doe"), [contact(5, "Email", "jane@example.com")], SYNC_FIELDS, campaign_id=7)
    assert renamed.fingerprint != request.fingerprint


def test_meta_fields_last_name_custom_fields_and_templates():
    fields = Config.model_validate({"customer_sync": {"fields": {
        "first_name": {"from": "customer.first_name"}, "email": {"from": "contact.email"},
        "meta.Last Name": {"from": "customer.last_name"}, "meta.Gate": {"from": "custom.gate code"},
        "meta.City": {"template": "{address.city}, {address.state}"}, "meta.Phone": {"from": "contact.phone"},
    }}}).customer_sync.fields
    request = referrer_request_for(customer(name="Doe, Jane"), [contact(1, "Email", "jane@example.com"), contact(2, "MobilePhone", "8185550100")], fields, campaign_id=7)
    assert request.body["first_name"] == "Jane"
    assert request.body["meta"] == [
        {"field": "City", "value": "Burbank, CA"}, {"field": "Gate", "value": "1234"},
        {"field": "Last Name", "value": "Doe"}, {"field": "Phone", "value": "8185550100"},
    ]


def test_commercial_customers_use_the_company_name():
    request = referrer_request_for(customer(name="Acme Plumbing LLC", type="Commercial"), [contact(1, "Email", "ops@acme.com")], SYNC_FIELDS, campaign_id=7)
    assert request.body["first_name"] == "Acme Plumbing LLC"


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [("Jane Doe", "Jane", "Doe"), ("Doe, Jane", "Jane", "Doe"), ("John & Mary Smith", "John & Mary", "Smith"),
     ("Ana de la Cruz Jr.", "Ana", "de la Cruz Jr."), ("Cher", "Cher", None), ("John Smith, Jr.", "John", "Smith Jr.")],
)
def test_residential_name_split(name, first, last):
    assert split_customer_name(name, "Residential") == (first, last)


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
    result = referrer_request_for(customer(**over), contacts, SYNC_FIELDS, campaign_id=7)
    assert isinstance(result, Skip) and result.reason == reason


def test_inactive_customers_can_be_included():
    result = referrer_request_for(customer(active=False), [contact(1, "Email", "a@b.co")], SYNC_FIELDS, campaign_id=7, include_inactive=True)
    assert isinstance(result, ReferrerRequest)


def test_ledger_contact_rows_work_as_contacts():
    rows = [SimpleNamespace(contact_id=4, customer_id=1673, type="Email", value="jane@example.com", active=1, modified_on=None)]
    result = referrer_request_for(customer(), rows, SYNC_FIELDS, campaign_id=7)
    assert result.email == "jane@example.com"


@pytest.mark.parametrize(
    ("email", "words"),
    [
        ("josé@example.com", "non-ASCII characters before the @"),
        ("a,b@example.com", "a comma"),
        ("jane\u202e@example.com", "bidirectional-text character (U+202E)"),
        ("jane\x07@example.com", "control or bidirectional-text character (U+0007)"),
        ("j" * 65 + "@example.com", "longer than 64 characters"),
        ("jane..doe@example.com", "characters or dots"),
        ("jane@example", "has no dot"),
    ],
)
def test_an_email_referral_factory_refuses_is_skipped_as_invalid_with_its_reason(email, words):
    result = referrer_request_for(customer(), [contact(1, "Email", email)], SYNC_FIELDS, campaign_id=7)
    assert isinstance(result, Skip) and result.reason == "invalid_email"
    assert words in result.detail and repr(email) in result.detail


def test_the_first_email_referral_factory_accepts_is_the_one_used():
    contacts = [contact(1, "Email", "josé@example.com"), contact(2, "Email", "jose@example.com")]
    result = referrer_request_for(customer(), contacts, SYNC_FIELDS, campaign_id=7)
    assert isinstance(result, ReferrerRequest) and result.email == "jose@example.com"


def test_a_mapped_email_referral_factory_refuses_is_skipped_too():
    fields = {**SYNC_FIELDS, "email": TemplateValue(template="{customer.name}@example.com")}
    result = referrer_request_for(customer(name="Jane Doe"), [], fields, campaign_id=7)
    assert isinstance(result, Skip) and result.reason == "invalid_email" and "a space" in result.detail
