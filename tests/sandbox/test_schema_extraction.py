"""The schemas shipped with the sandbox are exactly what ServiceTitan's specs say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from stsync.sandbox import schemas

TOOL = Path(__file__).resolve().parents[2] / "tools" / "extract_servicetitan_schemas.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("extract_servicetitan_schemas", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_schemas_equal_a_fresh_extraction(shared_dir):
    pytest.importorskip("yaml")
    tool = load_tool()
    fresh = tool.render(tool.extract(shared_dir))
    shipped = tool.OUTPUT.read_text(encoding="utf-8")
    assert shipped == fresh, "run: python tools/extract_servicetitan_schemas.py"
    assert tool.main(["--shared", str(shared_dir), "--check"]) == 0


def test_the_check_mode_notices_a_stale_file(shared_dir, tmp_path):
    pytest.importorskip("yaml")
    tool = load_tool()
    stale = tmp_path / "servicetitan.json"
    stale.write_text("{}\n", encoding="utf-8")
    assert tool.main(["--shared", str(shared_dir), "--output", str(stale), "--check"]) == 1
    assert tool.main(["--shared", str(shared_dir), "--output", str(stale)]) == 0
    assert tool.main(["--shared", str(shared_dir), "--output", str(stale), "--check"]) == 0


def test_nullability_comes_from_the_yaml_spec():
    defs = schemas.raw_document()["$defs"]
    create = defs["Crm.V2.CreateBookingRequest"]["properties"]
    assert create["start"]["type"] == ["string", "null"]  # nullable in the YAML
    assert create["name"]["type"] == "string"  # required, not nullable
    assert create["address"] == {"if": {"type": "null"}, "then": True, "else": {"$ref": "#/$defs/Crm.V2.AddressModel"}}
    patch = defs["Crm.V2.UpdateBookingRequest"]["properties"]
    assert patch["start"]["type"] == "string"  # patch fields are not nullable
    assert defs["Crm.V2.ContactType"]["enum"] == ["Phone", "Email", "Fax", "MobilePhone"]  # "Phone" was listed twice
    json.dumps(defs)  # plain JSON all the way down
