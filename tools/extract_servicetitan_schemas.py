"""Extract the ServiceTitan schemas the sandbox needs into ``src/stsync/sandbox/schemas/servicetitan.json``.

The installed package must not need ``../shared``, so the component schemas that stsync
sends (CreateBookingRequest, UpdateCustomerRequest, ...) and the responses the contract
tests check (BookingResponse, CustomerResponse, JobResponse, ...) are copied once, with
everything they reference, as JSON Schema 2020-12 under ``$defs``.

Sources (``../shared/specs/servicetitan/``):
- ``tenant-crm-v2.json`` (Swagger 2.0) gives the CRM structure; Swagger 2.0 cannot say
  ``nullable``, so nullability comes from ``tenant-crm-v2.yaml`` (OpenAPI 3.0.1, same
  schemas per SOURCES.md). The two are checked to agree on properties and required lists.
- ``tenant-jpm-v2.json`` (OpenAPI 3.0.1) gives the JPM structure and its nullability.

Conversion: ``#/definitions/X`` and ``#/components/schemas/X`` become ``#/$defs/X``; a
single ``allOf``/``oneOf`` around a ``$ref`` becomes the ``$ref``; ``nullable`` becomes a
``"null"`` type, or ``if null then accept else $ref`` around a reference (so a validation
error inside the referenced schema is reported as itself); duplicate enum values (ContactType
lists "Phone" twice) are removed; descriptions and examples are dropped; each definition
gets ``title`` = its ServiceTitan name (the sandbox's error messages use it).

Usage: ``python tools/extract_servicetitan_schemas.py [--shared DIR] [--check]``.
``--check`` exits 1 when the committed file differs from a fresh extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
OUTPUT = REPO / "src" / "stsync" / "sandbox" / "schemas" / "servicetitan.json"

CRM_ROOTS = (
    # requests stsync (or a careful client) sends
    "Crm.V2.CreateBookingRequest",
    "Crm.V2.UpdateBookingRequest",
    "Crm.V2.ContactCreateRequest",
    "Crm.V2.UpdateBookingContactRequest",
    "Crm.V2.Customers.UpdateCustomerRequest",
    "Crm.V2.Customers.CreateCustomerContactRequest",
    "Crm.V2.Customers.UpdateCustomerContactRequest",
    # responses the sandbox must produce
    "ApiErrorResponse",
    "Crm.V2.BookingResponse",
    "Crm.V2.BookingContactResponse",
    "Crm.V2.ExportBookingResponse",
    "Crm.V2.GetBookingProviderTagResponse",
    "Crm.V2.Customers.CustomerResponse",
    "Crm.V2.Customers.CustomFieldTypeResponse",
    "Crm.V2.Customers.CustomerContactWithModifiedOnResponse",
    "Crm.V2.Customers.CustomerContactWithModifiedOnAndCustomerIdResponse",
    "Crm.V2.ExportCustomerResponse",
    "Crm.V2.ExportCustomerContactResponse",
)
JPM_ROOTS = (
    "Jpm.V2.JobResponse",
    "Jpm.V2.ExportJobsResponse",
    "Jpm.V2.JobTypeResponse",
    # the export envelopes and the job history and cancel-log rows (incremental reads)
    "ExportResponse_Of_Jpm.V2.ExportJobsResponse",
    "ExportResponse_Of_Jpm.V2.ExportJobHistoryResponse",
    "ExportResponse_Of_Jpm.V2.ExportJobCanceledLogResponse",
    "Jpm.V2.JobHistoryResponse",
)
_DROPPED_KEYS = {"description", "example", "x-enumNames", "x-enum-varnames", "title"}
_REF_PREFIXES = ("#/definitions/", "#/components/schemas/")


class SpecMismatch(Exception):
    """The JSON and YAML copies of the CRM spec disagree on a schema the sandbox uses."""


def _ref_name(ref: str) -> str:
    for prefix in _REF_PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    raise ValueError(f"unsupported $ref {ref!r}")


def _single_ref(node: dict) -> str | None:
    """The referenced name when ``node`` is just ``{allOf|oneOf: [{$ref}]}`` or ``{$ref}``."""
    if "$ref" in node:
        return _ref_name(node["$ref"])
    for key in ("allOf", "oneOf", "anyOf"):
        options = node.get(key)
        if isinstance(options, list) and len(options) == 1 and "$ref" in options[0]:
            return _ref_name(options[0]["$ref"])
    return None


def _convert(node: Any, *, nullable: bool = False) -> Any:
    """One OpenAPI/Swagger schema node as JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    ref = _single_ref(node)
    if ref is not None:
        target = {"$ref": f"#/$defs/{ref}"}
        if nullable:
            return {"if": {"type": "null"}, "then": True, "else": target}
        return target
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: _convert(prop, nullable=bool(prop.get("nullable"))) for name, prop in value.items()}
        elif key == "enum":
            out[key] = list(dict.fromkeys(value))
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value)
        else:
            out[key] = _convert(value)
    if nullable and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(_ref_name(value))
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _closure(roots: tuple[str, ...], definitions: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        if name not in definitions:
            raise KeyError(f"schema {name!r} is not in the spec")
        seen.append(name)
        pending.extend(sorted(_references(definitions[name])))
    return sorted(seen)


def _with_yaml_nullability(name: str, json_def: dict, yaml_def: dict) -> dict:
    """The Swagger 2.0 definition with ``nullable`` copied from the OpenAPI 3 YAML copy."""
    json_props = json_def.get("properties") or {}
    yaml_props = yaml_def.get("properties") or {}
    if set(json_props) != set(yaml_props):
        raise SpecMismatch(f"{name}: properties differ between the JSON and YAML CRM specs")
    if sorted(json_def.get("required") or []) != sorted(yaml_def.get("required") or []):
        raise SpecMismatch(f"{name}: required lists differ between the JSON and YAML CRM specs")
    merged = dict(json_def)
    if json_props:
        merged["properties"] = {
            prop: ({**schema, "nullable": True} if yaml_props[prop].get("nullable") else schema)
            for prop, schema in json_props.items()
        }
    return merged


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract(shared: Path) -> dict[str, Any]:
    """The schemas document, built from the spec files under ``shared``."""
    import yaml  # a development dependency (test extra): the installed package never runs this

    spec_dir = shared / "specs" / "servicetitan"
    crm_json_path = spec_dir / "tenant-crm-v2.json"
    crm_yaml_path = spec_dir / "tenant-crm-v2.yaml"
    jpm_json_path = spec_dir / "tenant-jpm-v2.json"
    crm_definitions = json.loads(crm_json_path.read_text(encoding="utf-8"))["definitions"]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10x faster
    crm_yaml = yaml.load(crm_yaml_path.read_text(encoding="utf-8"), Loader=loader)["components"]["schemas"]
    jpm_schemas = json.loads(jpm_json_path.read_text(encoding="utf-8"))["components"]["schemas"]

    defs: dict[str, Any] = {}
    for name in _closure(CRM_ROOTS, crm_definitions):
        source = _with_yaml_nullability(name, crm_definitions[name], crm_yaml[name])
        defs[name] = {"title": name, **_convert(source)}
    for name in _closure(JPM_ROOTS, jpm_schemas):
        converted = {"title": name, **_convert(jpm_schemas[name])}
        if name in defs and defs[name] != converted:
            raise SpecMismatch(f"{name} differs between the CRM and JPM specs")
        defs[name] = converted
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Generated by tools/extract_servicetitan_schemas.py from ServiceTitan's v2 specs; do not edit.",
        "x-sources": {path.name: _sha256(path) for path in (crm_json_path, crm_yaml_path, jpm_json_path)},
        "$defs": dict(sorted(defs.items())),
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared/ folder (default: ../shared)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is not up to date")
    args = parser.parse_args(argv)
    document = extract(args.shared)
    text = render(document)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run tools/extract_servicetitan_schemas.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {len(document['$defs'])} schemas to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
