"""When the machine or the input cannot be used (issue 15 item 7), stsync still says what is
wrong and exits with SPEC §5's code — never a traceback, never "this is a bug", never a log
file inside the path that cannot be written:

- the state directory is a file, read-only, or on a full disk (a real tmpfs when this machine
  lets the tests mount one, and ENOSPC injected at SQLite's own seam — ``max_page_count`` —
  everywhere): exit 3 naming the path and the fix;
- a ledger damaged in the middle (pages overwritten) or missing a table: exit 3 with the fix,
  and ``diagnose`` reports it as its Ledger check;
- a lead file that breaks a JSON parser (nesting 100,000 deep, a 5,000-digit number, a lone
  surrogate in an e-mail): exit 2, nothing sent.

The subprocess cases run the real console entry point, as cron would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stsync.storage.ledger import Ledger

pytestmark = pytest.mark.e2e


def assert_clear(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, str(result)
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream and "Logging error" not in stream, str(result)
    assert "bug in stsync" not in result.stderr, str(result)
    said = " ".join(result.stderr.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in said, f"{fragment!r} not in:\n{result.stderr}"


def state_dir(isolated: Path) -> Path:
    return isolated / "state"


def campaign_leads(sb) -> list[dict]:
    return sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")


class Tmpfs:
    """A small tmpfs of this test's own (root only); unmounted after the test."""

    def __init__(self, where: Path, size_kib: int) -> None:
        where.mkdir(parents=True, exist_ok=True)
        self.path = where
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
            capture_output=True, text=True,
        )  # fmt: skip
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")

    def remount_read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator:
    mounted: list[Tmpfs] = []

    def mount(size_kib: int) -> Tmpfs:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        fs = Tmpfs(tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}", size_kib)
        mounted.append(fs)
        return fs

    yield mount
    for fs in mounted:
        fs.unmount()


def move_state_to(isolated: Path, target: Path, monkeypatch) -> Path:
    """The connected state (secrets file, ledger, log) copied into ``target``, which becomes
    STSYNC_STATE_DIR for the rest of the test."""
    for item in state_dir(isolated).iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)
    monkeypatch.setenv("STSYNC_STATE_DIR", str(target))
    return target


# == the state directory =========================================================================


def test_a_state_dir_that_is_a_file_is_exit_3_naming_the_file(connected, cli_subprocess, isolated, tmp_path, monkeypatch):
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("someone's notes\n")
    monkeypatch.setenv("STSYNC_STATE_DIR", str(a_file))
    connected.clear_request_log()

    for command in (("history",), ("push-lead", "--new")):
        result = cli_subprocess(*command, timeout=60)
        assert_clear(result, 3, f"{a_file} is a file, not a directory", f"move {a_file} aside", "STSYNC_STATE_DIR")
        assert "stsync.log" not in result.stderr, "no log file is named inside a path that is a file"
    assert connected.bookings() == [] and not connected.request_log

    as_json = cli_subprocess("--json", "history", timeout=60)
    assert as_json.exit_code == 3 and as_json.json["error"]["type"] == "StateUnusable"
    assert as_json.json["error"]["reason"] == "not_a_directory"

    diagnose = cli_subprocess("--json", "diagnose", "--offline", timeout=60)
    assert_clear(diagnose, 3)
    assert diagnose.json["error"]["type"] == "StateUnusable"

    # The state root is usable, the connection's own directory in it is a file: diagnose runs
    # and says so in its State directory check; the checks that read the ledger do not run.
    root = tmp_path / "state-root"
    root.mkdir()
    (root / "default").write_text("not the connection's directory\n")
    monkeypatch.setenv("STSYNC_STATE_DIR", str(root))
    diagnose = cli_subprocess("--json", "diagnose", "--offline", timeout=60)
    assert_clear(diagnose, 3)
    checks = {check["name"]: check for check in diagnose.json["checks"]}
    state = checks["State directory"]
    assert state["status"] == "fail" and f"{root / 'default'} is a file, not a directory" in state["message"]
    assert any(item["name"] == "Ledger" and item["blocked_by"] == "State directory" for item in diagnose.json["not_run"])


def _read_only_state(isolated: Path, tmpfs, monkeypatch) -> Path:
    """The connected state on a read-only file system (root: a tmpfs remounted ro; others:
    the directories' write bits removed, which binds them too)."""
    if os.geteuid() == 0:
        fs = tmpfs(4096)
        move_state_to(isolated, fs.path, monkeypatch)
        fs.remount_read_only()
        return fs.path
    for directory in [state_dir(isolated), *state_dir(isolated).rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o500)
    return state_dir(isolated)


def test_a_read_only_state_dir_is_exit_3_with_the_fix(connected, cli_subprocess, isolated, tmpfs, monkeypatch):
    where = _read_only_state(isolated, tmpfs, monkeypatch)
    connected.clear_request_log()
    try:
        result = cli_subprocess("push-lead", "--new", timeout=60)
        assert_clear(result, 3, str(where), "STSYNC_STATE_DIR")
        assert "read-only" in result.stderr or "permission denied" in result.stderr, str(result)
        assert "stsync.log" not in result.stderr
        assert connected.bookings() == []
        assert not [r for r in connected.request_log if r["method"] != "GET"], "nothing was written anywhere"
    finally:
        for directory in [where, *where.rglob("*")]:
            if directory.is_dir() and os.geteuid() != 0:
                directory.chmod(0o700)


def test_a_full_disk_is_exit_3_and_the_log_closes_quietly(connected, cli, cli_subprocess, isolated, tmpfs, monkeypatch):
    cli("push-lead", "--code", campaign_leads(connected)[0]["code"])  # a ledger and a log with something in them
    fs = tmpfs(16 * 1024)
    move_state_to(isolated, fs.path, monkeypatch)
    filler = fs.path / "filler"
    with filler.open("wb", buffering=0) as out:  # every byte of the file system taken: 0 bytes free
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    assert shutil.disk_usage(fs.path).free == 0
    booked = len(connected.bookings())

    for command in (("push-lead", "--new"), ("history",)):
        result = cli_subprocess(*command, timeout=60)
        assert_clear(result, 3, "the disk is full", "df -h", "STSYNC_STATE_DIR")
    assert len(connected.bookings()) == booked


class FullDisk:
    """A ledger connection on a disk that fills up: after ``room`` more writes, every write
    fails as SQLite reports ENOSPC (SQLITE_FULL, "database or disk is full")."""

    def __init__(self, conn: sqlite3.Connection, budget: list[int]) -> None:
        self._conn = conn
        self._budget = budget

    def execute(self, sql: str, *args):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            self._budget[0] -= 1
            if self._budget[0] < 0:
                full = sqlite3.OperationalError("database or disk is full")
                full.sqlite_errorcode = 13  # SQLITE_FULL
                raise full
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def test_the_disk_filling_up_during_a_run_stops_it_with_exit_3(connected, cli, monkeypatch):
    """ENOSPC injected at SQLite's seam (the ledger's connection), after a run has started
    and booked a few leads: the run stops with exit 3 — not a traceback — and the next run,
    with room again, books the rest without booking anyone twice."""
    sb = connected
    opened = Ledger._conn
    budget = [8]  # the run record, then intents and results of the first few leads
    monkeypatch.setattr(Ledger, "_conn", lambda self: FullDisk(opened(self), budget))

    result = cli("push-lead", "--new")

    assert_clear(result, 3, "the disk is full", "STSYNC_STATE_DIR")
    assert 0 < len(sb.bookings()) < len(campaign_leads(sb))
    monkeypatch.setattr(Ledger, "_conn", opened)
    again = cli("push-lead", "--new")
    assert again.exit_code == 0, str(again)
    external_ids = [b["externalId"] for b in sb.bookings()]
    assert sorted(external_ids) == sorted(lead["code"] for lead in campaign_leads(sb))


# == a damaged ledger ===========================================================================


def _ledger_with_history(connected, cli, isolated) -> Path:
    for lead in campaign_leads(connected)[:4]:
        assert cli("push-lead", "--code", lead["code"]).exit_code == 0
    path = state_dir(isolated) / "default" / "ledger.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return path


def test_a_ledger_damaged_in_the_middle_is_exit_3_with_the_fix(connected, cli, cli_subprocess, isolated):
    path = _ledger_with_history(connected, cli, isolated)
    size = path.stat().st_size
    assert size >= 8 * 4096, "the ledger has pages to damage past its header"
    with path.open("r+b") as raw:  # the header survives: the file still opens as a database
        raw.seek(2 * 4096)
        raw.write(b"\xff" * (size - 3 * 4096))
    booked = len(connected.bookings())

    history = cli_subprocess("history", timeout=60)
    assert_clear(history, 3, str(path), "damaged", f"mv {path} {path}.damaged", "nothing is booked twice")
    push = cli_subprocess("push-lead", "--new", timeout=60)
    assert_clear(push, 3, "damaged", "move it aside")
    assert len(connected.bookings()) == booked

    diagnose = cli("--json", "diagnose", "--offline")
    assert diagnose.exit_code in (1, 3), str(diagnose)
    check = next(c for c in diagnose.json["checks"] if c["name"] == "Ledger")
    assert check["status"] == "fail" and "damaged" in check["message"] and "move it aside" in check["fix"]


def test_a_ledger_missing_a_table_is_exit_3_with_the_fix(connected, cli, cli_subprocess, isolated):
    path = _ledger_with_history(connected, cli, isolated)
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE push_attempts")
    raw.commit()
    raw.close()

    result = cli_subprocess("history", timeout=60)
    assert_clear(result, 3, "no table push_attempts", "move it aside")


# == input that breaks the parser ===============================================================


def test_lead_files_that_break_a_json_parser_are_usage_errors(connected, cli_subprocess, tmp_path):
    lead = campaign_leads(connected)[0]
    files = {
        "deep.json": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "big-number.json": (json.dumps({**lead, "id": 0})[:-1] + ', "campaign_id": ' + "9" * 5000 + "}", "5000 digits"),
        "surrogate.json": (json.dumps({**lead, "email": "jo"})[:-1].replace('"jo"', '"jo\\ud800@example.com"') + "}", "\\ud800"),
    }
    for name, (text, said) in files.items():
        path = tmp_path / name
        path.write_text(text)
        assert_clear(cli_subprocess("push-lead", "--file", path, timeout=60), 2, str(path), said)
        assert_clear(cli_subprocess("push-lead", "--file", "-", input=text, timeout=60), 2, "standard input", said)
    assert connected.bookings() == []


def test_a_lone_surrogate_on_the_command_line_is_a_usage_error(connected, cli):
    result = cli("push-lead", "--email", "jo\udcff@example.com", "--first-name", "Jo", "--referral-code", "surr0001")
    assert_clear(result, 2, "--email is not text", "not UTF-8")
    assert connected.bookings() == []


# == e-mails that hide what they are ============================================================

HIDING_EMAILS = {
    "control": "jo\x07@example.com",
    "right_to_left_override": "jo\u202e@example.com",
    "zero_width_joiner": "j\u200do@example.com",
    "local_part_over_64": "j" * 65 + "@example.com",
}


@pytest.mark.parametrize("case", list(HIDING_EMAILS))
def test_emails_with_hidden_characters_or_a_long_local_part_are_refused(case, connected, cli_subprocess, tmp_path):
    email = HIDING_EMAILS[case]
    typed = cli_subprocess("push-lead", "--email", email, "--first-name", "Jo", "--referral-code", f"hide{len(case):04d}")
    assert typed.exit_code in (2, 5), str(typed)
    assert "not an e-mail address" in " ".join(typed.stderr.split()), str(typed)
    lead = {**campaign_leads(connected)[0], "email": email}
    path = tmp_path / "lead.json"
    path.write_text(json.dumps(lead))
    in_a_file = cli_subprocess("push-lead", "--file", path)
    assert in_a_file.exit_code == 5 and "not an e-mail address" in " ".join(in_a_file.stderr.split()), str(in_a_file)
    assert connected.bookings() == []
