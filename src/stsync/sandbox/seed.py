"""Deterministic, realistic starting data for both services (same ``seed`` → same data).

ServiceTitan: residential and commercial customers, non-ASCII names, inactive and merged
customers, customers with no e-mail, with two e-mails or with a malformed e-mail, phone
contacts (mobile and landline), custom-field types "Referral Link" and "Referral Code" plus
unrelated ones ("Gate Code", "Preferred Technician") whose values must survive writes, the
booking provider tag of the app, another provider's tag, and job types.

Referral Factory: a launched campaign with referrers and referred leads, a paused campaign
with its own users (one lead already qualified, one sharing an e-mail with a lead of the
launched campaign), so a client that trusts ``GET /users?campaign_id=`` sees strangers.
Every third lead (index 1, 4, 7, …) and the first referrer also hold list or object
``meta`` values, shown only with the ``rf_mixed_meta`` variant.

Customer special cases also include custom-field values a PATCH could not set today: an
empty value, a Dropdown value that is no longer an option, a value of a type the tenant no
longer lists ("Alarm Code"), and "Square Footage" (Numeric); and households — customers
that share one e-mail (``index % 20`` in 15, 16, 17: 15-17 and 35-36 with 40 customers).

Every special case sits at a small index, so a sandbox with a few dozen customers has each.

``seed_bookings`` (``Sandbox(bookings=N)``) adds a booking history, deterministic and in the
past: see its docstring.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stsync.sandbox.clock import iso_ms, to_ms

FIRST_NAMES = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Steven",
    "Ashley",
)
LAST_NAMES = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
)
NON_ASCII_NAMES = (
    ("José", "Núñez"),
    ("Zoë", "Ångström"),
    ("Łukasz", "Żółć"),
    ("Björk", "Guðmundsdóttir"),
    ("Nguyễn", "Văn An"),
    ("François", "Lefèvre"),
    ("Søren", "Kierkegård"),
    ("Chloé", "D'Aubigné"),
    ("Dmitrii", "Šostakovič"),
    ("Renée", "O'Brien-Müller"),
)
BUSINESSES = (
    "Müller Heating GmbH",
    "Acme Property Management LLC",
    "Sunrise Dental Group",
    "Blue Ridge Apartments",
    "Café Olé Restaurants",
    "Northside Self Storage",
    "St. Mary's Parish Hall",
    "Lakeview HOA",
    "Pinecrest Elementary School",
    "Tanaka & Sons Bakery",
)
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Washington Blvd", "Lakeshore Rd", "Hillcrest Way")
CITIES = (
    ("Austin", "TX", "787"),
    ("Denver", "CO", "802"),
    ("Phoenix", "AZ", "850"),
    ("Raleigh", "NC", "276"),
    ("Columbus", "OH", "432"),
    ("Sacramento", "CA", "958"),
    ("Tampa", "FL", "336"),
    ("Boise", "ID", "837"),
)
SERVICES = ("AC repair", "Furnace tune-up", "Water heater", "Duct cleaning", "Plumbing leak")

# (id, name, data type, dropdown options)
FieldType = tuple[int, str, str, list[str]]
CUSTOM_FIELD_TYPES: tuple[FieldType, ...] = (
    (101, "Gate Code", "Text", []),
    (102, "Referral Link", "Text", []),
    (103, "Referral Code", "Text", []),
    (104, "Preferred Technician", "Dropdown", ["Alex", "Sam", "Jordan"]),
    (105, "Square Footage", "Numeric", []),
)
# Retired by the tenant: no longer listed by GET /customers/custom-fields, yet customers keep values.
RETIRED_FIELD_TYPES: tuple[FieldType, ...] = ((106, "Alarm Code", "Text", []),)
GATE_CODE_TYPE_ID = 101
TECHNICIAN_TYPE_ID = 104
SQUARE_FOOTAGE_TYPE_ID = 105
ALARM_CODE_TYPE_ID = 106
RETIRED_TECHNICIAN = "Chris"  # a technician who left: no longer a Dropdown option

_EPOCH = datetime(2022, 1, 1, tzinfo=UTC)
_SEED_TIME_MS = to_ms(datetime(2021, 6, 1, tzinfo=UTC))
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class Identity:
    tenant_id: int
    client_id: str
    client_secret: str
    app_key: str
    booking_provider: int
    rf_api_key: str
    campaign_id: int
    paused_campaign_id: int


def identity(rng: random.Random) -> Identity:
    def hexes(n: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(n))

    campaign_id = rng.randint(100, 899)
    return Identity(
        tenant_id=rng.randint(1_000_000, 9_999_999),
        client_id="cid." + hexes(24),
        client_secret="cs2." + hexes(48),
        app_key="ak1." + hexes(32),
        booking_provider=rng.randint(10, 999),
        rf_api_key="".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789") for _ in range(40)),
        campaign_id=campaign_id,
        paused_campaign_id=campaign_id + 1,
    )


def ascii_slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def address(rng: random.Random) -> dict:
    city, state, zip_prefix = rng.choice(CITIES)
    return {
        "street": f"{rng.randint(10, 9999)} {rng.choice(STREETS)}",
        "unit": rng.choice([None, None, None, f"Apt {rng.randint(1, 40)}"]),
        "city": city,
        "state": state,
        "zip": f"{zip_prefix}{rng.randint(10, 99)}",
        "country": "USA",
        "latitude": round(rng.uniform(25.0, 47.0), 6),
        "longitude": round(rng.uniform(-122.0, -78.0), 6),
    }


def phone(rng: random.Random) -> str:
    return f"{rng.choice(['512', '303', '602', '919', '614'])}555{rng.randint(0, 9999):04d}"


@dataclass
class CustomerPlan:
    """One customer to create: what it is and which contacts it has."""

    name: str
    type: str
    address: dict
    active: bool
    merged_into_previous: bool
    contacts: list[tuple[str, str]]
    custom_fields: list[dict]
    created_ms: int
    modified_ms: int
    do_not_mail: bool


def customer_plan(index: int, rng: random.Random, *, recent: bool = False) -> CustomerPlan:
    """The ``index``-th customer. Special cases recur with different periods."""
    commercial = index % 6 == 4
    if commercial:
        name = BUSINESSES[(index // 6) % len(BUSINESSES)]
        slug = ascii_slug(name)[:18]
        emails = [f"office@{slug}.example.com"]
    else:
        if index % 5 == 2:
            first, last = NON_ASCII_NAMES[(index // 5) % len(NON_ASCII_NAMES)]
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        name = f"{first} {last}"
        emails = [f"{ascii_slug(first)}.{ascii_slug(last)}{index}@example.com"]
    if index % 9 == 3:
        emails.append(f"{ascii_slug(name)[:10]}.work{index}@example.org")
    if index % 11 == 7:
        emails = [emails[0].replace("@", ".at.", 1)]  # malformed: no "@"
    if index % 8 == 5:
        emails = []
    contacts = [("Email", e) for e in emails]
    if index % 4 != 1:
        contacts.append(("Phone" if index % 4 == 2 else "MobilePhone", phone(rng)))
    values: dict[int, str] = {}
    if index % 3 == 0:
        values[GATE_CODE_TYPE_ID] = f"#{rng.randint(1000, 9999)}"
    if index % 7 == 3:
        values[TECHNICIAN_TYPE_ID] = rng.choice(["Alex", "Sam", "Jordan"])
    # Values a PATCH could not set today, which the customer holds anyway (no random draws:
    # the rest of the world stays as it was):
    if index % 5 == 0:
        values[SQUARE_FOOTAGE_TYPE_ID] = str(900 + index * 137 % 3100)
    if index % 23 == 5:
        values[GATE_CODE_TYPE_ID] = ""  # an empty value
    if index % 29 == 10:
        values[TECHNICIAN_TYPE_ID] = RETIRED_TECHNICIAN  # no longer an option
    if index % 31 == 12:
        values[ALARM_CODE_TYPE_ID] = f"{index * 7919 % 10000:04d}"  # a type no longer listed
    custom_fields = [{"typeId": type_id, "value": value} for type_id, value in values.items()]
    if recent:
        created = modified = 0  # stamped at creation
    else:
        created = to_ms(_EPOCH) + index * 3_600_000 + rng.randint(0, 3_000_000)
        # Modified later, in an order that differs from the id order: an export is not an id scan.
        modified = created + rng.randint(0, 900) * _DAY_MS + rng.randint(0, _DAY_MS)
    return CustomerPlan(
        name=name,
        type="Commercial" if commercial else "Residential",
        address=address(rng),
        active=index % 13 != 9,
        merged_into_previous=index % 17 == 11,
        contacts=contacts,
        custom_fields=custom_fields,
        created_ms=created,
        modified_ms=modified,
        do_not_mail=index % 7 == 6,
    )


def seed_servicetitan(st, rng: random.Random, customers: int) -> None:
    """Fill ``st`` (a ``ServiceTitan``) with the seeded tenant."""
    for type_id, name, data_type, options in CUSTOM_FIELD_TYPES:
        st.add_field_type(type_id, name, data_type, options, ms=_SEED_TIME_MS)
    for type_id, name, data_type, options in RETIRED_FIELD_TYPES:
        st.add_field_type(type_id, name, data_type, options, ms=_SEED_TIME_MS, listed=False)
    created = {"createdOn": "2021-06-01T00:00:00.000Z", "modifiedOn": "2021-06-01T00:00:00.000Z"}
    st.tags[st.booking_provider] = {
        "id": st.booking_provider,
        "tagName": "Referral Factory",
        "description": "Bookings created by the Referral Factory integration",
        "type": "V2Api",
        **created,
        "active": True,
        "_created": _SEED_TIME_MS,
        "_modified": _SEED_TIME_MS,
    }
    other = st.booking_provider + 1000
    st.tags[other] = {
        "id": other,
        "tagName": "Web Scheduler",
        "description": "Another app's bookings",
        "type": "V2Api",
        **created,
        "active": True,
        "_created": _SEED_TIME_MS,
        "_modified": _SEED_TIME_MS,
    }
    for job_type_id, name in ((301, "Service Call"), (302, "Maintenance"), (303, "Install Estimate")):
        st.job_types[job_type_id] = {
            "id": job_type_id,
            "name": name,
            "businessUnitIds": [1],
            "skills": [],
            "tagTypeIds": [],
            "priority": "Normal",
            "duration": 3600,
            "soldThreshold": None,
            "class": "Service",
            "summary": name,
            "noCharge": False,
            "enforceRecurringServiceEventSelection": None,
            "invoiceSignaturesRequired": False,
            **created,
            "externalData": [],
            "active": True,
        }
    household_email: str | None = None
    for index in range(customers):
        plan = customer_plan(index, rng)
        household_email = share_household_email(index, plan, household_email)
        add_planned_customer(st, plan)


def share_household_email(index: int, plan: CustomerPlan, head_email: str | None) -> str | None:
    """Households, landlords and property managers: the customers at ``index % 20`` 16 and 17
    use the e-mail of the customer at 15 (the second with other capitals). Returns the
    e-mail the next customers may share."""
    first = next((value for kind, value in plan.contacts if kind == "Email"), None)
    if index % 20 == 15:
        return first if first and "@" in first else None
    if index % 20 in (16, 17) and head_email and first and "@" in first:
        shared = head_email if index % 20 == 16 else head_email[:1].upper() + head_email[1:]
        at = next(i for i, (kind, _) in enumerate(plan.contacts) if kind == "Email")
        plan.contacts[at] = ("Email", shared)
    return head_email if index % 20 in (15, 16) else None


def add_planned_customer(st, plan: CustomerPlan) -> dict:
    previous = st.customers.get(st._next_ids["customer"] - 1)
    merged_to = previous["id"] if plan.merged_into_previous and previous is not None else None
    stamp = {} if plan.created_ms == 0 else {"created_ms": plan.created_ms, "modified_ms": plan.modified_ms}
    customer = st.add_customer_record(
        name=plan.name,
        type=plan.type,
        address=plan.address,
        active=plan.active and merged_to is None,
        merged_to_id=merged_to,
        custom_fields=plan.custom_fields,
        do_not_mail=plan.do_not_mail,
        **stamp,
    )
    for kind, value in plan.contacts:
        st.add_contact_record(customer["id"], kind, value, ms=plan.created_ms or None)
    return customer


def campaign(campaign_id: int, *, code: str, name: str, status: str, subdomain: str) -> dict:
    return {
        "id": campaign_id,
        "code": code,
        "name": name,
        "lang": "en",
        "url": f"https://{subdomain}.referral-factory.com/{code}",
        "status": status,
        "starts_at": None,
        "ends_at": None,
        "created_at": "2024-03-01 10:00:00",
        "reach": "1250",
        "fields": {
            "person_referring": [
                {"id": "first_name", "type": "input", "label": "First Name", "value": None, "required": True},
                {"id": "email", "type": "input", "label": "Email", "value": None, "required": True},
                {"id": "last_name", "type": "input", "label": "Last Name", "value": None, "required": False},
            ],
            "person_invited": [
                {"id": "first_name", "type": "input", "label": "First Name", "value": None, "required": True},
                {"id": "email", "type": "input", "label": "Email", "value": None, "required": True},
                {"id": "last_name", "type": "input", "label": "Last Name", "value": None, "required": False},
                {"id": "phone", "type": "input", "label": "Phone Number", "value": None, "required": False},
                {
                    "id": "service",
                    "type": "select",
                    "label": "Service Needed",
                    "value": list(SERVICES),
                    "required": False,
                },
            ],
        },
        "assets": {"logo": {"type": "image", "path": f"https://{subdomain}.referral-factory.com/logo.png"}},
    }


def person(rng: random.Random, index: int, *, domain: str = "example.net") -> tuple[str, str, str]:
    """(first name, last name, e-mail) of the ``index``-th Referral Factory user."""
    if index % 4 == 1:
        first, last = NON_ASCII_NAMES[(index // 4) % len(NON_ASCII_NAMES)]
    else:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{ascii_slug(first)}.{ascii_slug(last)}.{index}@{domain}"
    if index % 5 == 3:
        email = email[:1].upper() + email[1:]  # stored as typed: e-mails compare case-insensitively
    return first, last, email


def lead_meta(rng: random.Random, last: str) -> list[dict]:
    return [
        {"field": "Last Name", "value": last},
        {"field": "Phone Number", "value": phone(rng)},
        {"field": "Service Needed", "value": rng.choice(SERVICES)},
    ]


def seed_referral_factory(rf, rng: random.Random, ident: Identity, *, leads: int, referrers: int) -> None:
    """Fill ``rf`` (a ``ReferralFactory``) with the seeded account."""
    launched = rf.add_campaign(
        campaign(
            ident.campaign_id,
            code="SUMMER24",
            name="Summer Comfort Referrals",
            status="launched",
            subdomain="acme-comfort",
        )
    )
    paused = rf.add_campaign(
        campaign(
            ident.paused_campaign_id,
            code="SPRING23",
            name="Spring Tune-Up Referrals",
            status="paused",
            subdomain="acme-comfort",
        )
    )
    referrer_ids = []
    for i in range(referrers):
        first, last, email = person(rng, 100 + i, domain="example.com")
        user = rf.add_user_record(
            campaign_id=launched["id"],
            first_name=first,
            email=email,
            type="person_referring",
            source="Direct",
            meta=[{"field": "Last Name", "value": last}],
            signed_up_at=f"2024-0{1 + i % 9}-1{i % 10}",
        )
        referrer_ids.append(user["id"])
    for i in range(leads):
        first, last, email = person(rng, i)
        lead = rf.add_user_record(
            campaign_id=launched["id"],
            first_name=first,
            email=email,
            type="person_invited",
            source="Referred",
            referrer_id=referrer_ids[i % len(referrer_ids)] if referrer_ids else None,
            meta=lead_meta(rng, last),
            signed_up_at=f"2025-0{1 + i % 9}-2{i % 10}",
        )
        if i % 3 == 1:
            lead["_mixed_meta"] = mixed_meta(lead["meta"], i)
    if referrer_ids:
        first_referrer = rf.users[referrer_ids[0]]
        first_referrer["_mixed_meta"] = [
            *first_referrer["meta"],
            {"field": "Contact Preferences", "value": {"email": True, "sms": False}},
        ]
    # The paused campaign: strangers to a client that trusts GET /users?campaign_id=.
    first, last, email = person(rng, 900, domain="example.com")
    old_referrer = rf.add_user_record(
        campaign_id=paused["id"],
        first_name=first,
        email=email,
        type="person_referring",
        source="Direct",
        meta=[{"field": "Last Name", "value": last}],
        signed_up_at="2023-03-14",
    )
    first, last, email = person(rng, 901)
    rf.add_user_record(
        campaign_id=paused["id"],
        first_name=first,
        email=email,
        type="person_invited",
        source="Referred",
        referrer_id=old_referrer["id"],
        meta=lead_meta(rng, last),
        signed_up_at="2023-04-02",
        qualified_at="2023-05-10 16:20:00",
    )
    shared_email = next(
        (u["email"] for u in rf.users.values() if u["type"] == "person_invited" and u["campaign_id"] == launched["id"]),
        None,
    )
    if shared_email is not None:
        rf.add_user_record(
            campaign_id=paused["id"],
            first_name="Twin",
            email=shared_email,
            type="person_invited",
            source="Referred",
            referrer_id=old_referrer["id"],
            meta=lead_meta(rng, "Twin"),
            signed_up_at="2023-04-09",
        )


def mixed_meta(meta: list[dict], index: int) -> list[dict]:
    """The same form answers as a form with a multi-select and an address block gives them
    (``meta[].value`` is typed *mixed*): a list and an object among the text values."""
    out: list[dict[str, Any]] = []
    for item in meta:
        if item["field"] == "Service Needed":
            out.append({"field": "Service Needed", "value": [item["value"], SERVICES[(index + 1) % len(SERVICES)]]})
        else:
            out.append(dict(item))
    out.append({"field": "Address", "value": {"street": f"{100 + index} Main St", "city": "Austin", "zip": "78701"}})
    return out


def new_lead(
    rf, rng: random.Random, index: int, *, campaign_id: int, referrer_id: int | None, signed_up_at: str | None = None
) -> dict:
    first, last, email = person(rng, index)
    while (campaign_id, email.casefold()) in rf.users_by_email:
        index += 10_000
        first, last, email = person(rng, index)
    return rf.add_user_record(
        campaign_id=campaign_id,
        first_name=first,
        email=email,
        type="person_invited",
        source="Referred",
        referrer_id=referrer_id,
        meta=lead_meta(rng, last),
        signed_up_at=signed_up_at,
    )


# ---------------------------------------------------------------------------- booking history
_BOOKING_EPOCH_MS = to_ms(datetime(2024, 6, 1, tzinfo=UTC))
_HOUR_MS = 3_600_000
# The life of the i-th seeded booking: LIFE[i % 10]. Every 25th booking belongs to another
# booking provider (an export is tenant-wide; the provider's list is not).
LIFE = (
    "open",  # never converted, never dismissed: open for ever
    "open",
    "open",
    "dismissed",
    "scheduled",
    "in_progress",
    "completed",
    "completed_zero",  # a $0 job
    "canceled_after_completion",
    "passed_through_completed",  # Completed for 5 seconds, then back to InProgress
)


def seeded_life(index: int) -> str:
    return LIFE[index % len(LIFE)]


def seeded_total(index: int) -> float:
    return round(89 + index * 7919 % 4500 + index % 100 / 100, 2)


def seed_bookings(st, rf, seed: int, count: int, *, campaign_id: int) -> None:
    """``count`` bookings with a past (June 2024 onwards, 47 minutes apart), deterministic.

    The first bookings book the launched campaign's referred leads (``externalId`` = the
    lead's code, as a booking provider integration does), in user id order; the rest carry
    ``externalId`` ``SEED000123``. Their lives follow ``LIFE``: open for ever, dismissed,
    converted to a job that is Scheduled, InProgress, Completed with a total (some $0),
    Completed then Canceled a week later, or Completed for 5 seconds then InProgress again
    (``completedOn`` stays). Converting creates the customer, as a CSR does. Pairs of
    bookings (``index % 20`` 0 and 1) and of jobs (``index % 20`` 4 and 5) share a
    ``modifiedOn``. Uses its own random generator, so the rest of the world is unchanged."""
    rng = random.Random(f"bookings-{seed}")
    leads = [u for u in rf.users.values() if u["campaign_id"] == campaign_id and u["type"] == "person_invited"]
    other_provider = st.booking_provider + 1000
    made: list[tuple[dict, dict | None]] = []
    for index in range(count):
        created = _BOOKING_EPOCH_MS + index * 47 * 60_000 + rng.randint(0, 30_000)
        if index < len(leads):
            lead = leads[index]
            last = next((m["value"] for m in lead["meta"] if m["field"] == "Last Name"), "")
            name = f"{lead['first_name']} {last}".strip()
            external_id, email = lead["code"], lead["email"]
        else:
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
            external_id, email = f"SEED{index:06d}", f"seed.booking{index}@example.net"
        body = {
            "source": "Referral Factory",
            "name": name,
            "summary": "Referral",
            "isFirstTimeClient": True,
            "externalId": external_id,
            "customerType": "Residential",
            "contacts": [{"type": "Email", "value": email}, {"type": "MobilePhone", "value": phone(rng)}],
            "isSendConfirmationEmail": False,
        }
        provider = other_provider if index % 25 == 24 else st.booking_provider
        booking = st.create_booking_record(provider, body, ms=created)
        job = _live(st, booking, seeded_life(index) if provider == st.booking_provider else "open", index, created, rng)
        made.append((booking, job))
    for index in range(1, count):
        if index % 20 == 1:
            _tie(st.booking_index, made[index - 1][0], made[index][0])
        earlier_job, job = made[index - 1][1], made[index][1]
        if index % 20 == 5 and earlier_job is not None and job is not None:
            _tie(st.jpm.job_index, earlier_job, job)


def _live(st, booking: dict, life: str, index: int, created: int, rng: random.Random) -> dict | None:
    if life == "open":
        return None
    if life == "dismissed":
        st.dismiss_booking(booking["id"], at_ms=created + 2 * _DAY_MS)
        return None
    converted = created + _DAY_MS
    job = st.convert_booking(
        booking["id"], job_status="Scheduled", customer_id=None, address=address(rng), at_ms=converted
    )
    if life == "scheduled":
        return job
    steps = [("Dispatched", converted + 2 * _DAY_MS), ("InProgress", converted + 2 * _DAY_MS + _HOUR_MS)]
    done = converted + 2 * _DAY_MS + 4 * _HOUR_MS
    if life != "in_progress":
        steps.append(("Completed", done))
    if life == "canceled_after_completion":
        steps.append(("Canceled", done + 7 * _DAY_MS))
    if life == "passed_through_completed":
        steps.append(("InProgress", done + 5_000))
    for status, at in steps:
        st.jpm.set_status(job, status, at_ms=at, changed_ms=at)
        if status == "Completed":
            job["total"] = 0.0 if life == "completed_zero" else seeded_total(index)
    return job


def _tie(index, first: dict, second: dict) -> None:
    """Give two records one ``modifiedOn`` (the later of the two)."""
    ms = max(first["_modified"], second["_modified"])
    for record in (first, second):
        record["_modified"] = ms
        record["modifiedOn"] = iso_ms(ms)
        index.put(record["id"], ms)
