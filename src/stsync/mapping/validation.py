"""Whether a mapping can work, before anything is sent.

Booking sections ([leads], [referrers]: ``BookingSettings``):
- ``check_booking_target(target, section_name=)`` / ``check_booking_spec(target, spec,
  section_name=)`` raise ``ConfigError`` with the key path (``leads.fields.nmae``), the closest
  name (``did you mean 'name'?``) and a hint: an unknown target or source field, an option the
  target does not have, a Manual Select on a free-text target, a fixed value the target
  cannot take (``values.convert``), an empty value, an ``external_id`` that is not made from a
  lead's own field (a fixed value, a select, a template without a field: every lead would share
  one External Id).
- ``booking_mapping_problems(section)``: every invalid entry, as ConfigErrors (never raises).
- ``missing_required(section)``: required targets without a non-empty mapping, in SPEC order
  (the seed's "Setup Required").
- ``incomplete_address_parts(section)``: required address parts left out while others are
  mapped (the address is then never sent; ``validate`` warns).

Customer sync ([customer_sync]: ``CustomerSyncSettings``):
- ``check_referrer_target`` / ``check_referrer_spec`` / ``check_return_field`` raise
  ``ConfigError`` likewise; ``customer_mapping_problems(customer_sync)`` collects every
  problem of the fields, the required referrer targets and the return fields.
"""

from __future__ import annotations

from stsync.errors import ConfigError
from stsync.leads import LEAD_FIELDS, META_PREFIX, is_lead_source
from stsync.mapping.values import BadValue, convert, match_option
from stsync.mapping.vocabulary import (
    CUSTOMER_SOURCES,
    REFERRER_TARGETS,
    REQUIRED_REFERRER_TARGETS,
    RETURN_VALUES,
    is_customer_source,
    select_options,
)
from stsync.servicetitan.vocabulary import ADDRESS_PARTS, BOOKING_TARGETS, REQUIRED_ADDRESS_PARTS, REQUIRED_BOOKING_TARGETS
from stsync.storage.config import (
    BookingSettings,
    CustomerSyncSettings,
    FieldSpec,
    FixedValue,
    SelectValue,
)
from stsync.suggestions import did_you_mean

# -- booking sections ([leads], [referrers]) ----------------------------------------------------

# The booking's join key: its value must differ for every lead (a fixed one books the first
# lead and makes every later one "already booked").
UNIQUE_PER_LEAD = "external_id"


def check_booking_target(target: str, *, section_name: str = "leads") -> None:
    if target not in BOOKING_TARGETS:
        raise ConfigError(
            f"unknown ServiceTitan booking field {target!r}{did_you_mean(target, BOOKING_TARGETS)}",
            key_path=f"{section_name}.fields.{target}",
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


def check_booking_spec(target: str, spec: FieldSpec, *, section_name: str = "leads") -> None:
    """Raise ``ConfigError`` (key path + suggestion) when ``target = spec`` cannot work."""
    check_booking_target(target, section_name=section_name)
    key_path = f"{section_name}.fields.{target}"
    for source in spec.sources():
        check_lead_source(source, key_path=key_path)
    if target == UNIQUE_PER_LEAD and not spec.sources():
        raise ConfigError(
            f"{target} cannot be {_fixed_kind(spec)}: every lead would get the same External Id, so each lead after "
            "the first would be taken as \"already booked\" and never get a booking",
            key_path=key_path,
            hint=f"map it from a field unique to each lead: stsync map set {target} --from referral_code --for {section_name}",
        )
    if isinstance(spec, SelectValue):
        options = select_options(target)
        if not options:
            raise ConfigError(
                f"{target} is not a Manual Select field (it takes free text)",
                key_path=key_path,
                hint=f"use `--value` instead: stsync map set {target} --value <text> --for {section_name}",
            )
        if match_option(spec.select, options) is None:
            raise ConfigError(
                f"{spec.select!r} is not an option of {target}{did_you_mean(spec.select, options)}",
                key_path=key_path,
                hint=f"{target} takes one of: " + ", ".join(options),
            )
    elif isinstance(spec, FixedValue):  # must already be what the target accepts
        try:
            convert(target, spec.value)
        except BadValue as exc:
            raise ConfigError(f"{target} = {spec.value!r}: {exc}", key_path=key_path, hint=exc.hint) from None
    if spec.is_blank:
        raise ConfigError(f"{target} is mapped to an empty {spec.kind}", key_path=key_path)


def _fixed_kind(spec: FieldSpec) -> str:
    if isinstance(spec, SelectValue):
        return "a Manual Select"
    if isinstance(spec, FixedValue):
        return "a fixed value"
    return "a template without a field"


def missing_required(section: BookingSettings) -> list[str]:
    """Required booking targets without a (non-empty) mapping, in SPEC order."""
    missing = []
    for target in REQUIRED_BOOKING_TARGETS:
        spec = section.fields.get(target)
        if spec is None or spec.is_blank:
            missing.append(target)
    return missing


def booking_mapping_problems(section: BookingSettings) -> list[ConfigError]:
    """Every invalid entry of a ``[leads]`` / ``[referrers]`` mapping (not the missing ones)."""
    problems: list[ConfigError] = []
    for target, spec in section.fields.items():
        try:
            check_booking_spec(target, spec, section_name=section.section_name)
        except ConfigError as exc:
            problems.append(exc)
    return problems


def incomplete_address_parts(section: BookingSettings) -> list[str]:
    """Required address parts left unmapped while others are mapped (the address is then
    never sent): for ``validate``'s warning."""
    mapped = [part for part in ADDRESS_PARTS if f"address.{part}" in section.fields]
    if not mapped:
        return []
    return [f"address.{part}" for part in REQUIRED_ADDRESS_PARTS if f"address.{part}" not in section.fields]


# -- customers → referrers ([customer_sync]) ----------------------------------------------------


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


def check_customer_source(source: str, *, key_path: str) -> None:
    if not is_customer_source(source):
        raise ConfigError(
            f"unknown ServiceTitan customer field {source!r}{did_you_mean(source, CUSTOMER_SOURCES)}",
            key_path=key_path,
            hint="customer fields are " + ", ".join(CUSTOMER_SOURCES) + ", and custom.<field name>",
        )


def check_referrer_spec(target: str, spec: FieldSpec) -> None:
    check_referrer_target(target)
    key_path = f"customer_sync.fields.{target}"
    for source in spec.sources():
        check_customer_source(source, key_path=key_path)
    if isinstance(spec, SelectValue):
        raise ConfigError(
            f"{target} is not a Manual Select field (Referral Factory user fields take text)",
            key_path=key_path,
            hint=f"use `--value` instead: stsync map set {target} --value <text> --for customers",
        )
    if spec.is_blank:
        raise ConfigError(f"{target} is mapped to an empty {spec.kind}", key_path=key_path)
    if target == "email" and isinstance(spec, FixedValue):
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


def missing_referrer_target(target: str, *, hint: str | None = None) -> ConfigError:
    """The error for a required referrer target ``[customer_sync.fields]`` does not map."""
    return ConfigError(
        f"[customer_sync.fields] has no mapping for {target}, which every Referral Factory user needs",
        key_path=f"customer_sync.fields.{target}",
        hint=hint
        or f"stsync map set {target} --from "
        + ("contact.email" if target == "email" else "customer.first_name")
        + " --for customers",
    )


def customer_mapping_problems(customer_sync: CustomerSyncSettings) -> list[ConfigError]:
    problems: list[ConfigError] = []
    for target, spec in customer_sync.fields.items():
        try:
            check_referrer_spec(target, spec)
        except ConfigError as exc:
            problems.append(exc)
    for target in REQUIRED_REFERRER_TARGETS:
        if target not in customer_sync.fields:
            problems.append(missing_referrer_target(target))
    for name, value in customer_sync.return_fields.items():
        try:
            check_return_field(name, value)
        except ConfigError as exc:
            problems.append(exc)
    return problems
