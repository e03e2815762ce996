"""A lead → the ServiceTitan ``CreateBookingRequest`` body, and the externalId that joins them.

- ``external_id_for(lead, section) -> str``: the booking's externalId for this lead (the join
  key, for ever). ``SetupRequired`` when ``external_id`` is not mapped; ``InvalidRecord`` when
  this lead has no value for it.
- ``booking_request_for(lead, section) -> dict``: the exact body, camelCase, targets in
  vocabulary order (a stable body). ``SetupRequired`` (the section's missing required
  targets), then the first ``ConfigError`` of ``validation.booking_mapping_problems``, then
  ``InvalidRecord`` naming the lead and the field: no value for a required target, or a value
  the target cannot take. An optional target without a value is left out. The e-mail and
  phone become contacts (``Email``, ``MobilePhone``); an address is sent only when every
  required part has a value (ServiceTitan rejects a partial one); a body with neither a
  contact nor an address is an ``InvalidRecord`` (ServiceTitan needs one).
- ``lead_fields_read(section) -> set[str]``: the lead fields a section's mapping reads
  (``from`` and template fields), so a caller fetches only what the mapping needs;
  ``fields_not_read(names, section)``: those of ``names`` it does not read (a value given for
  one is not sent: ``push-lead`` warns).

``section`` is ``[leads]`` or ``[referrers]`` (``Config.booking_section(kind)``); it names
itself in errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stsync.errors import InvalidRecord, SetupRequired
from stsync.leads import META_PREFIX, Lead, meta_label_key
from stsync.mapping.validation import booking_mapping_problems, missing_required
from stsync.mapping.values import BadValue, RawValue, convert
from stsync.mapping.vocabulary import BOOKING_TARGET_LABELS
from stsync.servicetitan.vocabulary import ADDRESS_PARTS, BOOKING_TARGETS, REQUIRED_ADDRESS_PARTS, REQUIRED_BOOKING_TARGETS
from stsync.storage.config import BookingSettings, FieldSpec, FromField, TemplateValue

# Booking contacts (api/servicetitan.md §6.4): a referred lead's phone is, in practice, a mobile.
CONTACT_TARGETS = {"email": "Email", "phone": "MobilePhone"}


def external_id_for(lead: Lead, section: BookingSettings) -> str:
    """The booking's externalId for this lead: the join key, for ever."""
    spec = section.fields.get("external_id")
    if spec is None or spec.is_blank:
        raise SetupRequired(section.section_name, ["external_id"])
    value = _source_value(lead, spec)
    if value is None:
        raise _missing_value(lead, "external_id", spec)
    return str(value).strip()


def booking_request_for(lead: Lead, section: BookingSettings) -> dict[str, Any]:
    """The exact CreateBookingRequest body (ServiceTitan camelCase) for this lead.

    Contacts carry the e-mail (``Email``) and phone (``MobilePhone``); yes/no become booleans;
    an address is sent only when all its required parts have values (ServiceTitan rejects a
    partial AddressModel); date-times are UTC RFC 3339. An optional target whose source has
    no value for this lead is left out; a required one raises ``InvalidRecord``.
    """
    missing = missing_required(section)
    if missing:
        raise SetupRequired(section.section_name, missing)
    problems = booking_mapping_problems(section)
    if problems:
        raise problems[0]
    fields = section.fields
    body: dict[str, Any] = {}
    contacts: list[dict[str, Any]] = []
    address: dict[str, Any] = {}
    for target, (path, _kind) in BOOKING_TARGETS.items():  # vocabulary order: a stable body
        spec = fields.get(target)
        if spec is None:
            continue
        raw = _source_value(lead, spec)
        if raw is None:
            if target in REQUIRED_BOOKING_TARGETS:
                raise _missing_value(lead, target, spec)
            continue
        try:
            value = convert(target, raw)
        except BadValue as exc:
            raise InvalidRecord(
                f"lead {lead.describe()}: {_from_text(spec)} gives {raw!r} for {target}, but {exc}",
                record=lead.email or lead.referral_code,
                field=target,
                hint=exc.hint or f"fix the lead in Referral Factory or change the mapping of {target} (`stsync map show`)",
            ) from None
        if target in CONTACT_TARGETS:
            contacts.append({"type": CONTACT_TARGETS[target], "value": value})
        elif path.startswith("address."):
            address[path.split(".", 1)[1]] = value
        else:
            body[path] = value
    if address and all(address.get(part) for part in REQUIRED_ADDRESS_PARTS):
        body["address"] = {part: address[part] for part in ADDRESS_PARTS if address.get(part)}
    if contacts:
        body["contacts"] = contacts
    if not contacts and "address" not in body:
        # ServiceTitan needs "a name and either an address or phone number/email" (api §6.1).
        raise InvalidRecord(
            f"lead {lead.describe()} has neither an e-mail, a phone nor a complete address",
            record=lead.email or lead.referral_code,
            field="email",
        )
    return body


def lead_fields_read(section: BookingSettings) -> set[str]:
    """The lead fields a section's mapping reads (``from`` and ``template`` placeholders)."""
    return {source.strip() for spec in section.fields.values() for source in spec.sources()}


def fields_not_read(names: Iterable[str], section: BookingSettings) -> list[str]:
    """Of the lead fields ``names`` (SPEC §3 names, ``meta.<label>``), those no mapping of
    ``section`` reads: a value given for one of them is not sent. A meta label matches as
    ``Lead.value`` matches it (case and spacing aside)."""
    read = lead_fields_read(section)
    read_labels = {meta_label_key(name[len(META_PREFIX) :]) for name in read if name.startswith(META_PREFIX)}
    unread: list[str] = []
    for name in names:
        if name.startswith(META_PREFIX):
            if meta_label_key(name[len(META_PREFIX) :]) not in read_labels:
                unread.append(name)
        elif name not in read:
            unread.append(name)
    return unread


def _source_value(lead: Lead, spec: FieldSpec) -> RawValue | None:
    """The raw value for the target before conversion; None when this lead has none."""
    if isinstance(spec, FromField):
        return lead.value(spec.from_)
    if isinstance(spec, TemplateValue):
        return spec.render(lead.value)
    payload = spec.payload
    if isinstance(payload, str):
        return payload.strip() or None
    return payload


def _missing_value(lead: Lead, target: str, spec: FieldSpec) -> InvalidRecord:
    label = BOOKING_TARGET_LABELS.get(target, target)
    if target == "external_id":
        hint = _external_id_hint(spec)
    else:
        hint = (
            f"fill it in Referral Factory, or map {target} from another field or a fixed value "
            f"(`stsync map set {target} --value ...`)"
        )
    return InvalidRecord(
        f"lead {lead.describe()} has no value for {_from_text(spec)}, which the required ServiceTitan field "
        f"{label} ({target}) is mapped from",
        record=lead.email or lead.referral_code,
        field=target,
        hint=hint,
    )


def _external_id_hint(spec: FieldSpec) -> str:
    """What to do about a lead without an External Id: give the lead its value — never a
    fixed one, which would make every later lead "already booked"."""
    sources = list(spec.sources())
    if sources == ["referral_code"]:
        return (
            "give the lead its referral code: `stsync push-lead --email … --first-name … --referral-code CODE` "
            "(or push it with --code or --rf-user-id, which read it from Referral Factory)"
        )
    given = " ".join(f"--field '{source}=…'" for source in sources)
    return f"fill {', '.join(sources)} for the lead in Referral Factory, or give it: `stsync push-lead … {given}`"


def _from_text(spec: FieldSpec) -> str:
    if isinstance(spec, FromField):
        return f"the Referral Factory field {spec.from_}"
    if isinstance(spec, TemplateValue):
        return f"the template {spec.template!r}"
    return f"the fixed value {spec.payload!r}"
