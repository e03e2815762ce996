"""Startup stays lazy: building the CLI imports none of the heavy modules.

`stsync --version`, `--help` and shell completion run on every keystroke of a user and at the
top of every cron job; they must not pay for HTTP clients, models, SQLite or the simulator.
Each command imports what it needs inside its function.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["httpx", "pydantic", "sqlite3", "stsync.sandbox", "jsonschema", "keyring", "tomli_w", "filelock"]


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_imports_nothing_heavy():
    loaded = _modules_after("import stsync.cli.app")
    assert [m for m in HEAVY if m in loaded] == []
    # Every command registered, and no service, client or storage module beyond paths/logs.
    eager = sorted(
        m for m in loaded if m.startswith(("stsync.services", "stsync.servicetitan", "stsync.referralfactory"))
    )
    assert eager == []


def test_version_exits_before_any_command_work():
    loaded = _modules_after(
        "import sys\nfrom stsync.cli.app import run\nsys.stdout = open('/dev/null', 'w')\nrun(['--version'])\nsys.stdout = sys.__stdout__"
    )
    assert [m for m in HEAVY if m in loaded] == []


def test_help_lists_every_command_without_importing_heavy_modules():
    out = subprocess.run(
        [sys.executable, "-c", "from stsync.cli.app import run; import sys; run(['--help'])\n"
         "import json; print(json.dumps(sorted(m for m in sys.modules)), file=sys.stderr)"],
        capture_output=True, text=True, timeout=60,
    )
    loaded = set(json.loads(out.stderr.strip().splitlines()[-1]))
    assert [m for m in HEAVY if m in loaded] == []
    for command in ("connect", "disconnect", "map", "validate", "push-lead", "sync-customers", "qualify",
                    "report", "diagnose", "history", "serve", "sandbox", "demo"):
        assert command in out.stdout, command



_COMPLETION = """
import os, sys
os.environ.update(_STSYNC_COMPLETE="complete_bash", COMP_WORDS="stsync push-lead --", COMP_CWORD="2")
from stsync.cli.app import app
out, sys.stdout = sys.stdout, open(os.devnull, "w")
try:
    app(args=[], prog_name="stsync", standalone_mode=True)
except SystemExit:
    pass
sys.stdout = out
"""

_COMMAND_HELP = """
import os, sys
from stsync.cli.app import run
out, sys.stdout = sys.stdout, open(os.devnull, "w")
for command in (["push-lead", "--help"], ["sync-customers", "--help"], ["map", "set", "--help"], ["diagnose", "--help"]):
    run(command)
sys.stdout = out
"""


def test_completion_and_command_help_import_nothing_heavy_of_ours():
    """A TAB press (shell completion) and `stsync <command> --help` build the command's
    options, never its work. Typer 0.29 itself imports pydantic to build option types, so
    pydantic is the one heavy module allowed here."""
    ours = [m for m in HEAVY if m != "pydantic"]
    for probe in (_COMPLETION, _COMMAND_HELP):
        loaded = _modules_after(probe)
        assert [m for m in ours if m in loaded] == []
        eager = sorted(m for m in loaded if m.startswith(("stsync.services", "stsync.servicetitan", "stsync.referralfactory")))
        assert eager == []


def test_a_run_commands_modules_leave_the_keyring_unloaded():
    """The keyring (and its entry-point scan) loads only when a secret is looked up there: a
    connection on the file store or env — cron's usual — never pays for it."""
    loaded = _modules_after("import stsync.connection, stsync.services.push, stsync.services.lead_sources, stsync.storage.secrets")
    assert "keyring" not in loaded
