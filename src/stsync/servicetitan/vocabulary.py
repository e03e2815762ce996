"""ServiceTitan's fixed vocabularies, as its v2 specs define them (api/servicetitan.md §5–6).

Shared by the config schema, the mapping engine and the client. The sandbox keeps its own
copy on purpose: it is a neighbour of the client, never a dependent.
"""

from __future__ import annotations

from typing import Literal, get_args

# Jpm.V2.JobStatus — no endpoint lists them; compare case-sensitively.
JobStatus = Literal["Scheduled", "Dispatched", "InProgress", "Hold", "Completed", "Canceled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)

# Crm.V2.BookingStatus — there is no "Pending"; conversion is detected by jobId.
BOOKING_STATUSES = ("New", "Converted", "Dismissed", "Accepted")

# Crm.V2.Customers.ContactType. "Phone" means a landline.
CONTACT_TYPES = ("Phone", "MobilePhone", "Email", "Fax")

CUSTOMER_TYPES = ("Residential", "Commercial")
PRIORITIES = ("Low", "Normal", "High", "Urgent")

# Booking targets a mapping may fill: name in the config → (JSON path in
# CreateBookingRequest, value kind). Required ones carry the seed's asterisk.
REQUIRED_BOOKING_TARGETS = ("source", "name", "email", "summary", "is_first_time_client", "external_id")

BOOKING_TARGETS: dict[str, tuple[str, str]] = {
    "source": ("source", "string"),
    "name": ("name", "string"),
    "email": ("contacts[Email]", "string"),
    "summary": ("summary", "string"),
    "is_first_time_client": ("isFirstTimeClient", "yes_no"),
    "external_id": ("externalId", "string"),
    "phone": ("contacts[MobilePhone]", "string"),
    "address.street": ("address.street", "string"),
    "address.unit": ("address.unit", "string"),
    "address.city": ("address.city", "string"),
    "address.state": ("address.state", "string"),
    "address.zip": ("address.zip", "string"),
    "address.country": ("address.country", "string"),
    "customer_type": ("customerType", "customer_type"),
    "priority": ("priority", "priority"),
    "campaign_id": ("campaignId", "integer"),
    "business_unit_id": ("businessUnitId", "integer"),
    "job_type_id": ("jobTypeId", "integer"),
    "start": ("start", "datetime"),
    "send_confirmation_email": ("isSendConfirmationEmail", "yes_no"),
}

# The options of each "Manual Select" kind.
SELECT_OPTIONS: dict[str, tuple[str, ...]] = {
    "yes_no": ("yes", "no"),
    "customer_type": CUSTOMER_TYPES,
    "priority": PRIORITIES,
}

ADDRESS_PARTS = ("street", "unit", "city", "state", "zip", "country")
REQUIRED_ADDRESS_PARTS = ("street", "city", "state", "zip", "country")
