"""The envelope is built in one place and refuses what would break it."""

from __future__ import annotations

import pytest
from json_schema import assert_valid

from stsync.cli.envelope import ENVELOPE_KEYS, CommandOutput, envelope, failure


def test_ok_is_exactly_exit_code_zero_and_the_error_agrees():
    done = envelope("history", 0, CommandOutput(counts={"attempts": 2}, data={"attempts": []}), None)
    assert list(done)[: len(ENVELOPE_KEYS)] == list(ENVELOPE_KEYS)
    assert (done["ok"], done["error"]) == (True, None)
    error = {"type": "LockHeld", "message": "held", "hint": None, "exit_code": 7}
    failed = envelope("push-lead", 7, None, error)
    assert (failed["ok"], failed["error"], failed["counts"], failed["failures"]) == (False, error, {}, [])
    assert_valid(failed)


def test_a_non_zero_exit_without_an_error_still_gets_an_error_object():
    obj = envelope("demo", 4, None, None)
    assert obj["error"]["exit_code"] == 4 and obj["error"]["type"] == "StsyncError"
    assert_valid(obj)


@pytest.mark.parametrize(
    "output",
    [
        {"counts": {"created": {"leads": 1}}},
        {"counts": {"dry_run": True}},
        {"data": {"ok": True}},
        {"data": {"counts": {}}},
        {"failures": [{"key": "x", "message": "no error object"}]},
    ],
)
def test_command_output_refuses_nested_counts_reserved_keys_and_bare_failures(output):
    with pytest.raises((TypeError, ValueError)):
        CommandOutput(**output)


def test_a_failure_without_an_error_object_gets_one_made_of_its_message():
    item = failure("code1", "no value for name", error=None, email=None)
    assert item == {"key": "code1", "email": None, "message": "no value for name",
                    "error": {"type": "RecordFailed", "message": "no value for name", "hint": None, "exit_code": 5}}  # fmt: skip
    assert "email" not in failure("Config file", "broken", error={"type": "ConfigError", "message": "broken", "hint": None,
                                                                  "exit_code": 3})  # fmt: skip
