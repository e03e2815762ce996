"""README command #1: `stsync demo` runs every step green, on a fresh environment, and leaves
nothing behind (no config, no state, no keyring entry)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EXPECTED_STEPS = [
    "connect", "map show", "map qualify", "validate --online", "push-lead --new", "push-lead --new",
    "sync-customers --once", "qualify", "qualify", "diagnose", "history", "report",
]


def test_demo_runs_every_step_green_and_leaves_nothing_behind(tmp_path):
    before = {p for p in Path(tmp_path).rglob("*")}
    done = subprocess.run(
        [sys.executable, "-m", "stsync", "--json", "demo", "--customers", "30", "--leads", "4"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    commands = [" ".join(step["argv"]) for step in report["steps"]]
    assert len(commands) == len(EXPECTED_STEPS)
    for command, expected in zip(commands, EXPECTED_STEPS, strict=True):
        assert command.startswith(expected), (command, expected)
    assert all(step["exit_code"] == 0 for step in report["steps"])
    summary = report["summary"]
    assert summary["bookings"] == 4  # every waiting lead booked once, the second push booked none
    assert summary["qualified"] == 1  # the one booking the demo turns into a completed job
    # Households share their referrer's link and code: more customers carry one than there are referrers.
    assert 0 < summary["referrers"] < summary["customers_with_link"]
    assert summary["return_fields"] == 2 * summary["customers_with_link"]
    # It ends with the report: the funnel of the four leads and the one job's revenue (on stderr
    # with --json: stdout is the demo's object alone).
    report = done.stderr[done.stderr.index("Referrals that joined from"):]
    assert re.search(r"Referred leads\s+4\b", report) and re.search(r"Jobs completed\s+1\b", report)
    assert "1,250.00" in report and "Referral Factory user" not in report  # --refresh named the referrers
    # The user's own config, state and keyring are untouched.
    assert not Path(os.environ["STSYNC_CONFIG"]).exists()
    assert not Path(os.environ["STSYNC_STATE_DIR"]).exists()
    keyring_file = Path(os.environ["STSYNC_TEST_KEYRING"])
    assert not keyring_file.exists() or json.loads(keyring_file.read_text() or "{}") == {}
    leftovers = {p for p in Path(tmp_path).rglob("*")} - before
    assert leftovers == set()


def test_demo_keep_leaves_its_directory_for_inspection(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "stsync", "demo", "--keep", "--customers", "10", "--leads", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kept = [line for line in done.stderr.splitlines() if "kept the demo's files in" in line]
    assert kept
    where = Path(kept[0].split("kept the demo's files in", 1)[1].strip())
    try:
        assert (where / "demo.toml").is_file()
        assert any(where.joinpath("state").rglob("*.sqlite3")) or any(where.joinpath("state").rglob("ledger*"))
    finally:
        import shutil

        shutil.rmtree(where, ignore_errors=True)


def test_the_demo_in_process_closes_every_step_s_connection_and_log(cli):
    """Each step is an invocation of its own inside the demo's: when the demo returns, no
    ledger, lock or log file of its steps is still open, and no log handler is left."""
    import logging

    result = cli("demo", "--customers", "10", "--leads", "2")
    assert result.exit_code == 0, str(result)
    open_files = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            open_files.append(os.readlink(fd))
        except OSError:
            continue
    assert [f for f in open_files if "stsync-demo-" in f] == []
    assert [h for h in logging.getLogger("stsync").handlers if isinstance(h, logging.FileHandler)] == []


def test_demo_keep_says_how_to_use_what_it_kept_and_those_commands_work(tmp_path):
    import shutil

    done = subprocess.run(
        [sys.executable, "-m", "stsync", "demo", "--keep", "--customers", "5", "--leads", "2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stderr
    commands = [line.strip() for line in said.splitlines() if line.strip().startswith("STSYNC_STATE_DIR=")]
    kept = Path(next(line for line in said.splitlines() if "kept the demo's files in" in line).split(" in ", 1)[1].strip())
    try:
        assert kept.is_dir() and "The simulator stopped with the demo" in said and f"Remove them with: rm -rf {kept}" in said
        assert [command.rsplit(" ", 1)[-1] for command in commands] == ["history", "--offline", "show"]
        # Each command, pasted into a shell as printed, reads what the demo kept.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        history = subprocess.run(
            ["bash", "-c", commands[0]], capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": path}
        )
        assert history.returncode == 0, history.stderr
        assert "created" in history.stdout + history.stderr
        show = subprocess.run(
            ["bash", "-c", commands[2]], capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": path}
        )
        assert show.returncode == 0 and "External Id" in show.stdout + show.stderr
    finally:
        shutil.rmtree(kept, ignore_errors=True)
