"""Help that teaches: every command sits in a panel of `stsync --help`, shows examples that
parse, lists its closed choices (which the shell completes), and has no `<bool>` or
`<int range>` noise."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest
from json_schema import registered_commands
from rich.text import Text

from stsync.cli import map as map_cli
from stsync.cli.app import build_command, run
from stsync.cli.help import PANELS
from stsync.servicetitan.vocabulary import JOB_STATUSES
from stsync.vocabulary import Action, Environment, QualificationRule, ReturnValue, SecretsStore, Section, UnqualifyEvent


def command_at(path: str) -> Any:
    command = build_command()
    for word in path.split():
        command = command.commands[word]
    return command


def context_for(path: str) -> Any:
    root = build_command()
    ctx = root.context_class(root, info_name="stsync", **root.context_settings)
    command = root
    for word in path.split():
        command = command.commands[word]
        ctx = command.context_class(command, info_name=word, parent=ctx, **command.context_settings)
    return ctx


def help_text(capsys, *path: str) -> str:
    capsys.readouterr()
    assert run([*path, "--help"]) == 0
    return capsys.readouterr().out


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: the checks read whole lines


def test_commands_are_grouped_setup_everyday_support_tools(capsys):
    text = help_text(capsys)
    panels = re.findall(r"╭─ (\w+) ─", text)
    assert panels == ["Options", *PANELS]
    for name in build_command().commands:
        assert getattr(build_command().commands[name], "rich_help_panel", None) in PANELS, name


def _examples(command: Any) -> list[list[str]]:
    """The `$ stsync …` lines of a command's epilog, as argv (what comes after `stsync`)."""
    epilog = Text.from_markup(command.epilog or "").plain.replace("\\\n", " ")
    argvs = []
    for line in re.findall(r"\$ (.+)", epilog):
        command_line = line.split(" | ")[0].split(" > ")[0]
        words = shlex.split(re.sub(r"^(\w+=(\$\([^)]*\)|\S+) )+", "", command_line))  # VAR=value in front
        assert words[0] == "stsync", line
        argvs.append(words[1:])
    return argvs


@pytest.mark.parametrize("path", sorted(registered_commands() | {"map"}))
def test_every_command_has_examples_that_parse(path):
    examples = _examples(command_at(path))
    assert examples, f"`stsync {path} --help` shows no example"
    assert any(argv[: len(path.split())] == path.split() or path.split()[-1] in argv for argv in examples)
    for argv in examples:
        parse(argv)  # every option and closed choice the example uses; nothing runs


def parse(argv: list[str]) -> None:
    """Parse a command line the way `stsync` would, down to the command's own options."""
    root = build_command()
    ctx = root.make_context("stsync", list(argv))
    command = root
    while hasattr(command, "commands"):
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"{argv}: no command named"
        command = command.commands[rest[0]]
        ctx = command.make_context(rest[0], rest[1:], parent=ctx)


def test_no_type_noise_in_any_help(capsys):
    noise = re.compile(r"<(bool|int|str|float|int range|float range|list\[[a-z]+\])>|\[x[<>]=")
    for path in sorted(registered_commands() | {"map", ""}):
        text = help_text(capsys, *path.split())
        assert not noise.search(text), f"stsync {path} --help:\n" + "\n".join(line for line in text.splitlines() if noise.search(line))


CLOSED_CHOICES = {
    ("connect", "environment"): [str(word) for word in Environment],
    ("connect", "secrets_store"): [str(word) for word in SecretsStore],
    ("map show", "for_"): [str(word) for word in Section],
    ("map set", "for_"): [str(word) for word in Section],
    ("map unset", "for_"): [str(word) for word in Section],
    ("map action", "section"): ["leads", "referrers"],
    ("map action", "action"): ["create-booking", "nothing"],
    ("map qualify", "rule"): ["none", "job-created", "job-status"],
    ("map qualify", "status"): list(JOB_STATUSES),
    ("map qualify", "unqualify_on"): [*(event.replace("_", "-") for event in UnqualifyEvent), "none"],
    ("map return-field", "field"): [str(word) for word in ReturnValue],
}


@pytest.mark.parametrize(("path", "param_name"), sorted(CLOSED_CHOICES))
def test_closed_choices_are_listed_and_completed(capsys, path, param_name):
    words = CLOSED_CHOICES[(path, param_name)]
    [param] = [p for p in command_at(path).params if p.name == param_name]
    completed = [item.value for item in param.shell_complete(context_for(path), "")]
    assert completed == words
    text = help_text(capsys, *path.split())
    if param.metavar is None or param.param_type_name == "argument":
        assert "|".join(words) in text  # the help lists them
    else:
        assert all(word in text for word in words)


def test_closed_choices_take_any_case_and_either_spelling(capsys, tmp_path):
    assert run(["map", "action", "LEADS", "create_booking"]) == 0
    assert run(["map", "qualify", "Job_Status", "--status", "completed", "--unqualify-on", "JOB-CANCELED"]) == 0
    config = (tmp_path / "config.toml").read_text()
    assert 'rule = "job_status"' in config and 'job_status = "Completed"' in config and '"job_canceled"' in config
    capsys.readouterr()
    assert run(["map", "show", "--for", "lead"]) == 2
    assert "'lead' is not one of leads, referrers, customers (did you mean 'leads'?)" in capsys.readouterr().err


def test_the_cli_copy_of_the_job_statuses_is_servicetitans():
    assert map_cli.JOB_STATUSES == JOB_STATUSES
    assert set(Action) and set(QualificationRule)  # the vocabularies the choices come from


def test_the_shell_completes_a_closed_choice():
    env = {**os.environ, "_STSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "stsync map qualify job", "COMP_CWORD": "3"}
    done = subprocess.run([sys.executable, "-m", "stsync"], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["job-created", "job-status"]
