"""The CLI shell: global options are accepted after the command as well as before it, the
value of an option is never taken for a flag, every error (usage errors included) is
rendered as ``Error: … → hint``, and each invocation closes what it opened."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.main import get_command

from stsync.cli.app import app, hoist_global_options, run


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["push-lead", "--new", "--json"], ["--json", "push-lead", "--new"]),
        (["--config", "a.toml", "qualify", "-q", "-v"], ["--config", "a.toml", "-q", "-v", "qualify"]),
        (["map", "show", "--config", "b.toml"], ["--config", "b.toml", "map", "show"]),
        (["map", "show", "--config=b.toml"], ["--config=b.toml", "map", "show"]),
        (["push-lead", "--file", "-", "--", "--json"], ["push-lead", "--file", "-", "--", "--json"]),
        (["history", "--limit", "5"], ["history", "--limit", "5"]),
        (["qualify", "-vv", "--quiet"], ["-vv", "--quiet", "qualify"]),
        (["qualify", "-qv"], ["-qv", "qualify"]),
        # The value of an option stays with it, whatever it looks like.
        (["map", "set", "summary", "--value", "-q"], ["map", "set", "summary", "--value", "-q"]),
        (["map", "set", "summary", "--value", "--json", "--json"], ["--json", "map", "set", "summary", "--value", "--json"]),
        (["map", "set", "summary", "--value=-q", "-q"], ["-q", "map", "set", "summary", "--value=-q"]),
        (["push-lead", "--file", "-", "--json"], ["--json", "push-lead", "--file", "-"]),
        (["push-lead", "--email", "-v", "--first-name", "--config", "-q"], ["-q", "push-lead", "--email", "-v", "--first-name", "--config"]),
        # A global option's own value moves with it.
        (["history", "--config", "-q.toml"], ["--config", "-q.toml", "history"]),
        # Unknown options stay for Click to report.
        (["history", "--bogus", "-q"], ["-q", "history", "--bogus"]),
    ],
)
def test_global_options_move_in_front_of_the_command(argv, expected):
    assert hoist_global_options(argv, get_command(app)) == expected


def test_json_after_the_command_gives_the_json_object(capsys):
    assert run(["map", "show", "--json"]) == 0
    assert "leads" in json.dumps(json.loads(capsys.readouterr().out))


def test_a_value_that_looks_like_a_global_flag_is_the_value(cli, isolated: Path):
    result = cli("map", "set", "summary", "--value", "-q")
    assert result.exit_code == 0, str(result)
    assert 'summary = { value = "-q" }' in (isolated / "config.toml").read_text()
    shown = cli("map", "show", "--json")
    assert shown.exit_code == 0 and '"-q"' in shown.stdout


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["push-lead", "--bogus"], "Error: No such option: --bogus",
         "→ Usage: stsync push-lead [OPTIONS] (try 'stsync push-lead --help')"),
        (["map", "set", "summary", "--value"], "Error: Option '--value' requires an argument.",
         "→ Usage: stsync map set [OPTIONS] {TARGET} (try 'stsync map set --help')"),
        (["bogus"], "Error: No such command 'bogus'.", "→ Usage: stsync [OPTIONS] COMMAND [ARGS]... (try 'stsync --help')"),
    ],
)
def test_usage_errors_print_like_every_other_error_and_exit_2(cli, argv, message, hint):
    result = cli(*argv)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [message, hint]
    assert result.stdout == ""


def test_a_usage_error_with_json_prints_the_one_error_object(cli):
    for argv in (["--json", "push-lead", "--bogus"], ["push-lead", "--bogus", "--json"], ["--json", "bogus"]):
        result = cli(*argv)
        assert result.exit_code == 2
        assert result.json["ok"] is False and result.json["exit_code"] == 2
        assert result.json["error"]["type"] == "UsageError" and "No such" in result.json["error"]["message"]
        assert "--help" in result.json["error"]["hint"]


def test_the_console_script_renders_usage_errors_the_same_way(cli_subprocess):
    result = cli_subprocess("push-lead", "--bogus")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[:2] == ["Error: No such option: --bogus",
                                              "→ Usage: stsync push-lead [OPTIONS] (try 'stsync push-lead --help')"]
    assert "╭" not in result.stderr


def test_no_command_shows_the_help_and_exits_2(cli):
    result = cli()
    assert result.exit_code == 2 and "push-lead" in result.stdout and "Error" not in result.stderr
    assert cli("--help").exit_code == 0


def test_a_stsync_error_is_rendered_the_same_way_with_its_own_exit_code(cli):
    result = cli("--json", "history")
    assert result.exit_code == 3
    assert result.json["error"]["type"] == "ConfigError" and "no config file" in result.json["error"]["message"]
    assert result.stderr.splitlines() == [f"Error: {result.json['error']['message']}", "→ run `stsync connect` to create it"]


def _open_files_under(directory: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc to list open files")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(directory))]


def test_each_invocation_closes_its_ledger_and_log_file(cli, isolated: Path):
    assert cli("map", "set", "summary", "--value", "Referral").exit_code == 0  # writes the config
    assert cli("history").exit_code == 0  # opens the ledger and the log file
    assert _open_files_under(isolated / "state") == []
    assert [h for h in logging.getLogger("stsync").handlers if isinstance(h, logging.FileHandler)] == []


# -- the garbage collector: frozen in the console script only ----------------------------------
@pytest.mark.parametrize("whole_process", [False, True])
def test_only_the_console_script_freezes_what_it_loaded_out_of_the_collectors_reach(isolated, monkeypatch, whole_process):
    import gc

    from connection_fixtures import SECRETS, unit_config  # tests/support

    from stsync import credentials
    from stsync.cli.context import AppContext
    from stsync.storage.config_writer import save_config

    for secret in credentials.SECRETS:
        monkeypatch.setenv(secret.env_var.name, SECRETS[secret.name])
    save_config(unit_config(), isolated / "config.toml")
    gc.unfreeze()
    try:
        with AppContext(whole_process=whole_process) as app_ctx:
            app_ctx.connection()
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    # A test or a demo step calling run() goes on afterwards: freezing would keep its garbage
    # cycles for ever. The console script ends with the invocation.
    assert (frozen > 0) is whole_process
