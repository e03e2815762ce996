"""`stsync sandbox`: serves until Ctrl-C, prints how to point stsync at it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

from contract import raw_post

from stsync.sandbox import RemoteSandbox, Variants
from stsync.sandbox.variants import describe


def read_json_object(stream) -> dict:
    """The --json object: indented, closed by a "}" line (the process keeps running after it)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            return json.loads("".join(lines))
    raise AssertionError("the sandbox ended before printing its JSON object: " + "".join(lines))


def connect_args(creds: dict) -> list[str]:
    return [
        "connect",
        "--environment", "integration",
        "--tenant-id", str(creds["tenant_id"]),
        "--client-id", creds["client_id"],
        "--client-secret", creds["client_secret"],
        "--app-key", creds["app_key"],
        "--booking-provider", str(creds["booking_provider"]),
        "--rf-api-key", creds["rf_api_key"],
        "--campaign-id", str(creds["campaign_id"]),
    ]  # fmt: skip


def test_sandbox_command_serves_until_ctrl_c():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stsync",
            "--json",
            "sandbox",
            "--port",
            "0",
            "--seed",
            "3",
            "--customers",
            "5",
            "--leads",
            "2",
            "--bookings",
            "12",
            "--variant",
            "rf-cursor-paging",
            "--variant",
            "st-429=bare",
            "--maintenance-rate",
            "0.25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "40"},  # a narrow terminal must not break the lines to copy
    )
    try:
        info = read_json_object(process.stdout)
        assert info["env"]["STSYNC_RF_API_URL"] == info["url"] + "/api/v2"
        creds = info["credentials"]
        assert set(creds) >= {
            "tenant_id",
            "client_id",
            "client_secret",
            "app_key",
            "booking_provider",
            "rf_api_key",
            "campaign_id",
        }
        assert info["secret_env"]["STSYNC_RF_API_KEY"] == creds["rf_api_key"]
        remote = RemoteSandbox(info["url"])
        state = remote.snapshot()
        assert len(state["servicetitan"]["bookings"]) == 12
        assert remote.variants() == Variants(rf_cursor_paging=True, st_429="bare")
        assert info["variants"] == ["rf-cursor-paging", "st-429=bare"]
        assert remote.faults().maintenance_rate == 0.25
        assert info["admin"] == info["url"] + "/_sandbox/"
        token = raw_post(
            info["env"]["STSYNC_ST_AUTH_URL"] + "/connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": creds["client_id"],
                "client_secret": creds["client_secret"],
            },
        )
        assert token.status_code == 200
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    lines = stderr.splitlines()
    assert f"  export STSYNC_ST_AUTH_URL={info['url']}" in lines
    # The connect line is whole on one line at 40 columns, ready to copy.
    connect = next(line for line in lines if line.startswith("  stsync connect"))
    assert shlex.split(connect) == ["stsync", *connect_args(creds)]
    assert "Ctrl-C" in stderr and "/_sandbox/" in stderr


def test_a_busy_port_or_bad_option_is_a_usage_error(sandbox, cli):
    port = sandbox.base_url.rsplit(":", 1)[1]
    result = cli("sandbox", "--port", port)
    assert result.exit_code == 2, str(result)
    assert "--port" in result.stderr
    result = cli("sandbox", "--port", "0", "--error-rate", "1.5")
    assert result.exit_code == 2 and "--error-rate" in result.stderr


def test_variant_names_are_checked(cli):
    for bad in ("rf-cursor", "lookup-lag=soon", "st-429=loud"):
        result = cli("sandbox", "--port", "0", "--variant", bad)
        assert result.exit_code == 2, str(result)
        assert "--variant" in result.stderr


def test_the_help_lists_every_variant(cli, monkeypatch):
    from stsync.cli.sandbox import VARIANTS

    assert list(VARIANTS) == describe()
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("sandbox", "--help")
    assert result.exit_code == 0
    for spelled, text in VARIANTS:
        assert f"{spelled}: {text}" in result.stdout, spelled
