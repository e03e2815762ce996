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
                    "diagnose", "history", "serve", "sandbox", "demo"):
        assert command in out.stdout, command
