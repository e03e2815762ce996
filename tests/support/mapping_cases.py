"""Shared cases for the mapping engine's tests: the seed's lead, its mapping, and what the
sandbox (ServiceTitan's own schema) answers to a CreateBookingRequest."""

from __future__ import annotations

from stsync.leads import Lead
from stsync.sandbox.schemas import validator
from stsync.storage.config import Config, LeadSettings

CREATE_BOOKING_REQUEST = "Crm.V2.CreateBookingRequest"

SEED_LEAD = Lead(
    first_name="Jane", email="jane@example.com", referral_code="ueONFmUp", campaign_name="Spring Referrals",
    meta={"Last Name": "Doe", "Phone": "8185550100", "Street": "1 Main St", "City": "Burbank", "State": "CA",
          "Zip": "91501", "Country": "USA"},
)


def schema_errors(body: dict) -> dict:
    """What the sandbox would answer (``{}`` = accepted)."""
    return validator().errors(CREATE_BOOKING_REQUEST, body)


def leads_section(fields: dict, action: str = "create_booking") -> LeadSettings:
    return Config.model_validate({"leads": {"action": action, "fields": fields}}).leads


def seed_fields() -> dict:
    """The seed's default [leads.fields], as TOML tables."""
    return {
        "source": {"from": "campaign_name"},
        "name": {"from": "first_name"},
        "email": {"from": "email"},
        "summary": {"value": "Referral"},
        "is_first_time_client": {"select": "yes"},
        "external_id": {"from": "referral_code"},
    }
