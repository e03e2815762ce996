"""Request bodies checked against ServiceTitan's own schemas, errors worded as ASP.NET words them.

``schemas/servicetitan.json`` is extracted from ServiceTitan's v2 specs by
``tools/extract_servicetitan_schemas.py`` (JSON Schema 2020-12 under ``$defs``). Validators
are compiled once per schema name and reused (validation is on the hot path of a
10,000-customer sync).

How ServiceTitan (ASP.NET Core + System.Text.Json) reports a bad body, and so the sandbox:

- A value of the wrong JSON type, an unknown enum name, an unparsable date-time or an
  unknown property stops deserialisation at the **first** such value, in document order:
  ``errors = {"$.isFirstTimeClient": ["The JSON value could not be converted to
  System.Boolean. Path: $.isFirstTimeClient."], "<parameter>": ["The <parameter> field is
  required."]}`` (the action parameter is then null, which model validation reports too).
- Otherwise every missing or empty required field is reported by its C# path:
  ``{"Name": ["The Name field is required."], "Address.Zip": [...]}`` (``[Required]``
  rejects empty strings too).

Readings chosen where ServiceTitan is silent (api/servicetitan.md marks them unconfirmed):
- ``additionalProperties: false`` is enforced on requests: an unknown or misspelt property
  is a 400, not silently dropped (the strict reading; it catches ``isFirstTimeCustomer``).
- ``null`` is accepted only where the spec marks a field nullable — and for ``unit`` in the
  patch address models, which list it as required: it must be present, may be null.
- A customer custom field's ``value`` is not checked for emptiness here: whether ``""`` is
  refused depends on what the customer already holds (``servicetitan.py`` decides).
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_CONVERSION_VALIDATORS = frozenset({"type", "enum", "format", "additionalProperties", "const"})
_EMPTINESS_CHECKED_ELSEWHERE = frozenset({("Crm.V2.Customers.CustomFieldUpdateModel", "value")})


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time with an offset ("in UTC", the spec says), else None."""
    if not _RFC3339.match(text):
        return None
    try:
        return datetime.fromisoformat(text.replace("z", "Z").replace("t", "T").replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_query_datetime(text: str) -> datetime | None:
    """A date-time query value: RFC 3339 with an offset, or a plain date (midnight UTC)."""
    moment = parse_rfc3339(text)
    if moment is not None:
        return moment
    if _DATE.match(text):
        try:
            return datetime.fromisoformat(text + "T00:00:00+00:00")
        except ValueError:
            return None
    return None


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())

    @checker.checks("date-time")
    def _datetime(value: object) -> bool:
        return not isinstance(value, str) or parse_rfc3339(value) is not None

    @checker.checks("int64")
    def _int64(value: object) -> bool:
        return not isinstance(value, int) or INT64[0] <= value <= INT64[1]

    @checker.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or INT32[0] <= value <= INT32[1]

    @checker.checks("guid")
    def _guid(value: object) -> bool:
        return not isinstance(value, str) or bool(_GUID.match(value))

    return checker


@cache
def raw_document() -> dict[str, Any]:
    """The extracted schemas exactly as ServiceTitan's specs give them."""
    text = resources.files("stsync.sandbox").joinpath("schemas/servicetitan.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def request_document() -> dict[str, Any]:
    """The schemas requests are checked against: ``minLength: 1`` added on required strings,
    because ASP.NET's ``[Required]`` rejects an empty string as missing."""
    doc = json.loads(json.dumps(raw_document()))
    for def_name, definition in doc["$defs"].items():
        properties = definition.get("properties") or {}
        for name in definition.get("required") or ():
            if (def_name, name) in _EMPTINESS_CHECKED_ELSEWHERE:
                continue
            prop = properties.get(name)
            if name == "unit" and isinstance(prop, dict):
                # The patch address models list ``unit`` as required, yet most addresses have
                # none: it must be present, and may be null or empty (else no unit-less
                # address could ever be patched).
                prop["type"] = ["string", "null"]
            elif isinstance(prop, dict) and prop.get("type") == "string" and "format" not in prop:
                prop["minLength"] = 1
    return doc


def response_validator(name: str) -> Draft202012Validator:
    """A validator of a response schema, as the spec states it (for contract tests)."""
    return Draft202012Validator(
        {"$defs": raw_document()["$defs"], "$ref": f"#/$defs/{name}"}, format_checker=_format_checker()
    )


def _dotnet_type(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "System.Object"
    if "title" in schema:
        return str(schema["title"])
    kind = schema.get("type")
    nullable = isinstance(kind, list) and "null" in kind
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    fmt = schema.get("format")
    if kind == "boolean":
        name = "System.Boolean"
    elif kind == "integer":
        name = "System.Int32" if fmt == "int32" else "System.Int64"
    elif kind == "number":
        name = "System.Decimal" if fmt == "decimal" else "System.Double"
    elif kind == "string":
        name = {"date-time": "System.DateTime", "guid": "System.Guid"}.get(fmt or "", "System.String")
        nullable = nullable and name != "System.String"
    elif kind == "array":
        return f"System.Collections.Generic.List`1[{_dotnet_type(schema.get('items'))}]"
    else:
        return "System.Object"
    return f"System.Nullable`1[{name}]" if nullable else name


def _json_path(path: Any) -> str:
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _member_path(path: Any) -> str:
    """``contacts, 0, value`` → ``Contacts[0].Value`` (C# member names)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part[:1].upper() + part[1:]
    return text


def _document_order(instance: Any, path: Any) -> tuple:
    """Where ``path`` sits in the JSON text: ASP.NET stops at the first bad value it reads."""
    order: list[int] = []
    node = instance
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            order.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            order.append(part)
            node = node[part] if part < len(node) else None
        else:
            order.append(0)
    return tuple(order)


class SchemaValidator:
    """Compiled validators for the extracted schemas; ``errors(name, body)`` in ASP.NET shape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._validators: dict[str, Draft202012Validator] = {}
        self._checker = _format_checker()

    def names(self) -> list[str]:
        return list(raw_document()["$defs"])

    def validator(self, name: str) -> Draft202012Validator:
        found = self._validators.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._validators.get(name)
            if found is None:
                doc = request_document()
                if name not in doc["$defs"]:
                    raise KeyError(f"no ServiceTitan schema called {name!r}")
                schema = {"$defs": doc["$defs"], "$ref": f"#/$defs/{name}"}
                found = Draft202012Validator(schema, format_checker=self._checker)
                self._validators[name] = found
        return found

    def is_valid(self, name: str, instance: Any) -> bool:
        return self.validator(name).is_valid(instance)

    def errors(self, name: str, instance: Any, *, parameter: str | None = None) -> dict[str, list[str]]:
        """``{}`` when ``instance`` is a valid ``name``; else ASP.NET's ``errors`` object.

        ``parameter`` is the action parameter's name (the spec's body parameter, e.g.
        ``crm.V2.CreateBookingRequest``), reported as required when deserialisation fails.
        """
        found = list(self.validator(name).iter_errors(instance))
        if not found:
            return {}
        conversions = []
        required: dict[str, list[str]] = {}
        for error in found:
            if error.validator == "required":
                for prop in error.validator_value:
                    if isinstance(error.instance, dict) and prop not in error.instance:
                        member = _member_path([*error.absolute_path, prop])
                        required.setdefault(member, [f"The {member.rsplit('.', 1)[-1]} field is required."])
            elif error.validator == "minLength":
                member = _member_path(error.absolute_path)
                required.setdefault(member, [f"The {member.rsplit('.', 1)[-1]} field is required."])
            elif error.validator == "type" and error.instance is None and self._required_here(error):
                member = _member_path(error.absolute_path)
                required.setdefault(member, [f"The {member.rsplit('.', 1)[-1]} field is required."])
            elif error.validator in _CONVERSION_VALIDATORS:
                conversions.append(error)
            else:  # minimum, maxItems, ...: not used by these schemas, reported plainly
                member = _member_path(error.absolute_path) or "$"
                required.setdefault(member, []).append(error.message)
        if conversions:
            first = min(conversions, key=lambda e: _document_order(instance, self._bad_value_path(e)))
            path = self._bad_value_path(first)
            if first.validator == "additionalProperties":
                message = (
                    f"The JSON property '{path[-1]}' could not be mapped to any .NET member contained in type "
                    f"'{_dotnet_type(first.schema)}'."
                )
            else:
                message = (
                    f"The JSON value could not be converted to {_dotnet_type(first.schema)}. Path: {_json_path(path)}."
                )
            result = {_json_path(path): [message]}
            if parameter:
                result[parameter] = [f"The {parameter} field is required."]
            return result
        return required

    @staticmethod
    def _bad_value_path(error: Any) -> list:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties") or {})
            extra = [key for key in error.instance if key not in known]
            if extra:
                path.append(extra[0])
        return path

    @staticmethod
    def _required_here(error: Any) -> bool:
        """A ``null`` string property reads as missing: System.Text.Json sets it, then
        ``[Required]`` (or the non-nullable member) reports "field is required"."""
        schema = error.schema
        return isinstance(schema, dict) and schema.get("type") == "string" and bool(error.absolute_path)


@cache
def validator() -> SchemaValidator:
    return SchemaValidator()
