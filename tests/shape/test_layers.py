"""The layer rules of docs/ARCHITECTURE.md, checked on every import of src/stsync (read with ast).

Layers, top to bottom; a module imports its own layer or those below it, never one above:

    cli          parse, call a service, render (the only layer importing typer or rich)
    services     use cases; return result objects, never print
    engines      mapping/, checks/, customersync/, webhooks/, notify/, tracking/, reporting/, leads.py
    connection   connection.py: config + secrets + clients + ledger
    clients      servicetitan/, referralfactory/, http.py, ratelimit.py, storage/
    leaves       errors, logs, envvars, credentials, vocabulary, progress, workpool,
                 lookup_grace, suggestions, durations, urls, storage/paths.py, storage/states.py, and the package's
                 __init__ (__version__)

The sandbox stands apart: it imports nothing of stsync but itself, and only the commands that
run it import it. Below cli, imports stand at the top of the module (only cli needs lazy
imports, for start-up time: tests/reliability/test_startup_lazy.py). Every module is
classified here: a new one fails ``test_every_module_has_a_layer`` until its author says
where it belongs.
"""

from __future__ import annotations

from collections import defaultdict

from source_imports import PACKAGE, SRC, Import, all_modules, imports_of, path_of

# layer → the modules and packages in it. The most specific name wins (storage/paths.py is a
# leaf inside the storage package).
LAYERS: dict[str, tuple[str, ...]] = {
    "cli": ("stsync.cli", "stsync.__main__"),
    "services": ("stsync.services",),
    "engines": (
        "stsync.mapping",
        "stsync.checks",
        "stsync.customersync",
        "stsync.webhooks",
        "stsync.notify",
        "stsync.tracking",
        "stsync.reporting",
        "stsync.leads",
    ),
    "connection": ("stsync.connection",),
    "clients": (
        "stsync.servicetitan",
        "stsync.referralfactory",
        "stsync.http",
        "stsync.ratelimit",
        "stsync.storage",
    ),
    "leaves": (
        "stsync.errors",
        "stsync.logs",
        "stsync.envvars",
        "stsync.credentials",
        "stsync.vocabulary",
        "stsync.progress",
        "stsync.workpool",
        # After a lost create: when a lookup is trusted, and the looks again (push and sync).
        "stsync.lookup_grace",
        "stsync.suggestions",
        # Durations as the config writes them ("5m", "off"), and which URLs may carry a credential.
        "stsync.durations",
        "stsync.urls",
        # Where a connection's files live and how private files are made: logs and the CLI's
        # start-up need it, and it needs nothing but envvars.
        "stsync.storage.paths",
        # The ledger's stored words (StrEnums): named by services and the CLI without the ledger.
        "stsync.storage.states",
    ),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}  # 0 is the top
SANDBOX = "stsync.sandbox"
SANDBOX_USERS = {"stsync.cli.sandbox", "stsync.cli.demo"}
UI_LIBRARIES = ("typer", "rich", "click")

# Imports inside a function below cli, each with its reason. Keep it tiny.
_KEYRING_ON_DEMAND = (
    "the OS keyring is loaded when a secret is looked up there: a connection on the file store or env (cron's "
    "usual) never consults it, and importing it (with its entry-point scan) was ~18 ms of every run's start"
)
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {
    ("stsync.storage.secrets", "keyring"): _KEYRING_ON_DEMAND,
    ("stsync.storage.secrets", "keyring.backends"): _KEYRING_ON_DEMAND,
    ("stsync.storage.secrets", "keyring.errors"): _KEYRING_ON_DEMAND,
}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    """The layer of a module of the package; "sandbox" for the sandbox; None when unclassified."""
    if module == PACKAGE:
        return "leaves"  # the package's __init__: __version__
    if _within(module, SANDBOX):
        return "sandbox"
    candidates = [(len(prefix), layer) for layer, prefixes in LAYERS.items() for prefix in prefixes if _within(module, prefix)]
    return max(candidates)[1] if candidates else None


def _ours(target: str) -> bool:
    return _within(target, PACKAGE)


# -- the rules: each gives the offending imports, with the rule they break ----------------------


def upward_imports(found: list[Import]) -> list[str]:
    offenders = []
    for one in found:
        mine, theirs = layer_of(one.importer), layer_of(one.target) if _ours(one.target) else None
        if mine in RANK and theirs in RANK and RANK[theirs] < RANK[mine]:
            offenders.append(f"{one}: {mine} must not import {theirs}, a layer above it")
    return offenders


def ui_imports_below_cli(found: list[Import]) -> list[str]:
    return [
        f"{one}: only cli imports typer or rich"
        for one in found
        if one.target.split(".")[0] in UI_LIBRARIES and layer_of(one.importer) != "cli"
    ]


def sandbox_imports_of_stsync(found: list[Import]) -> list[str]:
    return [
        f"{one}: the sandbox imports nothing of stsync but stsync.sandbox (it shares the API contracts, never code)"
        for one in found
        if layer_of(one.importer) == "sandbox" and _ours(one.target) and not _within(one.target, SANDBOX)
    ]


def imports_of_the_sandbox(found: list[Import]) -> list[str]:
    return [
        f"{one}: only {', '.join(sorted(SANDBOX_USERS))} (and tests) import the sandbox"
        for one in found
        if _within(one.target, SANDBOX) and layer_of(one.importer) != "sandbox" and one.importer not in SANDBOX_USERS
    ]


def function_level_imports_below_cli(found: list[Import]) -> list[str]:
    return [
        f"{one}: below cli, imports stand at the top of the module (only cli imports lazily)"
        for one in found
        if one.where == "function"
        and layer_of(one.importer) != "cli"
        and (one.importer, one.target) not in FUNCTION_LEVEL_ALLOWED
    ]


def import_cycles(found: list[Import]) -> list[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    for one in found:
        if one.where == "module" and one.target in all_modules() and one.target != one.importer:
            graph[one.importer].add(one.target)
    return [" → ".join(cycle) + ": an import cycle" for cycle in _cycles(graph)]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One list per strongly connected component of more than one module (Tarjan)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append([*sorted(component), sorted(component)[0]])

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return components


def _report(rule: str, offenders: list[str]) -> str:
    return f"{rule}:\n  " + "\n  ".join(offenders)


# -- the tree as it is ---------------------------------------------------------------------------


def _every_import() -> list[Import]:
    return [one for module in all_modules() for one in imports_of(module)]


def test_every_module_has_a_layer():
    unclassified = [path_of(module) for module in all_modules() if layer_of(module) is None]
    assert not unclassified, _report(
        "every module needs a layer: add it to LAYERS in tests/shape/test_layers.py and to the diagram in "
        "docs/ARCHITECTURE.md",
        unclassified,
    )


def test_no_module_imports_a_layer_above_its_own():
    offenders = upward_imports(_every_import())
    assert not offenders, _report("imports go down the layers, never up (docs/ARCHITECTURE.md)", offenders)


def test_only_cli_imports_typer_or_rich():
    offenders = ui_imports_below_cli(_every_import())
    assert not offenders, _report("nothing below cli imports typer or rich", offenders)


def test_the_sandbox_imports_nothing_of_stsync_but_itself():
    offenders = sandbox_imports_of_stsync(_every_import())
    assert not offenders, _report("the sandbox depends on nothing of stsync", offenders)


def test_only_the_commands_that_run_the_sandbox_import_it():
    offenders = imports_of_the_sandbox(_every_import())
    assert not offenders, _report("the sandbox is a neighbour, not a dependency", offenders)


def test_below_cli_imports_stand_at_the_top_of_the_module():
    offenders = function_level_imports_below_cli(_every_import())
    assert not offenders, _report("no function-level imports below cli", offenders)


def test_the_modules_import_no_cycle():
    """Module-level imports between stsync modules form no cycle (what function-level imports
    were once used to hide)."""
    offenders = import_cycles(_every_import())
    assert not offenders, _report("no import cycles", offenders)


def test_the_architecture_diagram_shows_the_same_layers():
    """docs/ARCHITECTURE.md draws this map: every entry, layer after layer, in this order."""
    text = (SRC.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    diagram = text.split("```", 2)[1]
    where: dict[str, int] = {}
    for layer, entries in LAYERS.items():
        for entry in entries:
            shown = entry.replace(".", "/")
            spots = [diagram.find(shown + suffix) for suffix in ("/", ".py") if diagram.find(shown + suffix) >= 0]
            assert spots, f"docs/ARCHITECTURE.md's diagram does not show {shown} ({layer})"
            where[entry] = min(spots)
    for upper, lower in zip(LAYERS, list(LAYERS)[1:], strict=False):
        assert max(where[e] for e in LAYERS[upper]) < min(where[e] for e in LAYERS[lower]), (
            f"the diagram must show {upper} above {lower}"
        )


# -- the rules catch what they forbid --------------------------------------------------------------


def test_the_classification():
    assert layer_of("stsync.cli.app") == "cli"
    assert layer_of("stsync.services.push") == "services"
    assert layer_of("stsync.mapping.booking") == "engines"
    assert layer_of("stsync.storage.ledger") == "clients"
    assert layer_of("stsync.storage.paths") == "leaves"
    assert layer_of("stsync") == "leaves"
    assert layer_of("stsync.sandbox.server") == "sandbox"
    assert layer_of("stsync.somewhere_new") is None


def test_each_rule_names_the_offending_import():
    def at(importer: str, target: str, where: str = "module") -> list[Import]:
        return [Import(importer, target, 7, where)]

    [upward] = upward_imports(at("stsync.storage.ledger", "stsync.services.push"))
    assert "stsync/storage/ledger.py:7 imports stsync.services.push" in upward and "clients must not import services" in upward
    assert upward_imports(at("stsync.services.push", "stsync.storage.ledger")) == []
    assert upward_imports(at("stsync.mapping.booking", "stsync.leads")) == []  # within a layer
    [ui] = ui_imports_below_cli(at("stsync.services.push", "rich.console"))
    assert "imports rich.console" in ui
    assert ui_imports_below_cli(at("stsync.cli.app", "typer")) == []
    [shared] = sandbox_imports_of_stsync(at("stsync.sandbox.server", "stsync.http"))
    assert "stsync/sandbox/server.py:7 imports stsync.http" in shared
    [user] = imports_of_the_sandbox(at("stsync.services.push", "stsync.sandbox.simulator", "function"))
    assert "inside a function" in user
    assert imports_of_the_sandbox(at("stsync.cli.demo", "stsync.sandbox")) == []
    [lazy] = function_level_imports_below_cli(at("stsync.storage.ledger", "keyring", "function"))
    assert "stsync/storage/ledger.py:7 imports keyring (inside a function)" in lazy
    assert function_level_imports_below_cli(at("stsync.storage.secrets", "keyring", "function")) == []  # allowed, with its reason
    assert function_level_imports_below_cli(at("stsync.cli.map", "stsync.services.mapping_edit", "function")) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
