"""Data on stdout, talk on stderr; ``-q`` means one line and every failure; narrow terminals.

The real CLI in child processes: stdout piped (a pipe, a file, a cron mail) or a pseudo-terminal
(a person's terminal), at 80 and 60 columns.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = set("│┃━─╭╮╰╯┏┓┗┛┡┩")

# Leads as a campaign has them: e-mails and codes of ordinary length, one without a first name
# (refused before anything is sent: a failed attempt with a long error).
LEADS = [
    {"email": "margaret.oconnell@example.com", "first_name": "Margaret", "referral_code": "mOc4ReF9"},
    {"email": "dwayne.richardson@example.org", "first_name": "Dwayne", "referral_code": "dRi7QeZ2"},
    {"email": "nameless.lead@example.net", "referral_code": "nLs0XyW1"},
]


def stsync(*args: str, columns: int = 80, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout piped."""
    return subprocess.run(
        [sys.executable, "-m", "stsync", *args], capture_output=True, text=True, timeout=90, input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL, env={**os.environ, "COLUMNS": str(columns)},
    )  # fmt: skip


def stsync_on_a_terminal(*args: str, columns: int) -> tuple[int, str, str]:
    """The CLI with stdout on a pseudo-terminal ``columns`` wide: (exit code, what the terminal
    shows without colour codes, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    process = subprocess.Popen([sys.executable, "-m", "stsync", *args], stdin=subprocess.DEVNULL, stdout=slave,
                               stderr=subprocess.PIPE, env=env)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stderr = process.stderr.read().decode()
    code = process.wait(timeout=90)
    raw = b"".join(chunks).decode().replace("\r\n", "\n")
    assert ANSI.search(raw), "a terminal gets colour: this output did not come through a terminal"
    return code, ANSI.sub("", raw), stderr


@pytest.fixture
def pushed(connected, tmp_path: Path, cli):
    """A connection with three push attempts: two bookings and one failure."""
    leads = tmp_path / "leads.json"
    leads.write_text(json.dumps(LEADS))
    result = cli("--json", "push-lead", "--file", str(leads))
    assert result.exit_code == 5, str(result)
    attempts = {a["email"]: a for a in cli("--json", "history").json["attempts"]}
    assert attempts["nameless.lead@example.net"]["outcome"] == "failed"
    return attempts


# == data on stdout, talk on stderr ==============================================================


def test_history_in_a_pipe_is_tsv_that_grep_and_cut_can_use(pushed):
    done = stsync("history")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split("\t") == ["at", "kind", "id", "email", "record", "outcome", "detail"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 3 and all(len(row) == 7 for row in rows)
    # `stsync history | grep margaret | cut -f5,6,7`
    [margaret] = [row for row in rows if "margaret" in "\t".join(row)]
    assert margaret[4:7] == ["mOc4ReF9", "created", f"booking #{pushed['margaret.oconnell@example.com']['booking_id']}"]
    [failed] = [row for row in rows if row[5] == "failed"]
    assert failed[3] == "nameless.lead@example.net" and "first_name" in failed[6]
    # One kind: its own columns, the booking id a column of its own.
    pushes = stsync("history", "--kind", "push")
    lines = pushes.stdout.splitlines()
    assert lines[0].split("\t") == ["started_at", "id", "email", "external_id", "outcome", "booking_id", "error"]
    [margaret] = [line.split("\t") for line in lines[1:] if "margaret" in line]
    assert margaret[3:6] == ["mOc4ReF9", "created", str(pushed["margaret.oconnell@example.com"]["booking_id"])]
    # The talk is on stderr, and it is not the data.
    assert "Last push run" in done.stderr and "margaret" not in done.stderr


@pytest.mark.parametrize("args", [("history",), ("--json", "history"), ("map", "show")])
def test_output_into_a_reader_that_went_away_exits_141_quietly(pushed, args):
    # `stsync history | head`: the reader may be gone before stsync writes. Like `git log |
    # head`, stsync then stops quietly with 141 (128 + SIGPIPE), not 1 ("a bug") or a traceback.
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away: every write to the pipe fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "stsync", *args], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=90)  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr


def test_map_show_into_a_file_is_the_plain_readable_table(connected, tmp_path: Path):
    target = tmp_path / "mapping.txt"
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -m stsync map show --for leads > "{target}"'],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    text = target.read_text()
    assert not ANSI.search(text) and not BOX & set(text)
    assert re.search(r"^Data Type +From Referral Factory +To ServiceTitan$", text, re.M)
    assert re.search(r"^Dynamic Value +Referral Code +External Id \* \(external_id\)$", text, re.M)
    assert all(line == line.rstrip() for line in text.splitlines())


def test_on_a_terminal_the_data_is_a_table_on_stdout(pushed):
    code, shown, stderr = stsync_on_a_terminal("history", columns=120)
    assert code == 0
    assert "\t" not in shown
    assert re.search(r"^When \(UTC\) +Kind +Id +E-mail +Record +Outcome +Detail *$", shown, re.M), shown
    assert "Last push run" in stderr


def test_a_dry_run_with_nothing_to_send_prints_nothing_on_stdout(connected):
    done = stsync("push-lead", "--email", "nameless.lead@example.net", "--referral-code", "nLs0XyW1", "--dry-run")
    assert done.returncode == 5 and done.stdout == ""
    assert "first_name" in done.stderr


# == -q: one line, and every failure ==============================================================


def test_quiet_data_commands_still_print_their_data(pushed):
    history = stsync("-q", "history")
    assert history.returncode == 0 and len(history.stdout.splitlines()) == 4 and history.stderr == ""
    mapping = stsync("-q", "map", "show")
    assert mapping.returncode == 0 and "External Id * (external_id)" in mapping.stdout and mapping.stderr == ""


def test_quiet_runs_say_one_line_and_each_failure_and_nothing_when_nothing_was_done(connected, tmp_path: Path):
    first = stsync("-q", "push-lead", "--new")
    assert first.returncode == 0 and first.stderr == ""
    assert re.fullmatch(r"\d+ lead\(s\): \d+ created, 0 already booked, 0 skipped, 0 failed\n", first.stdout), first.stdout
    again = stsync("-q", "push-lead", "--new")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")

    leads = tmp_path / "leads.json"
    leads.write_text(json.dumps(LEADS))
    batch = stsync("-q", "push-lead", "--file", str(leads))
    assert batch.returncode == 5
    assert batch.stdout.splitlines() == [
        "✗ nameless.lead@example.net (nLs0XyW1): failed: lead nameless.lead@example.net (nLs0XyW1) has no value for "
        "the Referral Factory field first_name, which the required ServiceTitan field Name (name) is mapped from",
        "3 lead(s): 2 created, 0 already booked, 0 skipped, 1 failed",
    ]
    assert batch.stderr.startswith("Error: 1 of 3 lead(s) failed")

    sync = stsync("-q", "sync-customers", "--ongoing")
    assert sync.returncode == 0 and sync.stderr == ""
    assert re.fullmatch(r"Customer sync \(ongoing\): \d+ customer\(s\) read — created [1-9]\d*, .*\n", sync.stdout), sync.stdout
    tick = stsync("-q", "sync-customers", "--ongoing")  # the next cron tick: nothing changed
    assert (tick.returncode, tick.stdout, tick.stderr) == (0, "", "")

    qualify = stsync("-q", "qualify")  # rule "none": nothing to do
    assert (qualify.returncode, qualify.stdout, qualify.stderr) == (0, "", "")


def test_quiet_diagnose_prints_the_checks_that_did_not_pass(connected, cli):
    clean = stsync("-q", "diagnose", "--offline")
    assert (clean.returncode, clean.stdout) == (0, "")
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    failing = stsync("-q", "diagnose", "--offline")
    assert failing.returncode == 1
    rows = [line for line in failing.stdout.splitlines() if re.match(r"(PASS|WARN|FAIL)\b", line)]
    assert rows and all(not row.startswith("PASS") for row in rows)
    assert any(row.startswith("FAIL  ") and "Leads:" in row for row in rows)
    # The fix, under the result: a command on one line at 80 columns.
    assert any(line.strip() == "→ stsync map action leads create-booking" for line in failing.stdout.splitlines())
    assert failing.stdout.splitlines()[-1].startswith("0 pass") is False and " fail — " in failing.stdout


# == narrow terminals and cron mails ===============================================================


@pytest.mark.parametrize("columns", [80, 60])
def test_history_keeps_identifiers_whole_at_narrow_widths(pushed, columns):
    code, shown, _ = stsync_on_a_terminal("history", columns=columns)
    assert code == 0
    lines = shown.splitlines()
    assert all(len(line) <= columns for line in lines), "\n".join(line for line in lines if len(line) > columns)
    for attempt in pushed.values():
        assert any(attempt["email"] in line for line in lines), attempt["email"]
        assert any(attempt["external_id"] in line for line in lines), attempt["external_id"]
        if attempt["booking_id"] is not None:
            assert any(f"#{attempt['booking_id']}" in line for line in lines)
    # The error is read whole (a note under the table or a column), never one word per line.
    error = "has no value for the Referral Factory field first_name, which the required ServiceTitan field Name (name)"
    assert error in " ".join(shown.split())
    error_lines = [line for line in lines if any(word in line for word in ("Referral Factory field", "ServiceTitan field"))]
    assert all(len(line.split()) >= 4 for line in error_lines)


@pytest.mark.parametrize("columns", [80, 60])
def test_diagnose_rows_fit_and_pass_rows_spend_nothing_on_a_fix_column(connected, cli, columns):
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    done = stsync("diagnose", "--offline", columns=columns)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    [header] = [line for line in lines if line.startswith("Status")]
    assert header.split() == ["Status", "Check", "Result"]  # no Fix column: a fix sits under its result
    table = lines[lines.index(header):-1]  # the last line is the summary: a sentence, never cut
    assert all(len(line) <= columns for line in table), "\n".join(line for line in table if len(line) > columns)
    fail_at = next(i for i, line in enumerate(lines) if line.startswith("FAIL"))
    fix = "→ stsync map action leads create-booking"
    if columns >= 80:  # room for the command on one line, to be copied whole
        assert any(fix in line for line in lines[fail_at:fail_at + 8])
    else:
        result_column = lines[lines.index(header)].index("Result")
        assert fix in " ".join(line[result_column:].strip() for line in lines[fail_at:fail_at + 8])
    # Each result wraps at words, in a column wide enough to read.
    result_column = header.index("Result")
    words_per_line = [len(line[result_column:].split()) for line in table[1:] if line[result_column:].strip()]
    assert sum(words_per_line) / len(words_per_line) >= 3
