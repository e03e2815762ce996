"""One JSON shape for every command (docs/json.md, docs/json-schema.json).

Every command the CLI registers is run here with ``--json`` against the sandbox — on success
and, where it can fail, on failure — and its object is validated against the schema. A command
added without a recipe below fails ``test_every_registered_command_has_a_recipe``: add one, and
an example to docs/json.md (``test_docs_json_examples_are_valid_and_cover_every_command``).
The failures that happen before or around a command — a usage error, a config error, a bug,
Ctrl-C — keep the shape too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from json_schema import GUIDE_FILE, assert_valid, registered_commands, schema_errors
from sandbox_world import edit_config

pytestmark = pytest.mark.e2e

Recipe = Callable[[Any, Callable[..., Any]], list[tuple[Any, int]]]


def ran(result: Any, exit_code: int) -> tuple[Any, int]:
    """A run's JSON object and the exit code the recipe expects of it."""
    assert result.exit_code == exit_code, str(result)
    return result.json, exit_code


def _serve(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    env = {**os.environ, "STSYNC_WEBHOOK_TOKEN": "json-schema-token-0123456789abcdef"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stsync", "--json", "serve", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        for line in process.stderr:  # talk on stderr; the object waits for the end
            if "listening on" in line:
                break
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    return [(json.loads(stdout), 0)]


def _sandbox(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "stsync", "--json", "sandbox", "--port", "0", "--customers", "3", "--leads", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in process.stdout:  # written as soon as it listens; it then runs on
            lines.append(line)
            if line.rstrip("\n") == "}":
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rest == "", "stdout holds one object, not two"
    return [(json.loads("".join(lines)), 0)]


def _run(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    def push_every_second(config: Any) -> None:
        schedule = config.schedule
        schedule.push, schedule.jitter = 1.0, 0.0
        schedule.qualify = schedule.sync = schedule.full_sync = schedule.full_qualify = None

    edit_config(push_every_second)
    process = subprocess.Popen(
        [sys.executable, "-m", "stsync", "--json", "run"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sb.bookings():  # a push step ran
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    obj = json.loads(stdout)
    assert obj["counts"]["steps"] >= 1
    return [(obj, 0)]


def _status(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    assert cli("push-lead", "--new").exit_code == 0
    result = cli("--json", "status")
    assert result.exit_code in (0, 1), str(result)  # 1: a scheduled job never ran, so needs attention
    return [(result.json, result.exit_code)]


def _notify(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    from receiver import Receiver

    results = [ran(cli("--json", "notify", "--test"), 3)]  # no destination configured
    with Receiver() as hooks:
        edit_config(lambda config: setattr(config.notify, "webhook_url", hooks.url("/slack")))
        results.append(ran(cli("--json", "notify", "--test"), 0))
        assert hooks.json_bodies("/slack")
    return results


def _push_lead(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    results = [ran(cli("--json", "push-lead", "--new"), 0)]
    results.append(ran(cli("--json", "push-lead", "--email", "jane@example.com", "--first-name", "Jane",
                           "--referral-code", "janeJSON1", "--dry-run"), 0))  # fmt: skip
    # A lead without a first name cannot be sent: exit 5, the lead among the failures.
    results.append(ran(cli("--json", "push-lead", "--email", "nameless@example.com", "--referral-code", "nameless1"), 5))
    assert results[-1][0]["failures"][0]["key"] == "nameless1"
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    results.append(ran(cli("--json", "push-lead", "--new"), 0))  # "Nothing to action": the notice
    return results


def _qualify(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    results = [ran(cli("--json", "qualify"), 0)]  # rule "none": nothing to do
    assert cli("map", "qualify", "job-created").exit_code == 0
    assert cli("push-lead", "--new").exit_code == 0
    sb.convert_booking_to_job(min(b["id"] for b in sb.bookings()))
    results.append(ran(cli("--json", "qualify", "--dry-run"), 0))
    results.append(ran(cli("--json", "qualify"), 0))
    assert results[-1][0]["counts"]["qualified"] == 1
    return results


def _report(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    assert cli("push-lead", "--new").exit_code == 0
    sb.complete_job(sb.convert_booking_to_job(min(b["id"] for b in sb.bookings()))["id"], total="480.00")
    results = [ran(cli("--json", "report", "--since", "2024-01-01", "--refresh", "--by", "referrer"), 0),
               ran(cli("--json", "report", "--since", "2024-01-01", "--by", "month"), 0),
               ran(cli("--json", "report", "--since", "2025-06-01", "--until", "2025-01-01"), 2)]  # fmt: skip
    assert results[0][0]["revenue"]["total"] == 480.0 and results[0][0]["counts"]["jobs_with_total"] == 1
    return results


def _validate(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    results = [ran(cli("--json", "validate", "--online"), 0)]
    assert cli("map", "unset", "summary").exit_code == 0
    results.append(ran(cli("--json", "validate"), 3))
    failed = results[-1][0]
    assert failed["error"]["type"] == "CommandFailed" and [f["key"] for f in failed["failures"]] == ["Leads: field mapping"]
    return results


def _diagnose(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    results = [ran(cli("--json", "diagnose"), 0), ran(cli("--json", "diagnose", "--offline", "--email", "nobody@example.com"), 0)]
    assert cli("map", "action", "leads", "nothing").exit_code == 0
    results.append(ran(cli("--json", "diagnose", "--offline"), 1))
    return results


def _sync(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    return [ran(cli("--json", "sync-customers", "--dry-run"), 0), ran(cli("--json", "sync-customers", "--once", "--limit", "5"), 0)]


def _history(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    assert cli("push-lead", "--new").exit_code == 0
    return [ran(cli("--json", "history", "--limit", "3"), 0), ran(cli("--json", "history", "--failed"), 0)]


def _demo(sb: Any, cli: Any) -> list[tuple[Any, int]]:
    return [ran(cli("--json", "demo", "--customers", "5", "--leads", "2"), 0)]


RECIPES: dict[str, Recipe] = {
    "connect": lambda sb, cli: [ran(cli("--json", *sb.connect_args(), "--secrets-store", "file"), 0)],
    "disconnect": lambda sb, cli: [ran(cli("--json", "disconnect", "--yes"), 0)],
    "map show": lambda sb, cli: [ran(cli("--json", "map", "show"), 0), ran(cli("--json", "map", "show", "--for", "customers"), 0)],
    "map set": lambda sb, cli: [ran(cli("--json", "map", "set", "summary", "--value", "Spring referral"), 0),
                                ran(cli("--json", "map", "set", "nmae", "--from", "first_name"), 2)],
    "map unset": lambda sb, cli: [ran(cli("--json", "map", "unset", "summary"), 0)],
    "map action": lambda sb, cli: [ran(cli("--json", "map", "action", "referrers", "create-booking"), 0)],
    "map qualify": lambda sb, cli: [ran(cli("--json", "map", "qualify", "job-status", "--status", "Completed"), 0)],
    "map return-field": lambda sb, cli: [ran(cli("--json", "map", "return-field", "Referral Code", "--remove"), 0)],
    "map reset": lambda sb, cli: [ran(cli("--json", "map", "reset", "--yes"), 0), ran(cli("--json", "map", "reset"), 2)],
    "validate": _validate,
    "push-lead": _push_lead,
    "sync-customers": _sync,
    "qualify": _qualify,
    "report": _report,
    "diagnose": _diagnose,
    "history": _history,
    "serve": _serve,
    "run": _run,
    "status": _status,
    "notify": _notify,
    "sandbox": _sandbox,
    "demo": _demo,
}  # fmt: skip


def test_every_registered_command_has_a_recipe():
    missing = registered_commands() - set(RECIPES)
    assert not missing, f"add a --json recipe to this file (and an example to docs/json.md) for: {sorted(missing)}"
    assert not set(RECIPES) - registered_commands(), "a recipe for a command that does not exist"


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_every_commands_json_object_has_the_one_shape(command, connected, cli):
    for obj, exit_code in RECIPES[command](connected, cli):
        assert_valid(obj)
        assert obj["command"] == command and obj["exit_code"] == exit_code and obj["ok"] is (exit_code == 0)


def _guide_examples() -> tuple[dict[str, Any], list[Any]]:
    """docs/json.md's examples: the one under each ``### `command``` heading, and all of them."""
    text = GUIDE_FILE.read_text(encoding="utf-8")
    blocks = [(m.start(), json.loads(m.group(1))) for m in re.finditer(r"```json\n(.*?)\n```", text, re.S)]
    per_command: dict[str, Any] = {}
    for heading in re.finditer(r"^### `([^`]+)`$", text, re.M):
        following = next(obj for start, obj in blocks if start > heading.end())
        per_command[heading.group(1)] = following
    return per_command, [obj for _, obj in blocks]


def test_docs_json_examples_are_valid_and_cover_every_command():
    per_command, everything = _guide_examples()
    assert set(per_command) == registered_commands(), "docs/json.md needs one example per command, under ### `command`"
    for name, obj in per_command.items():
        assert obj["command"] == name
    for obj in everything:
        assert_valid(obj)


@pytest.mark.parametrize(
    ("argv", "exit_code", "error_type", "command"),
    [
        (["--json", "push-lead", "--bogus"], 2, "UsageError", "push-lead"),
        (["push-lead", "--bogus", "--json"], 2, "UsageError", "push-lead"),
        (["--json", "bogus"], 2, "UsageError", None),
        (["--json"], 2, "UsageError", None),
        (["--json", "map"], 2, "UsageError", "map"),
        (["--json", "--config"], 2, "UsageError", None),
        (["--json", "push-lead", "--email"], 2, "UsageError", "push-lead"),
        (["--json", "map", "show", "--for", "lead"], 2, "UsageError", "map show"),
        (["--json", "map", "reset"], 2, "UsageError", "map reset"),  # not a terminal: --yes is needed
        (["--json", "history"], 3, "ConfigError", "history"),
        (["--json", "push-lead", "--new"], 3, "ConfigError", "push-lead"),
    ],
)
def test_a_command_that_cannot_run_still_prints_the_one_object(cli_subprocess, argv, exit_code, error_type, command):
    result = cli_subprocess(*argv)
    assert result.exit_code == exit_code, str(result)
    obj = result.json
    assert_valid(obj)
    assert (obj["ok"], obj["exit_code"], obj["error"]["type"], obj["command"]) == (False, exit_code, error_type, command)
    assert result.stderr.startswith("Error: ")  # the person reads it on stderr, once


def test_a_bug_is_exit_1_with_its_object(cli, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("stsync.mapping.overview.mapping_overview", broken)
    result = cli("--json", "map", "show")
    assert result.exit_code == 1
    assert_valid(result.json)
    assert "unexpected error: RuntimeError" in result.json["error"]["message"]


def test_ctrl_c_during_a_run_prints_the_object_with_exit_130(make_sandbox, cli, monkeypatch):
    sb = make_sandbox(customers=200, latency=0.05)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    assert cli(*sb.connect_args(), "--secrets-store", "file").exit_code == 0
    sb.clear_request_log()
    process = subprocess.Popen(
        [sys.executable, "-m", "stsync", "--json", "sync-customers", "--once"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(r.service == "referral_factory" for r in sb.request_log):  # the run is under way
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    obj = json.loads(stdout)
    assert_valid(obj)
    assert (obj["exit_code"], obj["error"]["type"], obj["command"]) == (130, "Interrupted", "sync-customers")
    assert stderr.splitlines()[-2:] == ["Error: interrupted; everything done so far is recorded",
                                        "→ run the same command again to resume"]  # fmt: skip


@pytest.mark.parametrize(
    "broken",
    [
        {"counts": {"created": {"leads": 1}}},  # nested counts
        {"ok": True, "exit_code": 5},  # ok disagrees with the exit code
        {"ok": False, "exit_code": 3, "error": None},  # a failure without its error
        {"failures": [{"key": "x", "message": "m"}]},  # a failure without its error object
        {"schema": 2},
        {"results": None},  # push-lead's own key of the wrong type
    ],
)
def test_the_schema_refuses_what_consumers_must_not_meet(broken):
    good = {"schema": 1, "command": "push-lead", "ok": True, "exit_code": 0, "counts": {"created": 0, "already_booked": 0,
            "skipped": 0, "failed": 0, "total": 0}, "failures": [], "error": None, "kind": "lead", "dry_run": False,
            "run_id": None, "results": []}  # fmt: skip
    assert schema_errors(good) == []
    assert schema_errors({**good, **broken}) != []
    missing = {key: value for key, value in good.items() if key != "failures"}
    assert schema_errors(missing) != []
