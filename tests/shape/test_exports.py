"""What a package re-exports is true and used; ordinary modules have no ``__all__``.

A module's interface is what its docstring states and its callers import; an ``__all__`` that
nobody star-imports drifts from both (wave 1 found several that did). A package ``__init__``
that re-exports (``stsync.sandbox``: ``from stsync.sandbox import Sandbox``) lists exactly what
it imports, and each of those names is imported from the package somewhere.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache

from source_imports import SRC, all_modules, path_of

ROOT = SRC.parent
USERS = [*SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
DOCS = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


def _reexported(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }


@cache
def _imported_from() -> dict[str, set[str]]:
    """module → the names imported from it, by the code, the tests, the benchmarks, the tools
    and the documented examples."""
    names: dict[str, set[str]] = defaultdict(set)
    for path in USERS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names[node.module].update(alias.name for alias in node.names)
    for doc in DOCS:
        for line in doc.read_text(encoding="utf-8").splitlines():
            words = line.strip().split(" import ", 1)
            if len(words) == 2 and words[0].startswith("from "):
                names[words[0].removeprefix("from ").strip()].update(name.strip() for name in words[1].split(","))
    return names


def _trees() -> dict[str, ast.Module]:
    return {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in all_modules().items()}


def test_only_package_inits_declare_all():
    offenders = [
        path_of(module)
        for module, tree in _trees().items()
        if _declared_all(tree) is not None and all_modules()[module].name != "__init__.py"
    ]
    assert not offenders, "drop __all__ (the module docstring states the interface): " + ", ".join(offenders)


def test_a_packages_all_is_what_it_reexports_and_each_is_used():
    problems = []
    for module, tree in _trees().items():
        declared = _declared_all(tree)
        if all_modules()[module].name != "__init__.py":
            continue
        reexported = _reexported(tree)
        if declared is not None and set(declared) != reexported:
            problems.append(f"{path_of(module)}: __all__ {sorted(declared)} is not what it imports {sorted(reexported)}")
        if reexported and declared is None:
            problems.append(f"{path_of(module)}: re-exports {sorted(reexported)} without __all__")
        unused = reexported - _imported_from()[module]
        if unused:
            problems.append(f"{path_of(module)}: re-exports {sorted(unused)}, which nobody imports from {module}")
    assert not problems, "\n".join(problems)
