"""What a mapping may name (SPEC §3), and how the setup guide labels it.

- Booking targets are ``servicetitan.vocabulary.BOOKING_TARGETS``; ``target_kind(target)`` is
  the kind of value each takes, ``select_options(target)`` its Manual Select options (empty
  for free text), ``BOOKING_TARGET_LABELS`` the setup guide's names.
- Customer sources (``[customer_sync.fields]`` values): ``CUSTOMER_SOURCES`` plus
  ``custom.<custom field name>``; ``is_customer_source`` says whether a name is one.
- Referrer targets: ``REFERRER_TARGETS`` plus ``meta.<form field label>``.
- Return values: ``RETURN_VALUES`` (what ``[customer_sync.return_fields]`` may write back).

Lead sources are the Lead's own vocabulary (``stsync.leads``). Constants only, and
lookups that cannot fail on a known target.
"""

from __future__ import annotations

from stsync.servicetitan.vocabulary import ADDRESS_PARTS, BOOKING_TARGETS, SELECT_OPTIONS
from stsync.vocabulary import ReturnValue

# How the setup guide's table (Step 5) and ServiceTitan's screens name each booking target.
BOOKING_TARGET_LABELS: dict[str, str] = {
    "source": "Source",
    "name": "Name",
    "email": "Email",
    "summary": "Summary",
    "is_first_time_client": "Is First Time Client",
    "external_id": "External Id",
    "phone": "Phone",
    "address.street": "Address: Street",
    "address.unit": "Address: Unit",
    "address.city": "Address: City",
    "address.state": "Address: State",
    "address.zip": "Address: Zip",
    "address.country": "Address: Country",
    "customer_type": "Customer Type",
    "priority": "Priority",
    "campaign_id": "Campaign Id",
    "business_unit_id": "Business Unit Id",
    "job_type_id": "Job Type Id",
    "start": "Start",
    "send_confirmation_email": "Send Confirmation Email",
}

# -- customers → referrers (SPEC §3 "Customer sources") ----------------------------------------
CUSTOMER_SOURCES: tuple[str, ...] = (
    "customer.id",
    "customer.name",
    "customer.first_name",
    "customer.last_name",
    "customer.type",
    *(f"address.{part}" for part in ADDRESS_PARTS),
    "contact.email",
    "contact.phone",
)
CUSTOM_PREFIX = "custom."
REFERRER_TARGETS: tuple[str, ...] = ("first_name", "email")  # plus meta.<label>
REQUIRED_REFERRER_TARGETS: tuple[str, ...] = ("first_name", "email")
RETURN_VALUES: tuple[str, ...] = tuple(ReturnValue)


def target_kind(target: str) -> str:
    """The kind of value a booking target takes (``string``, ``yes_no``, ``integer``, ...)."""
    return BOOKING_TARGETS[target][1]


def select_options(target: str) -> tuple[str, ...]:
    """The options of a booking target's Manual Select; empty for free-text (or unknown) targets."""
    return SELECT_OPTIONS.get(target_kind(target), ()) if target in BOOKING_TARGETS else ()


def is_customer_source(source: str) -> bool:
    return source in CUSTOMER_SOURCES or (source.startswith(CUSTOM_PREFIX) and bool(source[len(CUSTOM_PREFIX) :].strip()))
