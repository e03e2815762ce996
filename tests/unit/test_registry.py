"""storage/registry.py: one config file per connection name; stale owners give way; what is
known about where the secrets are."""

from __future__ import annotations

import json
import stat

import pytest

from stsync.errors import ConfigError, ConnectionInUse
from stsync.storage.paths import ConnectionPaths, state_root
from stsync.storage.registry import UNKNOWN, Registry, registry_path


def config(path, connection: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'connection = "{connection}"\n' if connection else "")
    return ConnectionPaths.for_config(path)


def test_a_name_is_owned_by_one_config_file(isolated):
    first = config(isolated / "a" / "config.toml")
    second = config(isolated / "b" / "config.toml")
    assert first.name == second.name == "default"
    registry = Registry()
    registry.claim(first)
    registry.claim(first)  # claiming again is nothing
    with pytest.raises(ConnectionInUse) as caught:
        registry.claim(second)
    error = caught.value
    assert error.exit_code == 3 and error.owner == str(first.config.resolve()) and error.config == str(second.config.resolve())
    assert str(first.config.resolve()) in str(error) and str(second.config.resolve()) in str(error)
    assert "--connection NAME" in error.hint
    assert registry.conflict("default", second.config) == str(first.config.resolve())
    assert registry.conflict("default", first.config) is None


def test_the_registry_file_is_private(isolated):
    Registry().claim(config(isolated / "acme.toml"))
    path = registry_path()
    assert path.parent == state_root()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["connections"]["acme"]["config"] == str((isolated / "acme.toml").resolve())


def test_an_owner_that_is_gone_or_renamed_gives_way_and_a_moved_config_keeps_what_was_known(isolated):
    registry = Registry()
    old = config(isolated / "old" / "acme.toml", "acme")
    registry.claim(old)
    registry.record_secrets(old, "file")
    moved = isolated / "new" / "acme-hvac.toml"
    moved.parent.mkdir()
    old.config.rename(moved)
    now = ConnectionPaths.for_config(moved)
    assert now.name == "acme"  # the key names it, not the file
    registry.claim(now)
    assert registry.owner("acme") == str(moved.resolve())
    assert registry.secrets_of("acme") == "file"

    # The owner now goes by another name: its old one is free.
    moved.write_text('connection = "acme-hvac"\n')
    other = config(isolated / "other.toml", "acme")
    registry.claim(other)
    assert registry.owner("acme") == str(other.config.resolve())


def test_what_is_known_about_the_secrets(isolated):
    registry = Registry()
    paths = config(isolated / "acme.toml")
    assert registry.secrets_of("acme") == UNKNOWN  # no connect has said
    registry.claim(paths)
    assert registry.secrets_of("acme") == UNKNOWN  # claiming says nothing about secrets
    registry.record_secrets(paths, "keyring")
    assert registry.secrets_of("acme") == "keyring"
    registry.record_secrets(paths, None)
    assert registry.secrets_of("acme") is None
    registry.release("acme", paths.config)
    assert registry.owner("acme") is None


def test_a_damaged_registry_is_a_config_error_and_is_kept(isolated):
    Registry().claim(config(isolated / "acme.toml"))
    registry_path().write_text("{not json")
    with pytest.raises(ConfigError, match="connection registry .* is damaged") as caught:
        Registry().claim(config(isolated / "other.toml"))
    assert "delete it" in caught.value.hint
    assert registry_path().read_text() == "{not json"
    assert Registry().secrets_of("acme") == UNKNOWN  # a question on the way never fails


def test_connect_value_names_are_plain(isolated):
    from stsync.storage.paths import suggested_connection_name, valid_connection_name

    assert valid_connection_name("acme-hvac.2") and not valid_connection_name("../x") and not valid_connection_name(".hidden")
    assert suggested_connection_name(isolated / "Acme HVAC (new).toml") == "Acme-HVAC-new"
    assert suggested_connection_name(isolated / "config.toml") == "default"
