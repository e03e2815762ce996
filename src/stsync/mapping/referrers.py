"""A ServiceTitan customer → the Referral Factory referrer (``POST /users`` body) it becomes,
or why it is skipped.

- ``referrer_request_for(customer, contacts, fields, campaign_id=, include_inactive=)`` →
  ``ReferrerRequest`` (body, e-mail, ``fingerprint``: a stable hash of the body, so a change of
  the mapped data is seen as one) or ``Skip`` (a reason of ``SKIP_REASONS`` and a detail).
  A merged customer is always skipped, an inactive one unless ``include_inactive``. The body
  never notifies the user (``notify = false``), as Referral Factory's own CRM sync does.
  ``ConfigError`` when ``fields`` lacks a required referrer target (validate catches it first).
- ``customer_value(source, customer, contacts)``: the text of a SPEC §3 customer source;
  "the first e-mail" is the oldest active valid one (by contact id), so it stays the same
  from run to run and the fingerprint does not flap.
- ``split_customer_name(name, type)``: (first, last); a commercial customer's whole name is
  the first name.

Contacts are ``CustomerContact`` models or the ledger's contact rows: anything with ``type``,
``value`` and ``active`` (``Contact``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stsync.errors import ConfigError
from stsync.leads import META_PREFIX
from stsync.mapping.validation import missing_referrer_target
from stsync.mapping.values import email_problem, is_email_address
from stsync.mapping.vocabulary import CUSTOM_PREFIX, CUSTOMER_SOURCES, REQUIRED_REFERRER_TARGETS
from stsync.servicetitan.models import Customer
from stsync.storage.config import FieldSpec, FromField, TemplateValue
from stsync.suggestions import did_you_mean

SKIP_REASONS = ("no_email", "invalid_email", "inactive", "merged", "no_name")


class Contact(Protocol):
    """A customer contact as the mapping reads it (a ``CustomerContact`` or a ledger row)."""

    @property
    def type(self) -> str | None: ...

    @property
    def value(self) -> str | None: ...

    @property
    def active(self) -> bool: ...


@dataclass(frozen=True)
class ReferrerRequest:
    """The ``POST /users`` body for one customer, and what identifies it."""

    customer_id: int
    body: dict[str, Any]
    email: str
    fingerprint: str  # a stable hash of the body: a change means the referrer needs an update


@dataclass(frozen=True)
class Skip:
    """A customer that does not become a referrer, and why (one of ``SKIP_REASONS``)."""

    reason: str
    detail: str = ""
    email: str | None = None  # invalid_email: the address refused (diagnose --email finds the customer by it)


def referrer_request_for(
    customer: Customer,
    contacts: Iterable[Contact],
    fields: Mapping[str, FieldSpec],
    *,
    campaign_id: int,
    include_inactive: bool = False,
) -> ReferrerRequest | Skip:
    """The Referral Factory user a ServiceTitan customer becomes, or why it is skipped.

    A merged customer is always skipped; an inactive one unless ``include_inactive``.
    """
    if customer.merged_to_id is not None:
        return Skip("merged", f"merged into customer {customer.merged_to_id}")
    if not customer.active and not include_inactive:
        return Skip("inactive", "the customer is deactivated in ServiceTitan")
    contact_list = _ordered_contacts(contacts)
    for target in REQUIRED_REFERRER_TARGETS:
        if target not in fields:
            raise missing_referrer_target(target, hint="run `stsync validate`")
    values: dict[str, str] = {}
    for target, spec in fields.items():
        value: str | None
        if isinstance(spec, FromField):
            value = customer_value(spec.from_, customer, contact_list)
        elif isinstance(spec, TemplateValue):
            value = spec.render(lambda name: customer_value(name, customer, contact_list))
        else:
            value = None if spec.is_blank else str(spec.payload).strip()
        if value is not None:
            values[target] = value
    email = values.get("email")
    if email is None:
        emails = [c for c in contact_list if _contact_type(c) == "email"]
        if emails:
            return Skip(
                "invalid_email",
                "no e-mail Referral Factory accepts among: "
                + "; ".join(f"{c.value!r} ({email_problem(str(c.value)) or 'unusable'})" for c in emails),
                email=_text(emails[0].value),
            )
        return Skip("no_email", "the customer has no e-mail contact")
    problem = email_problem(email)
    if problem is not None:
        # Referral Factory would refuse it (422): skipped before any request, with the reason.
        return Skip("invalid_email", f"{email!r} is not an e-mail address Referral Factory accepts: {problem}", email=email)
    first_name = values.get("first_name") or _text(customer.name)
    if first_name is None:
        return Skip("no_name", "the customer has no name")
    meta = [
        {"field": target[len(META_PREFIX) :], "value": value}
        for target, value in sorted(values.items())
        if target.startswith(META_PREFIX)
    ]
    body: dict[str, Any] = {"campaign_id": int(campaign_id), "first_name": first_name, "email": email}
    if meta:
        body["meta"] = meta
    # Imported customers are not e-mailed, as Referral Factory's own CRM sync does (api §6.1).
    body["notify"] = False
    return ReferrerRequest(customer_id=int(customer.id), body=body, email=email, fingerprint=fingerprint_of(body))


def fingerprint_of(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def customer_value(source: str, customer: Customer, contacts: list[Contact]) -> str | None:
    """The text of a SPEC §3 customer source for this customer; None when it has none."""
    if source.startswith(CUSTOM_PREFIX):
        wanted = source[len(CUSTOM_PREFIX) :].strip().casefold()
        for custom in getattr(customer, "custom_fields", None) or []:
            if custom.name is not None and custom.name.strip().casefold() == wanted:
                return _text(custom.value)
        return None
    if source.startswith("address."):
        address = getattr(customer, "address", None)
        return _text(getattr(address, source.split(".", 1)[1], None)) if address is not None else None
    if source == "customer.id":
        return str(customer.id)
    if source == "customer.name":
        return _text(customer.name)
    if source == "customer.type":
        return _text(customer.type)
    if source in ("customer.first_name", "customer.last_name"):
        first, last = split_customer_name(customer.name, getattr(customer, "type", None))
        return first if source == "customer.first_name" else last
    if source == "contact.email":
        return first_valid_email(contacts)
    if source == "contact.phone":
        for contact in contacts:
            if _contact_type(contact) in ("mobilephone", "phone") and _text(contact.value):
                return _text(contact.value)
        return None
    raise ConfigError(f"unknown ServiceTitan customer field {source!r}{did_you_mean(source, CUSTOMER_SOURCES)}")


def first_valid_email(contacts: Iterable[Contact]) -> str | None:
    for contact in contacts:
        if _contact_type(contact) == "email":
            value = _text(contact.value)
            if value and is_email_address(value):
                return value
    return None


_NAME_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "del", "della", "da", "di", "du", "la", "le", "st.", "st", "bin", "al"}
)
_NAME_SUFFIXES = frozenset({"jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "md", "phd"})


def split_customer_name(name: str | None, customer_type: str | None = None) -> tuple[str | None, str | None]:
    """(first name, last name) of a ServiceTitan customer.

    A commercial customer is a company: its whole name is the first name. A residential name
    is split at the surname: "Doe, Jane" (ServiceTitan's list style) or "Jane Doe"; couples
    keep both first names ("John & Mary Smith" → "John & Mary", "Smith"), surname particles
    and suffixes stay with the surname ("Ana de la Cruz Jr." → "Ana", "de la Cruz Jr.").
    """
    text = _text(name)
    if text is None:
        return None, None
    text = " ".join(text.split())
    if (customer_type or "").casefold() == "commercial":
        return text, None
    if "," in text:
        before, _, after = (part.strip() for part in text.partition(","))
        if after.casefold() in _NAME_SUFFIXES:  # "John Smith, Jr."
            text = f"{before} {after}"
        elif before and after:  # "Doe, Jane"
            return after, before
        else:
            text = before or after
    words = text.split(" ")
    if len(words) == 1:
        return words[0], None
    end = len(words) - 1
    while end > 1 and words[end].casefold() in _NAME_SUFFIXES:
        end -= 1
    start = end
    while start > 1 and words[start - 1].casefold() in _NAME_PARTICLES:
        start -= 1
    first = " ".join(words[:start])
    last = " ".join(words[start:])
    return first, last


def _ordered_contacts(contacts: Iterable[Contact]) -> list[Contact]:
    """Active contacts with a value, oldest first (by id): "the first e-mail" stays the same
    e-mail from run to run, so the referrer's fingerprint does not flap."""
    usable = [c for c in contacts if _is_active(c) and _text(getattr(c, "value", None))]
    return sorted(usable, key=lambda c: _contact_id(c))


def _contact_id(contact: Contact) -> int:
    for attribute in ("id", "contact_id"):
        value = getattr(contact, attribute, None)
        if isinstance(value, int):
            return value
    return 2**63


def _is_active(contact: Contact) -> bool:
    active = getattr(contact, "active", True)
    return True if active is None else bool(active)


def _contact_type(contact: Contact) -> str:
    return str(getattr(contact, "type", "") or "").replace(" ", "").casefold()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
