"""A referrer's link and code → the ServiceTitan customer's custom fields
(``[customer_sync.return_fields]``: custom field name → ``referral_link`` | ``referral_code``).

- ``return_values_for(return_fields, referral_link=, referral_code=)``: custom field name →
  the text to write (a value the referrer does not have is left out).
- ``resolve_custom_field_type(name, types, taken=)``: the ServiceTitan custom-field type of
  that name, exact first, then ignoring case; ``ConfigError`` naming the closest other name
  (never another configured return field) when there is none.
- ``writable_type_ids(names, types)``: custom field name → its type id; ``ConfigError`` for a
  name ServiceTitan does not have or a field that is not Text (checked before a run writes).
- ``return_field_update(customer, values, types)``: the ``PATCH /customers/{id}`` body, or
  None when every value is already there (written only when changed, SPEC §6.3). Every other
  custom field the customer has is sent back unchanged (a customFields PATCH may drop what it
  omits). ``ConfigError`` for a name ServiceTitan does not have or a field that is not Text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stsync.errors import ConfigError
from stsync.servicetitan.models import Customer, CustomFieldType
from stsync.suggestions import did_you_mean
from stsync.vocabulary import ReturnValue


def return_values_for(
    return_fields: Mapping[str, str], *, referral_link: str | None, referral_code: str | None
) -> dict[str, str]:
    """custom field name → value, from ``[customer_sync.return_fields]`` and the referrer's link and code."""
    available: dict[str, str | None] = {ReturnValue.REFERRAL_LINK: referral_link, ReturnValue.REFERRAL_CODE: referral_code}
    return {name: text for name, value in return_fields.items() if (text := available.get(value))}


def resolve_custom_field_type(name: str, types: Iterable[CustomFieldType], *, taken: Iterable[str] = ()) -> CustomFieldType:
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


def writable_type_ids(names: Iterable[str], types: Iterable[CustomFieldType]) -> dict[str, int]:
    """Each return field's custom-field type id; ``ConfigError`` for a name ServiceTitan does
    not have or a field that is not Text."""
    type_list, name_list = list(types), list(names)
    type_ids: dict[str, int] = {}
    for name in name_list:
        field_type = resolve_custom_field_type(name, type_list, taken=name_list)
        data_type = field_type.data_type
        if data_type is not None and data_type.casefold() != "text":
            raise ConfigError(
                f"ServiceTitan customer custom field {field_type.name!r} is {data_type}, not Text: "
                "a referral link or code cannot be written to it",
                key_path=f'customer_sync.return_fields."{name}"',
                hint="use a Text custom field; check with `stsync validate --online`",
            )
        type_ids[name] = int(field_type.id)
    return type_ids


def return_field_update(customer: Customer, values: Mapping[str, str], types: Iterable[CustomFieldType]) -> dict[str, Any] | None:
    """The ``PATCH /customers/{id}`` body writing ``values`` (custom field name → text).

    Read-modify-write (api/servicetitan.md §6.6): every other custom field the customer has
    is sent back unchanged, because a customFields PATCH may drop what it omits. None when
    every value is already there (SPEC §6.3: written only when changed).
    """
    wanted = {type_id: str(values[name]) for name, type_id in writable_type_ids(values, types).items()}
    existing: dict[int, str | None] = {}
    for custom in customer.custom_fields:
        existing.setdefault(int(custom.type_id), custom.value)
    if all(existing.get(type_id) == value for type_id, value in wanted.items()):
        return None
    custom_fields: list[dict[str, Any]] = []
    for type_id, current in existing.items():
        if type_id in wanted:
            custom_fields.append({"typeId": type_id, "value": wanted.pop(type_id)})
        elif current is not None:  # a field without a value has nothing to preserve
            custom_fields.append({"typeId": type_id, "value": current})
    custom_fields.extend({"typeId": type_id, "value": text} for type_id, text in wanted.items())
    return {"customFields": custom_fields}
