"""`stsync sandbox`: serves until Ctrl-C, prints how to point stsync at it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from contract import raw_post

from stsync.sandbox import RemoteSandbox


def read_json_object(stream) -> dict:
    """The --json object: indented, closed by a "}" line (the process keeps running after it)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            return json.loads("".join(lines))
    raise AssertionError("the sandbox ended before printing its JSON object: " + "".join(lines))


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
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=os.environ.copy(),
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
        state = RemoteSandbox(info["url"]).snapshot()
        assert len(state["servicetitan"]["customers"]) == 5
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
    assert f"export STSYNC_ST_AUTH_URL={info['url']}" in stderr
    assert "stsync connect --environment integration" in stderr and "Ctrl-C" in stderr


def test_a_busy_port_or_bad_option_is_a_usage_error(sandbox, cli):
    port = sandbox.base_url.rsplit(":", 1)[1]
    result = cli("sandbox", "--port", port)
    assert result.exit_code == 2, str(result)
    assert "--port" in result.stderr
    result = cli("sandbox", "--port", "0", "--error-rate", "1.5")
    assert result.exit_code == 2 and "--error-rate" in result.stderr
