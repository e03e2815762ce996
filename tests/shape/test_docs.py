"""The documents name only what exists, and every module says what it is for.

docs/ARCHITECTURE.md leaves signatures to the module docstrings, so each module below cli has
one. What the docs name — ``stsync/…`` paths, ``stsync.…`` modules and names, repository paths
such as ``tests/shape/test_layers.py`` — must exist: a rename that forgets a document fails here.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from source_imports import SRC, all_modules, path_of
from test_layers import layer_of

ROOT = SRC.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Not preceded by a path or a word: "/etc/stsync/acme.env" is the reader's file system.
_SOURCE_PATH = re.compile(r"(?<![\w/.~-])(?:src/)?stsync/[\w/.-]*")
_REPOSITORY_PATH = re.compile(r"(?<![\w/.~-])(?:tests|docs|bench|tools|examples|\.ci)/[\w/.-]+")
_DOTTED = re.compile(r"(?<![\w/.-])stsync(?:\.[A-Za-z_]\w*)+")
_FILE_ENDINGS = {"log", "toml", "json", "md", "env", "sqlite3", "py"}  # stsync.log is a file


def _names(pattern: re.Pattern[str], text: str) -> set[str]:
    return {match.rstrip(".,") for match in pattern.findall(text)}


def _dotted_exists(dotted: str) -> bool:
    """A module, or a module and the attributes it has: ``stsync.logs.register_secret``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        if module_name not in all_modules():
            continue
        found: object = importlib.import_module(module_name)
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_a_document_names_only_modules_and_paths_that_exist(document: Path):
    text = document.read_text(encoding="utf-8")
    missing = [
        name
        for name in sorted(_names(_SOURCE_PATH, text))
        if not (SRC / name.removeprefix("src/")).exists()
    ]
    missing += [name for name in sorted(_names(_REPOSITORY_PATH, text)) if not (ROOT / name).exists()]
    missing += [
        name
        for name in sorted(_names(_DOTTED, text))
        if name.rsplit(".", 1)[1] not in _FILE_ENDINGS and not _dotted_exists(name)
    ]
    assert not missing, f"{document.relative_to(ROOT)} names what does not exist: {', '.join(missing)}"


def test_the_check_sees_a_missing_module():
    assert _dotted_exists("stsync.logs.register_secret") and _dotted_exists("stsync.storage.ledger")
    assert not _dotted_exists("stsync.services.runtime") and not _dotted_exists("stsync.logs.nothing_here")
    assert _names(_SOURCE_PATH, "see `stsync/services/runtime.py`, not /etc/stsync/acme.env.") == {
        "stsync/services/runtime.py"
    }


def test_every_module_below_cli_states_its_job():
    offenders = [
        path_of(module)
        for module, path in all_modules().items()
        if layer_of(module) != "cli" and len((ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").split()) < 5
    ]
    assert not offenders, "a module docstring says what the module is for and guarantees: " + ", ".join(offenders)
