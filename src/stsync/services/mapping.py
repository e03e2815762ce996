"""The mapping engine: a lead becomes a ServiceTitan booking, a ServiceTitan customer becomes a
Referral Factory referrer, and a referrer's link and code go back onto the customer.

Everything here is pure: no network, no printing. The config sections are read through
their attributes (``action``, ``fields``; each field spec carries one of ``from_``, ``value``,
``select``, ``template``: ``stsync.storage.config``), so the engine serves ``push``,
``sync``, ``serve``, ``validate``, ``map show`` and ``diagnose`` alike.

Errors:
- ``SetupRequired`` (exit 3): the seed's "Setup Required" — a required booking target has no
  mapping, so no booking can be built for anyone.
- ``ConfigError`` (exit 3): the mapping refers to something that does not exist (a target, a
  source field, an option, a custom field).
- ``InvalidRecord`` (exit 5): this one lead's data cannot make a valid request (no value for
  a required field, "maybe" for a yes/no field, ...). Raised before anything is sent, naming
  the lead and the field; a malformed request never leaves stsync.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from stsync.errors import ConfigError, InvalidRecord, SetupRequired
from stsync.services.leads import LEAD_FIELD_LABELS, LEAD_FIELDS, META_PREFIX, Lead, did_you_mean, is_lead_source
from stsync.servicetitan.vocabulary import (
    ADDRESS_PARTS,
    BOOKING_TARGETS,
    REQUIRED_ADDRESS_PARTS,
    REQUIRED_BOOKING_TARGETS,
    SELECT_OPTIONS,
)
from stsync.vocabulary import Action, Kind, QualificationRule, ReturnValue

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

# Booking contacts (api/servicetitan.md §6.4): a referred lead's phone is, in practice, a mobile.
CONTACT_TARGETS = {"email": "Email", "phone": "MobilePhone"}

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
SKIP_REASONS = ("no_email", "invalid_email", "inactive", "merged", "no_name")

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_YES = frozenset({"yes", "y", "true", "t", "1", "on"})
_NO = frozenset({"no", "n", "false", "f", "0", "off"})


# == field specs ================================================================================


@dataclass(frozen=True)
class SpecView:
    """One field spec, whatever class holds it: its kind and its payload."""

    kind: str  # from | value | select | template
    payload: Any

    @property
    def data_type(self) -> str:
        """The seed's "Data Type" column."""
        return {
            "from": "Dynamic Value",
            "value": "Fixed Value (Manual Input)",
            "select": "Fixed Value (Manual Select)",
            "template": "Template",
        }[self.kind]

    def to_toml(self) -> dict[str, Any]:
        return {self.kind: self.payload}


def spec_view(spec: Any) -> SpecView:
    """Read a FromField / FixedValue / SelectValue / TemplateValue (or its TOML table)."""
    if isinstance(spec, Mapping):
        keys = [k for k in ("from", "from_", "value", "select", "template") if k in spec]
        if len(keys) != 1:
            raise ConfigError(
                f"a field mapping needs exactly one of from, value, select, template; got {sorted(spec) or 'nothing'}"
            )
        key = keys[0]
        return SpecView("from" if key == "from_" else key, spec[key])
    for kind, attribute in (("from", "from_"), ("template", "template"), ("select", "select"), ("value", "value")):
        if hasattr(spec, attribute):
            return SpecView(kind, getattr(spec, attribute))
    raise ConfigError(f"not a field mapping: {spec!r}")


def template_fields(template: str) -> list[str]:
    """The field names a template refers to, in order. ``{{`` and ``}}`` are literal braces."""
    names: list[str] = []
    for token in _template_tokens(template):
        if token[0] == "field":
            names.append(token[1])
    return names


def render_template(template: str, lookup: Callable[[str], str | None]) -> str | None:
    """The template with each ``{field}`` replaced; a field without a value becomes empty
    (a form field a lead skipped must not sink the booking), spaces are collapsed, and an
    all-empty result is None."""
    parts: list[str] = []
    for kind, text in _template_tokens(template):
        parts.append(text if kind == "text" else (lookup(text) or ""))
    rendered = " ".join("".join(parts).split())
    return rendered or None


def _template_tokens(template: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    for match in re.finditer(r"\{\{|\}\}|\{([^{}]*)\}|[{}]", template):
        if match.start() > position:
            tokens.append(("text", template[position : match.start()]))
        piece = match.group(0)
        if piece in ("{{", "}}"):
            tokens.append(("text", piece[0]))
        elif piece in ("{", "}"):
            raise ConfigError(
                f"template {template!r} has an unmatched {piece!r} at column {match.start() + 1}",
                hint="write {field} for a field, {{ or }} for a literal brace",
            )
        else:
            name = (match.group(1) or "").strip()
            if not name:
                raise ConfigError(f"template {template!r} has an empty {{}} at column {match.start() + 1}")
            tokens.append(("field", name))
        position = match.end()
    if position < len(template):
        tokens.append(("text", template[position:]))
    return tokens


# == validating a mapping =======================================================================


def section_name(kind: str | None, section: Any = None) -> str:
    """``lead`` / ``leads`` → ``leads``; ``referrer`` / ``referrers`` → ``referrers``; without a
    kind, the section tells: only ``[leads]`` has a qualification rule."""
    if kind is None:
        return "leads" if hasattr(section, "qualification") else "referrers"
    if kind in (Kind.LEAD, "leads"):
        return "leads"
    if kind in (Kind.REFERRER, "referrers"):
        return "referrers"
    raise ValueError(f"kind must be lead or referrer, not {kind!r}")


def target_kind(target: str) -> str:
    return BOOKING_TARGETS[target][1]


def select_options(target: str) -> tuple[str, ...]:
    """The options of a booking target's Manual Select; empty for free-text targets."""
    return SELECT_OPTIONS.get(target_kind(target), ()) if target in BOOKING_TARGETS else ()


def check_booking_target(target: str, *, section: str = "leads") -> None:
    if target not in BOOKING_TARGETS:
        raise ConfigError(
            f"unknown ServiceTitan booking field {target!r}{did_you_mean(target, BOOKING_TARGETS)}",
            key_path=f"{section}.fields.{target}",
            hint="booking fields are " + ", ".join(BOOKING_TARGETS),
        )


def check_lead_source(source: str, *, key_path: str) -> None:
    if not is_lead_source(source):
        meta_hint = " (campaign form fields are meta.<label>, e.g. meta.Last Name)"
        raise ConfigError(
            f"unknown Referral Factory lead field {source!r}{did_you_mean(source, LEAD_FIELDS)}",
            key_path=key_path,
            hint="lead fields are " + ", ".join(LEAD_FIELDS) + meta_hint,
        )


def check_booking_spec(target: str, spec: Any, *, section: str = "leads") -> None:
    """Raise ``ConfigError`` (key path + suggestion) when ``target = spec`` cannot work."""
    check_booking_target(target, section=section)
    key_path = f"{section}.fields.{target}"
    view = spec_view(spec)
    kind = target_kind(target)
    options = SELECT_OPTIONS.get(kind, ())
    if view.kind == "from":
        check_lead_source(str(view.payload), key_path=key_path)
    elif view.kind == "template":
        names = template_fields(str(view.payload))
        if not names:
            raise ConfigError(
                f"template {view.payload!r} refers to no field", key_path=key_path, hint="use --value for a fixed text"
            )
        for name in names:
            check_lead_source(name, key_path=key_path)
    elif view.kind == "select":
        if not options:
            raise ConfigError(
                f"{target} is not a Manual Select field (it takes free text)",
                key_path=key_path,
                hint=f"use `--value` instead: stsync map set {target} --value <text> --for {section}",
            )
        if _match_option(str(view.payload), options) is None:
            raise ConfigError(
                f"{view.payload!r} is not an option of {target}{did_you_mean(str(view.payload), options)}",
                key_path=key_path,
                hint=f"{target} takes one of: " + ", ".join(options),
            )
    else:  # a fixed value: must already be what the target accepts
        try:
            _convert(target, view.payload)
        except _BadValue as exc:
            raise ConfigError(f"{target} = {view.payload!r}: {exc}", key_path=key_path, hint=exc.hint) from None
    if _is_blank(view.payload):
        raise ConfigError(f"{target} is mapped to an empty {view.kind}", key_path=key_path)


def missing_required(section: Any) -> list[str]:
    """Required booking targets without a (non-empty) mapping, in SPEC order."""
    fields = getattr(section, "fields", None) or {}
    missing = []
    for target in REQUIRED_BOOKING_TARGETS:
        spec = fields.get(target)
        if spec is None:
            missing.append(target)
            continue
        try:
            if _is_blank(spec_view(spec).payload):
                missing.append(target)
        except ConfigError:
            missing.append(target)
    return missing


def booking_mapping_problems(section: Any, *, kind: str) -> list[ConfigError]:
    """Every invalid entry of a ``[leads]`` / ``[referrers]`` mapping (not the missing ones)."""
    name = section_name(kind)
    problems: list[ConfigError] = []
    for target, spec in (getattr(section, "fields", None) or {}).items():
        try:
            check_booking_spec(target, spec, section=name)
        except ConfigError as exc:
            problems.append(exc)
    return problems


def check_referrer_target(target: str) -> None:
    if target in REFERRER_TARGETS:
        return
    if target.startswith(META_PREFIX) and target[len(META_PREFIX) :].strip():
        return
    raise ConfigError(
        f"unknown Referral Factory user field {target!r}{did_you_mean(target, REFERRER_TARGETS)}",
        key_path=f"customer_sync.fields.{target}",
        hint="referrer fields are first_name, email, and meta.<label> for a campaign form field",
    )


def is_customer_source(source: str) -> bool:
    return source in CUSTOMER_SOURCES or (source.startswith(CUSTOM_PREFIX) and bool(source[len(CUSTOM_PREFIX) :].strip()))


def check_customer_source(source: str, *, key_path: str) -> None:
    if not is_customer_source(source):
        raise ConfigError(
            f"unknown ServiceTitan customer field {source!r}{did_you_mean(source, CUSTOMER_SOURCES)}",
            key_path=key_path,
            hint="customer fields are " + ", ".join(CUSTOMER_SOURCES) + ", and custom.<field name>",
        )


def check_referrer_spec(target: str, spec: Any) -> None:
    check_referrer_target(target)
    key_path = f"customer_sync.fields.{target}"
    view = spec_view(spec)
    if view.kind == "from":
        check_customer_source(str(view.payload), key_path=key_path)
    elif view.kind == "template":
        names = template_fields(str(view.payload))
        if not names:
            raise ConfigError(f"template {view.payload!r} refers to no field", key_path=key_path)
        for name in names:
            check_customer_source(name, key_path=key_path)
    elif view.kind == "select":
        raise ConfigError(
            f"{target} is not a Manual Select field (Referral Factory user fields take text)",
            key_path=key_path,
            hint=f"use `--value` instead: stsync map set {target} --value <text> --for customers",
        )
    if _is_blank(view.payload):
        raise ConfigError(f"{target} is mapped to an empty {view.kind}", key_path=key_path)
    if target == "email" and view.kind == "value":
        raise ConfigError(
            "email cannot be a fixed value: every referrer needs their own e-mail",
            key_path=key_path,
            hint="stsync map set email --from contact.email --for customers",
        )


def check_return_field(name: str, value: str) -> None:
    key_path = f'customer_sync.return_fields."{name}"'
    if not name.strip():
        raise ConfigError("a return field needs the name of a ServiceTitan customer custom field", key_path=key_path)
    if value not in RETURN_VALUES:
        raise ConfigError(
            f"return field {name!r} = {value!r}: a return field takes referral_link or referral_code"
            f"{did_you_mean(str(value), RETURN_VALUES)}",
            key_path=key_path,
            hint=f'stsync map return-field "{name}" referral_link',
        )


def customer_mapping_problems(customer_sync: Any) -> list[ConfigError]:
    problems: list[ConfigError] = []
    fields = getattr(customer_sync, "fields", None) or {}
    for target, spec in fields.items():
        try:
            check_referrer_spec(target, spec)
        except ConfigError as exc:
            problems.append(exc)
    for target in REQUIRED_REFERRER_TARGETS:
        if target not in fields:
            problems.append(
                ConfigError(
                    f"[customer_sync.fields] has no mapping for {target}, which every Referral Factory user needs",
                    key_path=f"customer_sync.fields.{target}",
                    hint=f"stsync map set {target} --from "
                    + ("contact.email" if target == "email" else "customer.first_name")
                    + " --for customers",
                )
            )
    for name, value in (getattr(customer_sync, "return_fields", None) or {}).items():
        try:
            check_return_field(name, value)
        except ConfigError as exc:
            problems.append(exc)
    return problems


# == lead → CreateBookingRequest ================================================================


class _BadValue(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def external_id_for(lead: Lead, section: Any, *, kind: str | None = None) -> str:
    """The booking's externalId for this lead: the join key, for ever."""
    name = section_name(kind, section)
    fields = getattr(section, "fields", None) or {}
    if "external_id" not in fields or "external_id" in missing_required(section):
        raise SetupRequired(name, ["external_id"])
    value = _source_value(lead, "external_id", spec_view(fields["external_id"]))
    if value is None:
        raise _missing_value(lead, "external_id", spec_view(fields["external_id"]))
    return str(value).strip()


def booking_request_for(lead: Lead, section: Any, *, kind: str | None = None) -> dict[str, Any]:
    """The exact CreateBookingRequest body (ServiceTitan camelCase) for this lead.

    Contacts carry the e-mail (``Email``) and phone (``MobilePhone``); yes/no become booleans;
    an address is sent only when all its required parts have values (ServiceTitan rejects a
    partial AddressModel); date-times are UTC RFC 3339. An optional target whose source has
    no value for this lead is left out; a required one raises ``InvalidRecord``.
    """
    name = section_name(kind, section)
    missing = missing_required(section)
    if missing:
        raise SetupRequired(name, missing)
    problems = booking_mapping_problems(section, kind=name)
    if problems:
        raise problems[0]
    fields: Mapping[str, Any] = section.fields
    body: dict[str, Any] = {}
    contacts: list[dict[str, str]] = []
    address: dict[str, str] = {}
    for target, path_kind in BOOKING_TARGETS.items():  # vocabulary order: a stable body
        if target not in fields:
            continue
        view = spec_view(fields[target])
        raw = _source_value(lead, target, view)
        if raw is None:
            if target in REQUIRED_BOOKING_TARGETS:
                raise _missing_value(lead, target, view)
            continue
        try:
            value = _convert(target, raw)
        except _BadValue as exc:
            raise InvalidRecord(
                f"lead {lead.describe()}: {_from_text(view)} gives {raw!r} for {target}, but {exc}",
                record=lead.email or lead.referral_code,
                field=target,
                hint=exc.hint or f"fix the lead in Referral Factory or change the mapping of {target} (`stsync map show`)",
            ) from None
        path = path_kind[0]
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


def incomplete_address_parts(section: Any) -> list[str]:
    """Required address parts left unmapped while others are mapped (the address is then
    never sent): for ``validate``'s warning."""
    fields = getattr(section, "fields", None) or {}
    mapped = [part for part in ADDRESS_PARTS if f"address.{part}" in fields]
    if not mapped:
        return []
    return [f"address.{part}" for part in REQUIRED_ADDRESS_PARTS if f"address.{part}" not in fields]


def _source_value(lead: Lead, target: str, view: SpecView) -> Any:
    """The raw value for ``target`` before conversion; None when this lead has none."""
    if view.kind == "from":
        return lead.value(str(view.payload))
    if view.kind == "template":
        return render_template(str(view.payload), lead.value)
    payload = view.payload
    if isinstance(payload, str):
        payload = payload.strip()
        return payload or None
    return payload


def _missing_value(lead: Lead, target: str, view: SpecView) -> InvalidRecord:
    label = BOOKING_TARGET_LABELS.get(target, target)
    return InvalidRecord(
        f"lead {lead.describe()} has no value for {_from_text(view)}, which the required ServiceTitan field "
        f"{label} ({target}) is mapped from",
        record=lead.email or lead.referral_code,
        field=target,
        hint=f"fill it in Referral Factory, or map {target} from another field or a fixed value "
        f"(`stsync map set {target} --value ...`)",
    )


def _from_text(view: SpecView) -> str:
    if view.kind == "from":
        return f"the Referral Factory field {view.payload}"
    if view.kind == "template":
        return f"the template {view.payload!r}"
    return f"the fixed value {view.payload!r}"


def _convert(target: str, raw: Any) -> Any:
    """``raw`` as the CreateBookingRequest wants it for ``target``; ``_BadValue`` if it cannot be."""
    kind = target_kind(target)
    if kind == "string":
        text = str(raw).strip() if not isinstance(raw, bool) else ("true" if raw else "false")
        if not text:
            raise _BadValue("it is empty")
        if target == "email" and not _EMAIL_RE.match(text):
            raise _BadValue("that is not an e-mail address")
        return text
    if kind == "yes_no":
        return _as_bool(raw)
    if kind in SELECT_OPTIONS:
        options = SELECT_OPTIONS[kind]
        option = _match_option(str(raw), options)
        if option is None:
            raise _BadValue("it takes one of: " + ", ".join(options))
        return option
    if kind == "integer":
        if isinstance(raw, bool):
            raise _BadValue("it takes a whole number (an ID)")
        try:
            number = int(str(raw).strip())
        except ValueError:
            raise _BadValue("it takes a whole number (an ID)") from None
        if number <= 0 or number >= 2**63:
            raise _BadValue("it takes a positive ServiceTitan ID")
        return number
    if kind == "datetime":
        return _as_utc_rfc3339(raw)
    raise _BadValue(f"unknown kind {kind}")  # a vocabulary entry without a converter


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().casefold()
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise _BadValue("it takes yes or no")


def _match_option(given: str, options: Iterable[str]) -> str | None:
    folded = given.strip().casefold()
    for option in options:
        if option.casefold() == folded:
            return option
    return None


def _as_utc_rfc3339(raw: Any) -> str:
    """``2025-06-02T15:00:00Z``: a date means midnight UTC, a time without offset means UTC."""
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, date):
        moment = datetime(raw.year, raw.month, raw.day)
    else:
        text = str(raw).strip()
        try:
            if re.fullmatch(r"\d{9,11}", text):  # Unix seconds, as some webhooks send
                moment = datetime.fromtimestamp(int(text), tz=timezone.utc)
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment = datetime.fromisoformat(text)
            else:
                moment = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
        except (ValueError, OverflowError, OSError):
            raise _BadValue(
                "it takes a date or date-time, e.g. 2025-06-02 or 2025-06-02T15:00:00Z"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        moment = moment.astimezone(timezone.utc).replace(microsecond=0)
    except OverflowError:  # year 1 with a negative offset, say
        raise _BadValue("it is outside the range of dates ServiceTitan takes") from None
    # isoformat pads the year to four digits (strftime's %Y does not for years < 1000).
    return moment.replace(tzinfo=None).isoformat() + "Z"


def _is_blank(payload: Any) -> bool:
    return payload is None or (isinstance(payload, str) and not payload.strip())


# == ServiceTitan customer → Referral Factory referrer =========================================


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


def referrer_request_for(
    customer: Any,
    contacts: Iterable[Any],
    fields: Mapping[str, Any],
    *,
    campaign_id: int,
    include_inactive: bool = False,
) -> ReferrerRequest | Skip:
    """The Referral Factory user a ServiceTitan customer becomes, or why it is skipped.

    ``contacts`` are the customer's contacts (``CustomerContact`` or ledger rows: anything
    with ``type``, ``value`` and ``active``). A merged customer is always skipped; an
    inactive one unless ``include_inactive``.
    """
    if getattr(customer, "merged_to_id", None) is not None:
        return Skip("merged", f"merged into customer {customer.merged_to_id}")
    if not getattr(customer, "active", True) and not include_inactive:
        return Skip("inactive", "the customer is deactivated in ServiceTitan")
    contact_list = _ordered_contacts(contacts)
    for target in REQUIRED_REFERRER_TARGETS:
        if target not in fields:
            raise ConfigError(
                f"[customer_sync.fields] has no mapping for {target}, which every Referral Factory user needs",
                key_path=f"customer_sync.fields.{target}",
                hint="run `stsync validate`",
            )
    values: dict[str, str] = {}
    for target, spec in fields.items():
        view = spec_view(spec)
        if view.kind == "from":
            value = customer_value(str(view.payload), customer, contact_list)
        elif view.kind == "template":
            value = render_template(str(view.payload), lambda name: customer_value(name, customer, contact_list))
        else:
            value = None if _is_blank(view.payload) else str(view.payload).strip()
        if value is not None:
            values[target] = value
    email = values.get("email")
    if email is None:
        emails = [c for c in contact_list if _contact_type(c) == "email"]
        if emails:
            return Skip("invalid_email", "no valid e-mail among: " + ", ".join(str(c.value) for c in emails))
        return Skip("no_email", "the customer has no e-mail contact")
    if not _EMAIL_RE.match(email):
        return Skip("invalid_email", f"{email!r} is not an e-mail address")
    first_name = values.get("first_name") or _text(getattr(customer, "name", None))
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


def customer_value(source: str, customer: Any, contacts: list[Any]) -> str | None:
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


def first_valid_email(contacts: Iterable[Any]) -> str | None:
    for contact in contacts:
        if _contact_type(contact) == "email":
            value = _text(contact.value)
            if value and _EMAIL_RE.match(value):
                return value
    return None


_NAME_PARTICLES = frozenset({"van", "von", "de", "der", "den", "del", "della", "da", "di", "du", "la", "le", "st.", "st", "bin", "al"})
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


def _ordered_contacts(contacts: Iterable[Any]) -> list[Any]:
    """Active contacts with a value, oldest first (by id): "the first e-mail" stays the same
    e-mail from run to run, so the referrer's fingerprint does not flap."""
    usable = [c for c in contacts if _is_active(c) and _text(getattr(c, "value", None))]
    return sorted(usable, key=lambda c: _contact_id(c))


def _contact_id(contact: Any) -> int:
    for attribute in ("id", "contact_id"):
        value = getattr(contact, attribute, None)
        if isinstance(value, int):
            return value
    return 2**63


def _is_active(contact: Any) -> bool:
    active = getattr(contact, "active", True)
    return True if active is None else bool(active)


def _contact_type(contact: Any) -> str:
    return str(getattr(contact, "type", "") or "").replace(" ", "").casefold()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# == return fields → customer custom fields =====================================================


def return_values_for(return_fields: Mapping[str, str], *, referral_link: str | None, referral_code: str | None) -> dict[str, str]:
    """custom field name → value, from ``[customer_sync.return_fields]`` and the referrer's link and code."""
    available = {ReturnValue.REFERRAL_LINK: referral_link, ReturnValue.REFERRAL_CODE: referral_code}
    return {name: available[value] for name, value in return_fields.items() if available.get(value)}  # type: ignore[misc]


def resolve_custom_field_type(name: str, types: Iterable[Any], *, taken: Iterable[str] = ()) -> Any:
    """The custom-field type called ``name``: exact first, then case-insensitively.

    ``taken``: the other configured return fields, never offered as "did you mean" (the
    "Referral Link" field is no suggestion for a missing "Referral Code")."""
    pool = list(types)
    for candidate in pool:
        if candidate.name == name:
            return candidate
    wanted = name.strip().casefold()
    for candidate in pool:
        if candidate.name is not None and candidate.name.strip().casefold() == wanted:
            return candidate
    others = {other.strip().casefold() for other in taken if other != name}
    known = [t.name for t in pool if t.name and t.name.strip().casefold() not in others]
    raise ConfigError(
        f"ServiceTitan has no customer custom field named {name!r}{did_you_mean(name, known)}",
        key_path=f'customer_sync.return_fields."{name}"',
        hint="create it in ServiceTitan (Settings → Custom Fields → Customers, type Text) or fix the name; "
        "then check with `stsync validate --online`",
    )


def return_field_update(customer: Any, values: Mapping[str, str], types: Iterable[Any]) -> dict[str, Any] | None:
    """The ``PATCH /customers/{id}`` body writing ``values`` (custom field name → text).

    Read-modify-write (api/servicetitan.md §6.6): every other custom field the customer has
    is sent back unchanged, because a customFields PATCH may drop what it omits. None when
    every value is already there (SPEC §6.3: written only when changed).
    """
    type_list = list(types)
    wanted: dict[int, str] = {}
    for name, value in values.items():
        field_type = resolve_custom_field_type(name, type_list, taken=values)
        data_type = getattr(field_type, "data_type", None)
        if data_type is not None and data_type.casefold() != "text":
            raise ConfigError(
                f"ServiceTitan customer custom field {field_type.name!r} is {data_type}, not Text: "
                "a referral link or code cannot be written to it",
                key_path=f'customer_sync.return_fields."{name}"',
                hint="use a Text custom field; check with `stsync validate --online`",
            )
        wanted[int(field_type.id)] = str(value)
    existing: dict[int, str | None] = {}
    for custom in getattr(customer, "custom_fields", None) or []:
        existing.setdefault(int(custom.type_id), custom.value)
    if all(existing.get(type_id) == value for type_id, value in wanted.items()):
        return None
    custom_fields: list[dict[str, Any]] = []
    for type_id, value in existing.items():
        if type_id in wanted:
            custom_fields.append({"typeId": type_id, "value": wanted.pop(type_id)})
        elif value is not None:  # a field without a value has nothing to preserve
            custom_fields.append({"typeId": type_id, "value": value})
    custom_fields.extend({"typeId": type_id, "value": value} for type_id, value in wanted.items())
    return {"customFields": custom_fields}


# == describing a mapping (map show, validate, diagnose) =======================================


@dataclass(frozen=True)
class MappingRow:
    """One row of the setup guide's Step 5 table."""

    target: str
    target_label: str
    required: bool
    data_type: str | None  # None: required but unmapped
    source: str | None  # what the "From Referral Factory" column shows
    spec: dict[str, Any] | None  # the TOML form, for --json

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "target_label": self.target_label,
            "required": self.required,
            "data_type": self.data_type,
            "from": self.source,
            "spec": self.spec,
            "mapped": self.spec is not None,
        }


def describe_source(view: SpecView) -> str:
    """The "From Referral Factory" column: ``Campaign Name``, ``"Referral"``, ``"Yes"``, a template."""
    if view.kind == "from":
        name = str(view.payload)
        if name.startswith(META_PREFIX):
            return f"{name[len(META_PREFIX):]} (form field)"
        return LEAD_FIELD_LABELS.get(name, name)
    if view.kind == "select":
        return f'"{str(view.payload)[:1].upper()}{str(view.payload)[1:]}"'
    if view.kind == "template":
        return str(view.payload)
    payload = view.payload
    if isinstance(payload, bool):
        payload = "yes" if payload else "no"
    return f'"{payload}"'


def booking_rows(section: Any) -> list[MappingRow]:
    """Required targets first (SPEC order, unmapped ones included), then the mapped optional ones."""
    fields = getattr(section, "fields", None) or {}
    rows: list[MappingRow] = []
    ordered = list(REQUIRED_BOOKING_TARGETS) + [t for t in BOOKING_TARGETS if t not in REQUIRED_BOOKING_TARGETS]
    ordered += [t for t in fields if t not in BOOKING_TARGETS]  # unknown targets still show (validate names them)
    for target in ordered:
        required = target in REQUIRED_BOOKING_TARGETS
        spec = fields.get(target)
        if spec is None and not required:
            continue
        label = BOOKING_TARGET_LABELS.get(target, target)
        if spec is None:
            rows.append(MappingRow(target, label, True, None, None, None))
            continue
        try:
            view = spec_view(spec)
        except ConfigError:
            rows.append(MappingRow(target, label, required, None, None, None))
            continue
        rows.append(MappingRow(target, label, required, view.data_type, describe_source(view), view.to_toml()))
    return rows


CUSTOMER_SOURCE_LABELS = {
    "customer.id": "Customer ID",
    "customer.name": "Customer Name",
    "customer.first_name": "First Name (from the customer name)",
    "customer.last_name": "Last Name (from the customer name)",
    "customer.type": "Customer Type",
    "contact.email": "Email (first valid contact)",
    "contact.phone": "Phone (first phone contact)",
}


def describe_customer_source(view: SpecView) -> str:
    if view.kind == "from":
        name = str(view.payload)
        if name.startswith(CUSTOM_PREFIX):
            return f"{name[len(CUSTOM_PREFIX):]} (custom field)"
        if name.startswith("address."):
            return "Address: " + name.split(".", 1)[1].capitalize()
        return CUSTOMER_SOURCE_LABELS.get(name, name)
    return describe_source(view)


def referrer_target_label(target: str) -> str:
    if target.startswith(META_PREFIX):
        return f"{target[len(META_PREFIX):]} (form field)"
    return {"first_name": "First Name", "email": "Email"}.get(target, target)


@dataclass
class SectionStatus:
    """What ``map show`` and ``validate`` say about one booking section."""

    section: str
    action: str
    missing: list[str] = field(default_factory=list)

    @property
    def setup_required(self) -> bool:
        return self.action == Action.CREATE_BOOKING and bool(self.missing)


def section_status(section: Any, *, kind: str) -> SectionStatus:
    action = str(getattr(section, "action", Action.NOTHING))
    return SectionStatus(section=section_name(kind), action=action, missing=missing_required(section))


# The seed's words for each action and return value.
ACTION_LABELS = {Action.CREATE_BOOKING: "Create New Booking In Service Titan", Action.NOTHING: "Nothing to action"}
RETURN_VALUE_LABELS = {ReturnValue.REFERRAL_LINK: "Referral Link", ReturnValue.REFERRAL_CODE: "Referral Code"}


def qualification_label(rule: str, job_status: str | None) -> str:
    """The setup guide's Step 6 wording of a rule."""
    if rule == QualificationRule.JOB_CREATED:
        return "Booking becomes a job"
    if rule == QualificationRule.JOB_STATUS:
        return f"Booking becomes a job and reached status {job_status}"
    return "Do not qualify my referrals"


def mapping_overview(config: Any, *, sections: Iterable[str] = ("leads", "referrers", "customers")) -> dict[str, Any]:
    """What ``map show`` renders (and prints with ``--json``): per section, the action, the
    Step 5 table rows, the Setup Required state; for customers the fields and return fields."""
    overview: dict[str, Any] = {}
    for name in sections:
        if name in ("leads", "referrers"):
            section = getattr(config, name)
            status = section_status(section, kind=name)
            entry: dict[str, Any] = {
                "action": status.action,
                "action_label": ACTION_LABELS.get(status.action, status.action),
                "setup_required": status.setup_required,
                "missing": status.missing,
                "fields": [row.to_dict() for row in booking_rows(section)],
            }
            if name == "leads":
                q = section.qualification
                entry["qualification"] = {
                    "rule": q.rule,
                    "job_status": q.job_status,
                    "unqualify_on": list(q.unqualify_on),
                    "label": qualification_label(q.rule, q.job_status),
                }
            overview[name] = entry
        elif name == "customers":
            sync = config.customer_sync
            rows = []
            for target, spec in sync.fields.items():
                view = spec_view(spec)
                rows.append(
                    {
                        "target": target,
                        "target_label": referrer_target_label(target),
                        "required": target in REQUIRED_REFERRER_TARGETS,
                        "data_type": view.data_type,
                        "from": describe_customer_source(view),
                        "spec": view.to_toml(),
                        "mapped": True,
                    }
                )
            for target in REQUIRED_REFERRER_TARGETS:
                if target not in sync.fields:
                    rows.append(
                        {"target": target, "target_label": referrer_target_label(target), "required": True,
                         "data_type": None, "from": None, "spec": None, "mapped": False}
                    )
            overview["customers"] = {
                "mode": sync.mode,
                "include_inactive": sync.include_inactive,
                "fields": rows,
                "missing": [t for t in REQUIRED_REFERRER_TARGETS if t not in sync.fields],
                "return_fields": [
                    {"custom_field": field_name, "value": value, "value_label": RETURN_VALUE_LABELS.get(value, value)}
                    for field_name, value in sync.return_fields.items()
                ],
            }
        else:
            raise ValueError(f"unknown section {name!r}")
    return overview


__all__ = [
    "BOOKING_TARGET_LABELS",
    "CUSTOMER_SOURCES",
    "MappingRow",
    "REFERRER_TARGETS",
    "RETURN_VALUES",
    "ReferrerRequest",
    "Skip",
    "booking_request_for",
    "booking_rows",
    "external_id_for",
    "missing_required",
    "referrer_request_for",
    "return_field_update",
    "return_values_for",
    "split_customer_name",
]
