"""The ``--json`` schema (docs/json-schema.json) for tests: load it once, validate against it,
and list the commands the CLI registers (what the schema must cover)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMA_FILE = DOCS / "json-schema.json"
GUIDE_FILE = DOCS / "json.md"


@lru_cache(maxsize=1)
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(obj: Any) -> list[str]:
    """Every way ``obj`` breaks the schema, as "path: message" lines (empty when it is valid)."""
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}" for error in validator().iter_errors(obj)]


def assert_valid(obj: Any) -> None:
    errors = schema_errors(obj)
    assert not errors, "the --json object breaks docs/json-schema.json:\n" + "\n".join(errors) + "\n" + json.dumps(obj, indent=2)[:3000]


def registered_commands() -> set[str]:
    """Every command a user can run, as the envelope names it ("push-lead", "map show")."""
    from stsync.cli.app import build_command

    def walk(command: Any, prefix: str) -> Any:
        for name, sub in command.commands.items():
            path = f"{prefix} {name}".strip()
            if hasattr(sub, "commands"):
                yield from walk(sub, path)
            else:
                yield path

    return set(walk(build_command(), ""))
