"""`stsync connect` / `disconnect` from scripts: the real CLI in a child process (no terminal)
against the sandbox.

Provisioning with ``--secrets-from-stdin``; the secret store remembered in the config across
``connect``, ``disconnect`` and a plain reconnect (with a keyring that cannot be used); one
config file, one connection — two ``config.toml`` never share secrets; "already
disconnected"; "not connected" rather than blaming a store; usage errors before anything is
sent; a tenant the app cannot access told apart from a wrong Booking Provider Value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stsync.storage.config import load_config
from stsync.storage.paths import ConnectionPaths
from stsync.storage.secrets import SecretStore

pytestmark = pytest.mark.e2e


def identity_args(sb) -> list[str]:
    """``connect`` with every setting as an option and no secret."""
    args = sb.connect_args()
    for flag in ("--client-secret", "--app-key", "--rf-api-key"):
        at = args.index(flag)
        del args[at : at + 2]
    return args


def store_of(config: Path) -> SecretStore:
    return SecretStore(ConnectionPaths.for_config(config))


def test_secrets_from_stdin_for_provisioning_scripts(sandbox_env, cli_subprocess):
    sb = sandbox_env
    c = sb.credentials
    lines = (
        "# written by the provisioning script\n"
        "\n"
        f"STSYNC_ST_CLIENT_SECRET=  {c.client_secret}  \n"  # the env-var name; the value trimmed
        f"st_app_key={c.app_key}\n"
        f'export rf_api_key="{c.rf_api_key}"\r\n'  # an env file's line
    )
    result = cli_subprocess(*identity_args(sb), "--secrets-store", "file", "--secrets-from-stdin", input=lines)
    assert result.exit_code == 0, str(result)
    for secret in (c.client_secret, c.app_key, c.rf_api_key):
        assert secret not in result.stdout + result.stderr
    store = store_of(Path(os.environ["STSYNC_CONFIG"]))
    assert (store.get("st_client_secret"), store.get("st_app_key"), store.get("rf_api_key")) == (
        c.client_secret, c.app_key, c.rf_api_key,
    )  # fmt: skip

    # Rotation: the new secret alone on stdin; the settings and the other secrets are kept.
    rotated = sb.rotate_client_secret()
    again = cli_subprocess("connect", "--secrets-from-stdin", input=f"st_client_secret={rotated}\n")
    assert again.exit_code == 0, str(again)
    assert store.get("st_client_secret") == rotated and store.get("rf_api_key") == c.rf_api_key


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("PASSWORD=hunter2-value-9931", "'PASSWORD' is not a secret stsync knows"),
        ("hunter2-value-9931", "line 2: not NAME=value"),
        ("cs2.hunter2-value-9931=x", "line 2: it names not a secret"),
    ],
)
def test_unknown_lines_on_stdin_are_refused_without_their_values(sandbox_env, cli_subprocess, line, said):
    sb = sandbox_env
    sb.clear_request_log()
    result = cli_subprocess(*identity_args(sb), "--secrets-from-stdin", input=f"st_app_key=ak1.x\n{line}\n")
    assert result.exit_code == 2, str(result)
    assert said in result.stderr
    assert "hunter2-value-9931" not in result.stdout + result.stderr
    assert sb.request_log == [] and not Path(os.environ["STSYNC_CONFIG"]).exists()


def test_the_file_store_is_remembered_across_connect_disconnect_and_reconnect(sandbox_env, cli_subprocess, monkeypatch):
    sb = sandbox_env
    config = Path(os.environ["STSYNC_CONFIG"])
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")  # a box whose keyring cannot be used

    first = cli_subprocess(*sb.connect_args(), "--secrets-store", "file")
    assert first.exit_code == 0, str(first)
    assert 'store = "file"' in config.read_text()

    gone = cli_subprocess("disconnect", "--yes")
    assert gone.exit_code == 0, str(gone)
    assert "removed st_client_secret, st_app_key, rf_api_key" in gone.stderr
    assert load_config(config).secrets.store == "file"  # the choice outlives the secrets

    # No secrets now: a command that needs them says so, without blaming the locked keyring.
    needs_secrets = cli_subprocess("sync-customers", "--once")
    assert needs_secrets.exit_code == 3, str(needs_secrets)
    assert "not connected — run `stsync connect`" in needs_secrets.stderr
    assert "No usable secret store" not in needs_secrets.stderr

    again = cli_subprocess(*sb.connect_args())  # no --secrets-store: the config's file store
    assert again.exit_code == 0, str(again)
    assert f"secrets stored in {ConnectionPaths.for_config(config).secrets_file}" in again.stderr
    assert store_of(config).get("st_client_secret") == sb.credentials.client_secret
    assert cli_subprocess("validate", "--online").exit_code == 0


def test_the_keyring_store_knows_a_disconnected_connection_is_not_connected(sandbox_env, cli_subprocess, monkeypatch):
    sb = sandbox_env
    assert cli_subprocess(*sb.connect_args()).exit_code == 0
    assert cli_subprocess("disconnect", "--yes").exit_code == 0
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")  # locked later: nothing is in it anyway
    result = cli_subprocess("sync-customers", "--once")
    assert result.exit_code == 3 and "not connected — run `stsync connect`" in result.stderr, str(result)


def test_disconnect_twice_says_already_disconnected(connected, cli_subprocess):
    first = cli_subprocess("--json", "disconnect", "--yes")
    assert first.exit_code == 0 and first.json["already_disconnected"] is False, str(first)
    second = cli_subprocess("--json", "disconnect", "--yes")
    assert second.exit_code == 0, str(second)
    assert second.json["already_disconnected"] is True and second.json["removed_secrets"] == []
    human = cli_subprocess("disconnect")  # nothing to remove: nothing to confirm either
    assert human.exit_code == 0 and "is already disconnected" in human.stderr, str(human)


def test_two_config_toml_in_two_directories_are_two_connections_or_refused(
    sandbox_env, cli_subprocess, cli, isolated, monkeypatch
):
    sb = sandbox_env
    monkeypatch.delenv("STSYNC_CONFIG")
    first, second = isolated / "acme" / "config.toml", isolated / "globex" / "config.toml"
    first.parent.mkdir()
    second.parent.mkdir()
    assert cli_subprocess("--config", first, *sb.connect_args(), "--secrets-store", "file").exit_code == 0
    assert load_config(first).connection == "default"
    secrets_before = ConnectionPaths.for_config(first).secrets_file.read_bytes()

    refused = cli_subprocess("--json", "--config", second, *sb.connect_args(), "--secrets-store", "file")
    assert refused.exit_code == 3, str(refused)
    assert str(first.resolve()) in refused.stderr and str(second.resolve()) in refused.stderr
    assert "--connection NAME" in refused.stderr
    assert refused.json["error"]["type"] == "ConnectionInUse"
    assert not second.exists()
    assert ConnectionPaths.for_config(first).secrets_file.read_bytes() == secrets_before

    # A config.toml written by hand (no `connection` key) goes by "default" too: refused as well,
    # before it can read the first one's ledger or secrets.
    second.write_text(first.read_text().replace('connection = "default"', ""))
    history = cli("--config", second, "history")
    assert history.exit_code == 3 and str(first.resolve()) in history.stderr, str(history)

    named = cli("--config", second, *sb.connect_args(), "--secrets-store", "file", "--connection", "globex")
    assert named.exit_code == 0, str(named)
    assert load_config(second).connection == "globex"
    assert ConnectionPaths.for_config(second).state.name == "globex"
    assert ConnectionPaths.for_config(first).secrets_file.read_bytes() == secrets_before
    assert cli("--config", second, "history").exit_code == 0
    assert cli("--config", first, "history").exit_code == 0


def test_a_moved_config_keeps_its_connection(connected, cli, isolated, monkeypatch):
    config = Path(os.environ["STSYNC_CONFIG"])
    moved = isolated / "elsewhere" / "renamed.toml"
    moved.parent.mkdir()
    config.rename(moved)
    monkeypatch.setenv("STSYNC_CONFIG", str(moved))
    result = cli("--json", "disconnect", "--yes")
    assert result.exit_code == 0 and result.json["connection"] == "default", str(result)
    assert result.json["removed_secrets"] == ["st_client_secret", "st_app_key", "rf_api_key"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--environment", "staging"], "'staging' is not one of"),
        (["--tenant-id", "-1"], "'--tenant-id': Input should be greater than or equal to 1"),
        (["--campaign-id", "0"], "'--campaign-id': Input should be greater than or equal to 1"),
        (["--secrets-store", "vault"], "'vault' is not one of"),
        (["--connection", "../escape"], "is not a connection name"),
    ],
)
def test_usage_errors_come_before_anything_is_sent(sandbox_env, cli, args, said):
    sb = sandbox_env
    sb.clear_request_log()
    result = cli(*sb.connect_args(), *args)
    assert result.exit_code == 2, str(result)
    assert said in result.stderr
    assert "Verifying" not in result.stderr and sb.request_log == []


def test_a_tenant_the_app_cannot_access_is_not_a_wrong_booking_provider(sandbox_env, cli):
    sb = sandbox_env
    args = sb.connect_args()
    args[args.index("--tenant-id") + 1] = str(sb.credentials.tenant_id + 1)
    result = cli(*args, "--secrets-store", "file")
    assert result.exit_code == 4, str(result)
    assert f"refused access to tenant {sb.credentials.tenant_id + 1}" in result.stderr
    assert "Booking Provider Value" not in result.stderr
    wrong_bp = sb.connect_args()
    wrong_bp[wrong_bp.index("--booking-provider") + 1] = str(sb.credentials.booking_provider + 1)
    result = cli(*wrong_bp, "--secrets-store", "file")
    assert result.exit_code == 4 and "Booking Provider Value is incorrect" in result.stderr, str(result)


def test_connect_json_names_the_connection_and_each_check(sandbox_env, cli):
    result = cli("--json", *sandbox_env.connect_args(), "--secrets-store", "file")
    assert result.exit_code == 0, str(result)
    out = json.loads(result.stdout)
    assert out["connection"] == "default" and out["secrets_store"] == "file"
    assert [check["name"] for check in out["verification"]["checks"]] == [
        "ServiceTitan token", "ServiceTitan app key and tenant access", "Booking Provider Value", "Referral Factory campaign",
    ]  # fmt: skip
    assert all(check["status"] == "pass" for check in out["verification"]["checks"])
