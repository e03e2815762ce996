"""The import statements of stsync's source, read with ``ast`` (nothing is imported).

``imports_of(module)`` lists every import of a module with where it stands: at module level,
under ``if TYPE_CHECKING:`` (a type-only dependency), or inside a function or class body.
``from stsync import envvars`` names the module ``stsync.envvars``; a name that is not a module
(``from stsync.errors import UsageError``) names the module it comes from.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "stsync"


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, e.g. "stsync.services.push"
    target: str  # the imported module, e.g. "stsync.storage.ledger" or "typer"
    line: int
    where: str  # "module", "type-checking" or "function"

    def __str__(self) -> str:
        shown = {"module": "", "type-checking": " (under TYPE_CHECKING)", "function": " (inside a function)"}[self.where]
        return f"{path_of(self.importer)}:{self.line} imports {self.target}{shown}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def path_of(module: str) -> str:
    return str(all_modules()[module].relative_to(SRC))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    modules = all_modules()
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer if modules[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return found if len(found) == len(node.names) else [base, *found]


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    tree = ast.parse(all_modules()[module].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(module, target, child.lineno, where) for target in _targets(child, module))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                visit(child, "function")
            elif isinstance(child, ast.If) and where == "module" and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), "type-checking")
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), "module")
            else:
                visit(child, where)

    visit(tree, "module")
    return tuple(found)
