"""The CLI shell: global options are accepted after the command as well as before it."""

from __future__ import annotations

import pytest

from stsync.cli.app import hoist_global_options


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["push-lead", "--new", "--json"], ["--json", "push-lead", "--new"]),
        (["--config", "a.toml", "qualify", "-q", "-v"], ["--config", "a.toml", "-q", "-v", "qualify"]),
        (["map", "show", "--config", "b.toml"], ["--config", "b.toml", "map", "show"]),
        (["map", "show", "--config=b.toml"], ["--config=b.toml", "map", "show"]),
        (["push-lead", "--file", "-", "--", "--json"], ["push-lead", "--file", "-", "--", "--json"]),
        (["history", "--limit", "5"], ["history", "--limit", "5"]),
    ],
)
def test_global_options_move_in_front_of_the_command(argv, expected):
    assert hoist_global_options(argv) == expected


def test_json_after_the_command_gives_the_json_object(capsys):
    import json

    from stsync.cli.app import run

    assert run(["map", "show", "--json"]) == 0
    assert "leads" in json.dumps(json.loads(capsys.readouterr().out))
