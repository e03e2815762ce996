"""The README's examples, run as written against the sandbox, and the output shapes it shows.

Every line of every ```bash block runs in bash (``stsync`` on the PATH, a connected sandbox
connection, 80 columns), in README order, unless ``SKIPPED`` names it with the reason it
cannot run here. A ```text block is compared with the output of the command that prints it.
A new example in the README runs from the next test run on — or is skipped here, with a reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"

SKIPPED = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/stsync demo":
        "installs the package (tests/e2e/test_install_as_tool.py builds and installs the wheel; test_demo.py runs the demo)",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest": "runs the suite this test is part of",
    "stsync connect": "asks on a terminal (the connection here is made with the sandbox's values)",
    "STSYNC_ST_CLIENT_SECRET=… STSYNC_ST_APP_KEY=… STSYNC_RF_API_KEY=… stsync connect --environment production "
    "--tenant-id 1234567 --client-id cid.xxxx --booking-provider 42 --campaign-id 7":
        "placeholders for a real production tenant",
    "stsync connect --environment production --tenant-id 1234567 --client-id cid.xxxx --booking-provider 42 "
    "--campaign-id 7 --secrets-from-stdin < secrets.env": "placeholders for a real production tenant and its secrets file",
    "stsync run": "runs until stopped (tests/e2e/test_run.py runs it on a schedule in seconds)",
    "stsync run --webhooks --port 8080": "runs until stopped, on a fixed port (tests/e2e/test_run.py runs it)",
    "STSYNC_WEBHOOK_TOKEN=$(openssl rand -hex 24) stsync serve --host 127.0.0.1 --port 8080":
        "serves until stopped, on a fixed port (tests/e2e/test_serve.py runs it)",
    "stsync sandbox --port 8765 --customers 500 &": "a fixed port, left running (tests/sandbox/test_cli_sandbox.py runs it)",
    "export STSYNC_ST_AUTH_URL=http://127.0.0.1:8765 STSYNC_ST_API_URL=http://127.0.0.1:8765 "
    "STSYNC_RF_API_URL=http://127.0.0.1:8765/api/v2": "points at the sandbox of the line above",
    "stsync --config /tmp/sandbox.toml connect …": "a placeholder for the line the sandbox prints",
    ".venv/bin/python bench/run.py": "benchmarks, by hand",
    'stsync history --ack p12 --note "test lead"':
        "p12 stands for an id history shows (tests/e2e/test_ledger_visible.py acknowledges a real one)",
}  # fmt: skip
SKIPPED_PREFIXES = {".venv/bin/pytest": "the suite itself, which this test is part of"}
# The exit code an example ends with here when it is not 0, and why.
EXIT_CODES = {
    "stsync diagnose": (1, "a push failed in this world: diagnose exits 1 when a check fails (README: Exit codes)"),
}
# Blocks that are not shell: cron lines are a schedule (their commands are the ones above);
# a ```toml block is a config excerpt; the Design block is a diagram.
NOT_SHELL = {"cron", "", "toml"}


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)]


def commands(block: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True) if "$(" not in line else [line.split("  #")[0]]
        if words:
            found.append(line.split("  #")[0].split(" # ")[0].strip())
    return found


def squeezed(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


@pytest.fixture
def readme_world(connected, cli, tmp_path: Path, monkeypatch):
    """A connected sandbox with the leads the README's examples name: ann@example.com booked,
    one lead that failed."""
    leads = tmp_path / "leads.json"
    leads.write_text(json.dumps([
        {"email": "ann@example.com", "first_name": "Ann", "referral_code": "annR3f01"},
        {"email": "no.name@example.com", "referral_code": "noNm0002"},
    ]))  # fmt: skip
    assert cli("push-lead", "--file", str(leads)).exit_code == 5
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def check_shape(command: str, done: subprocess.CompletedProcess[str], cwd: Path, shown: dict[str, str]) -> None:
    """What the README says each runnable example prints."""
    out = done.stdout
    if command.startswith("stsync history | grep"):
        rows = out.splitlines()
        assert rows and all(len(row.split("\t")) == 7 and "ann@example.com" in row for row in rows), out
    elif command.startswith("stsync history --failed | cut -f4,7"):
        lines = out.splitlines()
        assert lines[0] == "email\tdetail" and lines[1].startswith("no.name@example.com\t"), out
    elif command.startswith("stsync map show --for leads > mapping.txt"):
        # The table the README shows, as the `map set` examples above left it: same title, same
        # columns, the rows they did not change.
        table = squeezed((cwd / "mapping.txt").read_text())
        expected = squeezed(shown["Leads → ServiceTitan booking (* required)"])
        assert expected[:2] == [line for line in table if line in expected[:2]]
        assert "Dynamic Value Referral Code External Id * (external_id)" in table
        assert any(line.startswith("Template") and "Referred by {referrer_first_name}" in line for line in table), table
    elif command.startswith("stsync diagnose --bundle"):
        assert (cwd / "support.md").is_file() and (cwd / "support.json").is_file()
    elif command.startswith("stsync diagnose"):
        assert re.search(r"^Status +Check +Result$", out, re.M), out
    elif command.startswith("stsync validate"):
        assert "failed" in out.splitlines()[-1], out
    elif command.startswith("stsync report"):
        # The README's report, in this world's numbers: the same sections, plain text in a pipe.
        assert out.startswith("Referrals that joined from 2025-01-01 to 2025-12-31 (by sign-up day)"), out
        for line in ("The funnel", "Referred leads", "The money (job totals)", "Revenue (canceled jobs left out)"):
            assert line in out, (line, out)


def test_the_readme_examples_run_as_written(readme_world, cli):
    cwd = readme_world
    texts = {body.splitlines()[0]: body for kind, body in blocks() if kind == "text"}
    # The ```text block of `map show`, compared before any `map set` example changes the mapping.
    default_table = shell("stsync map show --for leads", cwd)
    assert default_table.returncode == 0
    for expected in texts.values():
        assert squeezed(expected) == [line for line in squeezed(default_table.stdout) if line in squeezed(expected)]

    ran, skipped = [], []
    for kind, body in blocks():
        if kind in NOT_SHELL or kind == "text":
            continue
        assert kind == "bash", f"a ```{kind} block: run it here or list it in NOT_SHELL"
        for command in commands(body):
            if command in SKIPPED:
                skipped.append(command)
                continue
            if any(command.startswith(prefix) for prefix in SKIPPED_PREFIXES):
                continue
            done = shell(command, cwd)
            expected = next((code for prefix, (code, _) in EXIT_CODES.items() if command.startswith(prefix)), 0)
            assert done.returncode == expected, f"$ {command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr
            check_shape(command, done, cwd, texts)
            ran.append(command)
    assert len(ran) >= 12, ran
    assert sorted(skipped) == sorted(SKIPPED), "SKIPPED names a line the README no longer has"
