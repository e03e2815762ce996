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
  omits) — except an **empty** value: it carries nothing to preserve, and ServiceTitan may
  refuse it (api/servicetitan.md §11). A value of a type the tenant no longer lists is sent
  back: under the replace reading of the PATCH, leaving it out could erase what ServiceTitan
  still holds (docs/custom-fields.md weighs both readings). ``ConfigError`` for a name
  ServiceTitan does not have or a field that is not Text.
- ``refused_custom_fields(errors, body, types, written)``: when ServiceTitan refuses that
  PATCH (400), the *other* fields it names (``CustomFields[i].Value`` / ``.TypeId``), or,
  when it names none, the echoed values that cannot be valid today (a retired Dropdown
  option, a non-numeric Numeric value, a type no longer listed): ``RefusedField`` each, with
  why. Empty when the refusal is about the values stsync writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
        elif not _is_blank(current):
            # Sent back as it is, whatever its type: a PATCH that replaces the list would erase it.
            custom_fields.append({"typeId": type_id, "value": current})
        # A field without a value (None, "", blanks) has nothing to preserve, and an empty
        # value may be refused: it is left out.
    custom_fields.extend({"typeId": type_id, "value": text} for type_id, text in wanted.items())
    return {"customFields": custom_fields}


def _is_blank(value: str | None) -> bool:
    return value is None or not str(value).strip()


@dataclass(frozen=True)
class RefusedField:
    """A custom field of the customer's own that ServiceTitan refuses to take back."""

    type_id: int
    name: str | None
    value: str | None
    problem: str  # why it cannot be valid today (ServiceTitan's words when it gave some)

    def describe(self) -> str:
        name = f"{self.name!r} (type {self.type_id})" if self.name else f"type {self.type_id}"
        return f"custom field {name} = {self.value!r} ({self.problem.rstrip('.')})"

    def to_dict(self) -> dict[str, Any]:
        return {"type_id": self.type_id, "name": self.name, "value": self.value, "problem": self.problem}


_INDEXED = re.compile(r"customfields\[(\d+)\]", re.IGNORECASE)
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$")


def refused_custom_fields(
    errors: Mapping[str, Sequence[str]] | None,
    body: Mapping[str, Any],
    types: Iterable[CustomFieldType],
    written: Iterable[int],
    *,
    names: Mapping[int, str | None] | None = None,
) -> list[RefusedField]:
    """The fields of the customer's own (not ``written``, the type ids stsync writes) that a
    400 to ``body`` blames: those ServiceTitan's ``errors`` name by index, else — when it
    names none — the echoed values that cannot be valid today. ``names``: type id → name as
    the customer shows it (a type no longer listed has no other)."""
    sent = list(body.get("customFields") or [])
    own = {int(type_id) for type_id in written}
    listed = {int(t.id): t for t in types}
    known_names = dict(names or {})
    blamed: dict[int, RefusedField] = {}
    for key, messages in (errors or {}).items():
        match = _INDEXED.search(str(key))
        if match is None or int(match.group(1)) >= len(sent):
            continue
        entry = sent[int(match.group(1))]
        type_id = int(entry["typeId"])
        if type_id in own:
            continue
        field_type = listed.get(type_id)
        said = " ".join(str(m) for m in messages) if messages else "refused"
        name = field_type.name if field_type is not None else known_names.get(type_id)
        blamed.setdefault(type_id, RefusedField(type_id, name, entry.get("value"), said))
    if blamed or any(_INDEXED.search(str(key)) for key in (errors or {})):
        return list(blamed.values())
    out = []
    for entry in sent:
        type_id = int(entry["typeId"])
        if type_id in own:
            continue
        problem = _invalid_today(listed.get(type_id), entry.get("value"))
        if problem is not None:
            name = listed[type_id].name if type_id in listed else known_names.get(type_id)
            out.append(RefusedField(type_id, name, entry.get("value"), problem))
    return out


def _invalid_today(field_type: CustomFieldType | None, value: Any) -> str | None:
    """Why a value could not be given to a field today (None when it could, as far as the
    custom-field types tell)."""
    if field_type is None:
        return "the tenant no longer lists this custom field"
    data_type = (field_type.data_type or "").casefold()
    text = "" if value is None else str(value)
    if data_type == "dropdown" and field_type.data_type_options and text not in field_type.data_type_options:
        return "not one of the field's options (" + ", ".join(field_type.data_type_options) + ")"
    if data_type == "numeric" and not _NUMBER.match(text):
        return "not a number, and the field is Numeric"
    return None

