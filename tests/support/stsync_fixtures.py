"""pytest fixtures for end-to-end tests: a running sandbox and an isolated, configured stsync.

Registered from ``tests/conftest.py`` (``pytest_plugins = ["stsync_fixtures"]``). Every
test still gets the autouse ``isolated`` environment (own config, state dir, keyring, cwd),
so a configured connection never leaks between tests.

- ``sandbox``: a started ``Sandbox(seed=1, customers=40, leads=8)``, stopped after the test.
- ``make_sandbox(**kw)``: the same with other settings (each stopped after the test).
- ``sandbox_env``: ``sandbox`` with ``STSYNC_ST_AUTH_URL`` / ``STSYNC_ST_API_URL`` /
  ``STSYNC_RF_API_URL`` pointing at it.
- ``cli(*args) -> CliResult``: the real CLI in-process (``stsync.cli.app.run``), output
  captured; ``result.json`` parses stdout.
- ``cli_subprocess(*args, timeout=60) -> CliResult``: ``python -m stsync`` in a child
  process with the current (isolated) environment.
- ``connected``: ``sandbox_env`` plus a successful ``stsync connect … --secrets-store file``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

DEFAULT_SANDBOX = {"seed": 1, "customers": 40, "leads": 8}


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        """stdout parsed as JSON (the command's ``--json`` object)."""
        try:
            return json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(f"stdout is not JSON ({exc}):\n{self.stdout}\n--- stderr ---\n{self.stderr}") from None

    def __str__(self) -> str:  # shown by a failing assert: what the user would have seen
        return f"exit {self.exit_code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Any]]:
    from stsync.sandbox import Sandbox

    started: list[Sandbox] = []

    def make(**settings: Any) -> Sandbox:
        sb = Sandbox(**{**DEFAULT_SANDBOX, **settings}).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
    for sb in started:
        # A sandbox bug must not hide behind a client's error handling.
        assert not sb.internal_errors, "the sandbox failed internally:\n" + "\n".join(sb.internal_errors)


@pytest.fixture
def sandbox(make_sandbox):
    return make_sandbox()


@pytest.fixture
def sandbox_env(sandbox, monkeypatch: pytest.MonkeyPatch):
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    def run(*args: str) -> CliResult:
        from stsync.cli.app import run as run_cli

        capsys.readouterr()  # drop whatever the test printed before
        code = run_cli([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli_subprocess() -> Callable[..., CliResult]:
    def run(*args: str, timeout: float = 60, input: str | None = None) -> CliResult:
        completed = subprocess.run(
            [sys.executable, "-m", "stsync", *[str(a) for a in args]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        return CliResult(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture
def connected(sandbox_env, cli):
    result = cli(*sandbox_env.connect_args(), "--secrets-store", "file")
    assert result.exit_code == 0, str(result)
    return sandbox_env
