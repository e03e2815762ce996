"""storage/secrets.py: env → keyring → file, the unusable-keyring error, the 0600 file store."""

from __future__ import annotations

import json
import os
import stat

import keyring
import pytest
from keyring.backends import fail, null

from stsync.credentials import SECRET_NAMES, SECRETS
from stsync.errors import ConfigError, SecretStoreUnavailable, UsageError
from stsync.logs import redact
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore

CLIENT_SECRET = "cs-keyring-3f9a1c"
FILE_SECRET = "cs-file-77b2e0"
ENV_SECRET = "cs-env-c41d88"


@pytest.fixture
def paths(tmp_path) -> ConnectionPaths:
    return ConnectionPaths.for_config(tmp_path / "acme.toml")


@pytest.fixture
def store(paths) -> SecretStore:
    return SecretStore(paths)


def _keyring_entries(isolated) -> dict:
    path = isolated / "keyring.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _lock_keyring(monkeypatch) -> None:
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")


def _assert_three_remedies(error: SecretStoreUnavailable, *, locked: bool = False) -> None:
    assert error.exit_code == 3
    hint = error.hint
    for secret in SECRETS:
        assert secret.env_var.name in hint
    if locked:  # the fix is unlocking it, first, with the command that does it on a headless box
        assert "is locked" in str(error) and error.locked
        assert hint.startswith("1. unlock the keyring") and "gnome-keyring-daemon --replace --unlock" in hint
    else:
        assert "PYTHON_KEYRING_BACKEND" in hint and "keyring" in hint and not error.locked
    assert "stsync connect --secrets-store file" in hint
    assert hint.index("1.") < hint.index("2.") < hint.index("3.")


def test_lookup_order_env_then_keyring_then_file(store, paths, monkeypatch):
    store.set("st_client_secret", FILE_SECRET, store="file")
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (FILE_SECRET, "file")
    # A keyring entry written behind stsync's back outranks the file.
    keyring.set_password("stsync", "acme/st_client_secret", CLIENT_SECRET)
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (CLIENT_SECRET, "keyring")
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", ENV_SECRET)
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (ENV_SECRET, "env")
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", "")  # empty = not set
    assert store.get("st_client_secret") == CLIENT_SECRET
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", " \t\r\n")  # blank = not set
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (CLIENT_SECRET, "keyring")
    monkeypatch.setenv("STSYNC_ST_CLIENT_SECRET", f"  {ENV_SECRET}\r\n")  # a CRLF env file, a pasted space
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (ENV_SECRET, "env")


def test_keyring_entry_is_per_connection_and_name(store, isolated):
    assert store.set("rf_api_key", "rf-key-0001") is None
    assert _keyring_entries(isolated) == {"stsync\0acme/rf_api_key": "rf-key-0001"}
    other = SecretStore(ConnectionPaths.for_config(isolated / "other.toml"))
    assert other.get("rf_api_key") is None
    assert store.get("rf_api_key") == "rf-key-0001"


def test_missing_everywhere_is_none_and_require_says_what_to_do(store):
    assert store.get("st_app_key") is None and store.source("st_app_key") is None
    with pytest.raises(ConfigError) as caught:
        store.require("st_app_key")
    assert "STSYNC_ST_APP_KEY" in caught.value.hint and "stsync connect" in caught.value.hint
    assert caught.value.exit_code == 3


def test_unknown_names_and_empty_values_are_refused(store):
    with pytest.raises(ValueError):
        store.get("password")
    with pytest.raises(UsageError):
        store.set("rf_api_key", "")
    with pytest.raises(UsageError):
        store.set("rf_api_key", "x-1234", store="vault")


def test_locked_keyring_names_the_three_remedies(store, monkeypatch):
    _lock_keyring(monkeypatch)
    with pytest.raises(SecretStoreUnavailable) as caught:
        store.get("st_client_secret")
    assert "KeyringLocked" in str(caught.value)
    _assert_three_remedies(caught.value, locked=True)
    with pytest.raises(SecretStoreUnavailable):
        store.require("st_client_secret")
    assert store.source("st_client_secret") is None  # asking where never raises


def test_locked_keyring_is_no_problem_when_env_or_file_has_it(store, monkeypatch):
    store.set("st_app_key", FILE_SECRET, store="file")
    _lock_keyring(monkeypatch)
    assert store.get("st_app_key") == FILE_SECRET
    monkeypatch.setenv("STSYNC_RF_API_KEY", ENV_SECRET)
    assert store.get("rf_api_key") == ENV_SECRET


def test_storing_in_a_locked_keyring_fails_and_never_falls_back(store, paths, monkeypatch):
    _lock_keyring(monkeypatch)
    with pytest.raises(SecretStoreUnavailable) as caught:
        store.set("st_client_secret", CLIENT_SECRET)
    _assert_three_remedies(caught.value, locked=True)
    assert CLIENT_SECRET not in str(caught.value) + caught.value.hint
    assert not paths.secrets_file.exists()
    # Opting in to the file store works, with a warning about the locked keyring's old copy.
    warning = store.set("st_client_secret", CLIENT_SECRET, store="file")
    assert "plain text" in warning and "older copy" in warning
    assert store.get("st_client_secret") == CLIENT_SECRET


@pytest.mark.parametrize("backend", [fail.Keyring, null.Keyring])
def test_fail_and_null_backends_are_unusable(store, backend):
    keyring.set_keyring(backend())
    with pytest.raises(SecretStoreUnavailable, match="no OS keyring") as caught:
        store.get("rf_api_key")
    _assert_three_remedies(caught.value)
    with pytest.raises(SecretStoreUnavailable):
        store.set("rf_api_key", "rf-key-0001")
    assert store.describe()["keyring_usable"] is False
    # Nothing can be stored in no keyring: disconnect still works.
    store.set("rf_api_key", "rf-key-0001", store="file")
    assert store.delete_all() == ["rf_api_key"]


def test_file_store_is_0600_from_the_start(store, paths):
    previous = os.umask(0)  # even a permissive umask must not widen it
    try:
        warning = store.set("st_client_secret", FILE_SECRET, store="file")
    finally:
        os.umask(previous)
    assert str(paths.secrets_file) in warning
    assert stat.S_IMODE(paths.secrets_file.stat().st_mode) == 0o600
    assert json.loads(paths.secrets_file.read_text()) == {"st_client_secret": FILE_SECRET}
    assert [p.name for p in paths.state.iterdir() if p.name.endswith(".tmp")] == []


def test_each_store_removes_the_other_copy(store, paths, isolated):
    store.set("st_client_secret", CLIENT_SECRET)
    store.set("st_client_secret", FILE_SECRET, store="file")
    assert _keyring_entries(isolated) == {}  # an old keyring value would shadow the new file one
    assert store.get("st_client_secret") == FILE_SECRET
    store.set("st_client_secret", CLIENT_SECRET, store="keyring")
    assert not paths.secrets_file.exists()  # the plain-text copy does not outlive the move
    assert (store.get("st_client_secret"), store.source("st_client_secret")) == (CLIENT_SECRET, "keyring")


def test_damaged_file_store_is_a_config_error(store, paths):
    paths.ensure_state()
    paths.secrets_file.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        store.get("st_client_secret")


def test_delete_all_removes_keyring_and_file_but_not_env(store, paths, isolated, monkeypatch):
    store.set("st_client_secret", CLIENT_SECRET)
    store.set("st_app_key", "app-key-9981", store="file")
    monkeypatch.setenv("STSYNC_RF_API_KEY", ENV_SECRET)
    assert store.delete_all() == ["st_client_secret", "st_app_key"]
    assert _keyring_entries(isolated) == {}
    assert not paths.secrets_file.exists()
    assert store.get("rf_api_key") == ENV_SECRET
    assert store.delete_all() == []


def test_delete_all_with_a_locked_keyring_cleans_the_file_then_fails(store, paths, monkeypatch):
    store.set("st_app_key", "app-key-9981", store="file")
    _lock_keyring(monkeypatch)
    with pytest.raises(SecretStoreUnavailable) as caught:
        store.delete_all()
    assert not paths.secrets_file.exists()
    assert "removed from the file store: st_app_key" in str(caught.value)
    assert "unlock the OS keyring" in caught.value.hint and "disconnect" in caught.value.hint


def test_describe_never_contains_a_value(store, monkeypatch):
    store.set("st_client_secret", CLIENT_SECRET)
    store.set("st_app_key", FILE_SECRET, store="file")
    monkeypatch.setenv("STSYNC_RF_API_KEY", ENV_SECRET)
    described = store.describe()
    assert described["backend"] == "isolated_keyring.FileKeyring" == store.backend_name()
    assert described["keyring_usable"] is True and described["file_mode"] == "0o600"
    assert described["keyring_locked"] is False
    assert {name: entry["source"] for name, entry in described["secrets"].items()} == {
        "st_client_secret": "keyring",
        "st_app_key": "file",
        "rf_api_key": "env",
    }
    text = json.dumps(described)
    for secret in (CLIENT_SECRET, FILE_SECRET, ENV_SECRET):
        assert secret not in text


def test_describe_with_a_locked_keyring(store, monkeypatch):
    _lock_keyring(monkeypatch)
    described = store.describe()
    assert described["keyring_usable"] is False and "KeyringLocked" in described["keyring_problem"]
    assert described["keyring_locked"] is True
    assert all(entry["source"] is None for entry in described["secrets"].values())
    assert set(described["secrets"]) == set(SECRET_NAMES)


def test_every_loaded_secret_is_redacted_from_logs(store, monkeypatch):
    keyring.set_password("stsync", "acme/st_client_secret", "kr-secret-5512")
    monkeypatch.setenv("STSYNC_ST_APP_KEY", "env-secret-6613")
    SecretStore(store.paths).set("rf_api_key", "file-secret-7714", store="file")
    assert store.get("st_client_secret") and store.get("st_app_key") and store.get("rf_api_key")
    line = redact("kr-secret-5512 env-secret-6613 file-secret-7714")
    assert line == "*** *** ***"


def test_the_file_store_never_asks_the_keyring(tmp_path, isolated, monkeypatch):
    config = tmp_path / "acme.toml"
    config.write_text('connection = "acme"\n[secrets]\nstore = "file"\n')
    paths = ConnectionPaths.for_config(config)
    assert paths.secrets_store == "file"
    keyring.set_password("stsync", "acme/st_app_key", "stale-keyring-copy-1")
    store = SecretStore(paths)
    assert store.get("st_app_key") is None  # an old keyring copy never shadows the chosen store
    store.set("st_app_key", FILE_SECRET, store="file")
    _lock_keyring(monkeypatch)
    assert store.get("st_app_key") == FILE_SECRET
    assert store.get("rf_api_key") is None  # missing, not "no usable secret store"
    assert store.describe()["store"] == "file" and store.describe()["keyring_usable"] is None
    assert store.delete_all() == ["st_app_key"]  # the locked keyring is not this store's business


def test_a_connection_known_to_have_no_secrets_is_not_connected(store, paths, monkeypatch):
    from stsync.storage.registry import Registry

    paths.config.write_text("")
    _lock_keyring(monkeypatch)
    with pytest.raises(SecretStoreUnavailable):  # nothing known: the keyring may hold them
        store.get("st_client_secret")
    Registry().record_secrets(paths, None)  # what `disconnect` records
    assert store.get("st_client_secret") is None
    with pytest.raises(ConfigError) as caught:
        store.require("st_client_secret")
    assert str(caught.value).startswith("not connected — run `stsync connect`")
    assert not isinstance(caught.value, SecretStoreUnavailable)
    assert "STSYNC_ST_CLIENT_SECRET" in caught.value.hint and "API Application Access" in caught.value.hint


@pytest.mark.parametrize("padded", [f"{CLIENT_SECRET}\r\n", f"  {CLIENT_SECRET}\n", f"\t{CLIENT_SECRET} "])
def test_every_store_gives_the_secret_without_surrounding_whitespace(store, paths, monkeypatch, padded):
    # Each store as another tool might have written it, a pasted newline and all.
    keyring.set_password("stsync", f"{paths.name}/st_client_secret", padded)
    assert store.get("st_client_secret") == CLIENT_SECRET
    keyring.delete_password("stsync", f"{paths.name}/st_client_secret")
    paths.ensure_state()
    paths.secrets_file.write_text(json.dumps({"st_app_key": padded}))
    os.chmod(paths.secrets_file, 0o600)
    assert store.get("st_app_key") == CLIENT_SECRET
    monkeypatch.setenv("STSYNC_RF_API_KEY", padded)
    assert store.get("rf_api_key") == CLIENT_SECRET


def test_a_blank_stored_secret_is_missing(store, paths):
    keyring.set_password("stsync", f"{paths.name}/st_client_secret", " \r\n")
    assert store.get("st_client_secret") is None


def test_a_secret_is_stored_trimmed(store, paths, isolated):
    store.set("rf_api_key", f"{CLIENT_SECRET}\r\n", store="file")
    assert json.loads(paths.secrets_file.read_text())["rf_api_key"] == CLIENT_SECRET
    store.set("rf_api_key", f" {CLIENT_SECRET}\n", store="keyring")
    assert keyring.get_password("stsync", f"{paths.name}/rf_api_key") == CLIENT_SECRET
    with pytest.raises(UsageError):
        store.set("rf_api_key", "\r\n")
