"""Hermetic tests: every test gets its own config, state, keyring and environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

import keyring  # noqa: E402
from isolated_keyring import FileKeyring  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"

# sandbox, make_sandbox, sandbox_env, cli, cli_subprocess, connected; make_connection
# (tests/support is on sys.path)
pytest_plugins = ["stsync_fixtures", "connection_fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first: on two cores the suite ends when its last long test does,
    so the long ones start at once instead of last (the order is otherwise unchanged)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Own config/state dirs, an isolated keyring, a clean STSYNC_* environment, own cwd."""
    for name in list(os.environ):
        if name.startswith("STSYNC_") or name in ("PYTHON_KEYRING_BACKEND", "NO_COLOR"):
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("STSYNC_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("STSYNC_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("STSYNC_TEST_KEYRING", str(tmp_path / "keyring.json"))
    # Subprocesses (the real CLI, kill -9 tests) load the same isolated backend.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "isolated_keyring.FileKeyring")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.chdir(tmp_path)
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    yield tmp_path
    keyring.set_keyring(previous)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository (API contracts and ServiceTitan's specs)."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside the repository")
    return SHARED
