"""The bad-input corpus (SPEC §6.7): whatever a user, a file or a config gets wrong, stsync
says what is wrong — naming the file, the key path, the record or the value — exits with
SPEC §5's code for that class of problem, and never shows a traceback.

Most cases run the CLI in-process (``stsync.cli.app.run``); a few run it as a real process,
as cron would, so the console entry point's handling is covered too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stsync.storage.paths import ConnectionPaths

MB = 1_000_000


def assert_clear(result, exit_code: int, *fragments: str) -> None:
    """The SPEC exit code, no traceback anywhere, and the message names the problem."""
    assert result.exit_code == exit_code, str(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, str(result)
    # Rich wraps long lines to the terminal width: compare with the line breaks taken out.
    said = " ".join(result.stderr.split())
    for fragment in fragments:
        assert " ".join(fragment.split()) in said, f"{fragment!r} not in:\n{result.stderr}"


def config_path(isolated: Path) -> Path:
    return isolated / "config.toml"


def rewrite_config(isolated: Path, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in the config stsync wrote; the 1-based line ``new`` starts on."""
    path = config_path(isolated)
    text = path.read_text()
    assert old in text, f"{old!r} is not in the config stsync wrote"
    path.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


def campaign_leads(sb) -> list[dict]:
    return sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")


# --------------------------------------------------------------------------------------
# The config file
# --------------------------------------------------------------------------------------
CONFIG_CASES = {
    # name: (text in the config, replaced by, command, exit code, what the message says);
    # {line} is the line the replacement starts on.
    "malformed_toml": ("[leads]\n", "[leads]\nbroken = = 1\n", ("push-lead", "--new"), 3, ["config.toml:{next_line}:", "TOML syntax error"]),
    "unclosed_table": ("[leads]\n", "[leads\n", ("sync-customers", "--once"), 3, ["config.toml:{line}:", "TOML syntax error"]),
    "duplicate_section": ("[limits]\n", "[leads]\n[limits]\n", ("push-lead", "--new"), 3, ["config.toml:", "TOML syntax error"]),
    "tenant_id_text": ("tenant_id = ", 'tenant_id = "abc" #', ("push-lead", "--new"), 3, ["servicetitan.tenant_id", "must be an integer", "'abc'"]),
    "workers_text": ("workers = 8", 'workers = "eight"', ("sync-customers", "--once"), 3, ["limits.workers", "must be an integer"]),
    "boolean_as_text": ("include_inactive = false", 'include_inactive = "no"', ("sync-customers", "--once"), 3, ["customer_sync.include_inactive"]),
    "action_unknown_value": ('action = "create_booking"', 'action = "create"', ("push-lead", "--new"), 3, ["leads.action", "'create'", "did you mean 'create_booking'"]),
    "unknown_key": ("[leads]\n", '[leads]\nactoin = "nothing"\n', ("push-lead", "--new"), 3, ["leads.actoin", "unknown key", "did you mean 'action'"]),
    "unknown_section": ("[leads]\n", "[lead]\nx = 1\n[leads]\n", ("qualify",), 3, ["unknown key 'lead'", "did you mean 'leads'"]),
    "unknown_lead_field": ('name = { from = "first_name" }', 'name = { from = "frist_name" }', ("push-lead", "--new"), 3, ["'frist_name'", "did you mean 'first_name'"]),
    "unknown_target": ('name = { from = "first_name" }', 'nmae = { from = "first_name" }', ("push-lead", "--new"), 3, ["Setup Required", "name"]),
    "unknown_select_option": ('is_first_time_client = { select = "yes" }', 'is_first_time_client = { select = "maybe" }', ("push-lead", "--new"), 3, ["'maybe'", "is_first_time_client"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_bad_config_is_named_with_its_place_and_exit_3(case, connected, cli, isolated):
    old, new, command, code, fragments = CONFIG_CASES[case]
    line = rewrite_config(isolated, old, new)
    connected.clear_request_log()

    result = cli(*command)

    assert_clear(result, code, *(f.format(line=line, next_line=line + 1) for f in fragments))
    # Nothing was written: a broken config stops the run before any write (a search is a read).
    writes = [
        r for r in connected.request_log
        if r.method in ("POST", "PUT", "PATCH") and r.service != "auth" and not r.path.endswith("/search")
    ]  # fmt: skip
    assert writes == []


def test_a_config_that_is_not_utf8_or_missing_or_empty(connected, cli, isolated):
    path = config_path(isolated)
    text = path.read_bytes()
    path.write_bytes(text.replace(b"[leads]\n", b"[leads]\n# caf\xe9 \xff\n", 1))
    assert_clear(cli("push-lead", "--new"), 3, "config.toml", "not UTF-8")
    checked = cli("validate")  # the failed check is a row of the table it prints (stdout)
    assert checked.exit_code == 3 and "not UTF-8" in checked.stdout and "Traceback" not in checked.stderr, str(checked)

    path.write_text("")
    assert_clear(cli("push-lead", "--new"), 3, "Setup Required")

    path.unlink()
    assert_clear(cli("sync-customers", "--once"), 3, "no config file", str(path), "stsync connect")


def test_with_json_an_error_is_one_json_object_on_stdout(connected, cli, isolated):
    rewrite_config(isolated, "workers = 8", 'workers = "eight"')
    result = cli("--json", "sync-customers", "--once")
    assert_clear(result, 3, "limits.workers")
    assert result.json["ok"] is False and result.json["exit_code"] == 3
    assert result.json["error"]["key_path"] == "limits.workers"


def test_malformed_toml_through_the_real_process(connected, cli_subprocess, isolated):
    line = rewrite_config(isolated, "[leads]\n", "[leads]\nbroken = = 1\n")
    assert_clear(cli_subprocess("push-lead", "--new", timeout=30), 3, f"config.toml:{line + 1}:", "TOML syntax error")


# --------------------------------------------------------------------------------------
# Lead files and flags
# --------------------------------------------------------------------------------------
def test_empty_and_blank_lead_files_are_usage_errors(connected, cli, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    blank = tmp_path / "blank.json"
    blank.write_text("  \n\t\n")
    assert_clear(cli("push-lead", "--file", empty), 2, str(empty), "is empty")
    assert_clear(cli("push-lead", "--file", blank), 2, str(blank), "is empty")
    assert_clear(cli("push-lead", "--file", tmp_path / "absent.json"), 2, "absent.json", "no such file")
    assert connected.bookings() == []


def test_lead_files_that_are_not_json_or_not_leads(connected, cli, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_text('[{"email": "x@example.com", ')
    assert_clear(cli("push-lead", "--file", truncated), 2, str(truncated), "not JSON", "line 1, column")
    number = tmp_path / "number.json"
    number.write_text("42")
    assert_clear(cli("push-lead", "--file", number), 2, "expected a lead as a JSON object", "int")
    assert connected.bookings() == []


def test_a_lead_file_that_is_not_utf8(connected, cli, cli_subprocess, tmp_path):
    latin1 = tmp_path / "leads-latin1.json"
    latin1.write_bytes('{"email": "jose@example.com", "first_name": "José", "code": "abc12345"}'.encode("latin-1"))
    assert_clear(cli("push-lead", "--file", latin1), 2, str(latin1), "cannot read it", "utf-8")
    assert_clear(cli_subprocess("push-lead", "--file", latin1, timeout=30), 2, str(latin1), "utf-8")
    assert connected.bookings() == []


def test_a_20_mb_lead_file_of_garbage_is_refused_quickly(connected, cli, tmp_path):
    huge = tmp_path / "huge.json"
    with huge.open("w") as out:
        out.write("x" * (20 * MB))
    assert_clear(cli("push-lead", "--file", huge), 2, str(huge), "not JSON")
    assert connected.bookings() == []


def test_a_20_mb_lead_record_fails_alone_with_servicetitans_answer(connected, cli, tmp_path):
    sb = connected
    lead = dict(campaign_leads(sb)[0])
    lead["first_name"] = "A" * (20 * MB)
    huge = tmp_path / "huge-lead.json"
    huge.write_text(json.dumps(lead))

    result = cli("push-lead", "--file", huge)

    assert_clear(result, 5, lead["email"], lead["code"], "413")
    assert "A" * 1000 not in result.stderr, "the 20 MB value is not echoed back"
    assert sb.bookings() == []


def test_a_list_with_one_broken_record_pushes_the_rest_and_exits_5(connected, cli, tmp_path):
    sb = connected
    leads = campaign_leads(sb)
    broken = dict(leads[2])
    del broken["email"]
    invalid = dict(leads[5], email="not-an-email")
    records = [*leads[:2], broken, *leads[3:5], invalid, *leads[6:]]
    path = tmp_path / "leads.json"
    path.write_text(json.dumps(records))

    result = cli("--json", "push-lead", "--file", path)

    assert_clear(result, 5, "record #3", broken["code"], "no e-mail", "not-an-email", "2 of 8 lead(s) failed")
    booked = {b["externalId"] for b in sb.bookings()}
    assert booked == {lead["code"] for lead in leads} - {broken["code"], invalid["code"]}
    failed_leads = sorted(r["lead"] for r in result.json["results"] if r["outcome"] == "failed")
    assert len(failed_leads) == 2 and broken["code"] in failed_leads[0] + failed_leads[1]
    assert any(invalid["code"] in lead for lead in failed_leads)
    # Each failure is recorded with what was wrong, for `history --failed` and `diagnose --email`.
    history = cli("--json", "history", "--failed")
    assert history.exit_code == 0, str(history)
    failed = {a["external_id"]: a["error"]["message"] for a in history.json["attempts"]}
    assert "not-an-email" in failed[invalid["code"]]


def test_invalid_emails_on_the_command_line(connected, cli):
    sb = connected
    assert_clear(
        cli("push-lead", "--email", "not-an-email", "--first-name", "Bob", "--referral-code", "bad00001"),
        2, "'not-an-email'", "not an e-mail address",
    )  # fmt: skip
    assert_clear(
        cli("push-lead", "--email", "bob@localhost", "--first-name", "Bob", "--referral-code", "bad00002"),
        5, "bob@localhost", "not an e-mail address",
    )  # fmt: skip
    assert_clear(cli("push-lead", "--email", "", "--first-name", "Bob"), 2, "--email is required")
    assert sb.bookings() == []


def test_usage_mistakes_exit_2(connected, cli):
    assert_clear(cli("push-lead"), 2, "nothing to push")
    assert_clear(cli("push-lead", "--new", "--code", "abc"), 2, "give one input", "--code", "--new")
    assert_clear(cli("push-lead", "--email", "a@example.com", "--first-name", "A", "--field", "novalue"), 2, "'novalue'", "K=V")
    assert_clear(cli("sync-customers", "--limit", "0"), 2, "--limit")
    assert_clear(cli("connect", "--tenant-id", "abc"), 2, "--tenant-id")
    assert_clear(cli("map", "set", "nmae", "--from", "first_name"), 2, "'nmae'", "did you mean 'name'")
    assert_clear(cli("map", "set", "is_first_time_client", "--select", "maybe"), 2, "'maybe'", "yes, no")
    assert connected.bookings() == []


def test_an_unusable_api_url_is_a_config_error(connected, cli, monkeypatch):
    monkeypatch.setenv("STSYNC_ST_API_URL", "ftp://nowhere.example")
    assert_clear(cli("push-lead", "--new"), 3, "ftp://nowhere.example", "STSYNC_ST_API_URL")


# --------------------------------------------------------------------------------------
# connect with what ServiceTitan or Referral Factory refuses: nothing is stored
# --------------------------------------------------------------------------------------
def nothing_stored(isolated: Path) -> bool:
    paths = ConnectionPaths.for_config(config_path(isolated))
    keyring_file = Path(os.environ["STSYNC_TEST_KEYRING"])
    keyring_text = keyring_file.read_text() if keyring_file.exists() else ""
    return not config_path(isolated).exists() and not paths.secrets_file.exists() and "default/" not in keyring_text


def with_option(args: list[str], option: str, value: str) -> list[str]:
    changed = list(args)
    changed[changed.index(option) + 1] = value
    return changed


def test_connect_to_an_unknown_campaign_exits_3_and_stores_nothing(sandbox_env, cli, cli_subprocess, isolated):
    args = with_option(sandbox_env.connect_args(), "--campaign-id", "999")
    assert_clear(cli(*args), 3, "campaign 999 was not found")
    assert nothing_stored(isolated)
    assert_clear(cli_subprocess(*args, timeout=30), 3, "campaign 999 was not found")
    assert nothing_stored(isolated)


@pytest.mark.parametrize(
    "option, value, code, fragments",
    [
        ("--client-secret", "cs2.not-the-secret", 4, ["rejected the Client ID / Client Secret"]),
        ("--booking-provider", "7", 4, ["Booking Provider Value is incorrect", "booking provider 7"]),
        ("--rf-api-key", "NotTheKey0000", 4, ["Referral Factory rejected the API key"]),
        ("--campaign-id", "paused", 3, ["is paused, not launched"]),
    ],
)
def test_connect_with_refused_credentials_names_which_and_stores_nothing(option, value, code, fragments, sandbox_env, cli, isolated):
    if value == "paused":
        value = str(sandbox_env.credentials.paused_campaign_id)
    result = cli(*with_option(sandbox_env.connect_args(), option, value))
    assert_clear(result, code, *fragments)
    assert value not in result.stderr or option in ("--booking-provider", "--campaign-id"), "a secret echoed back"
    assert nothing_stored(isolated)
