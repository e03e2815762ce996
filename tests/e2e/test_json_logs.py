"""Logs a machine can read: `--log-format json`, `STSYNC_LOG_FORMAT` and `[logging] format`
write one JSON object per line — connection, command, run id and the record keys — with every
secret redacted; `serve` writes the same lines to stderr."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from stsync.logs import JsonFormatter, attach_file_handler, detach_handlers, get_logger, log_context, register_secret
from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths

pytestmark = pytest.mark.e2e
TOKEN = "json-logs-serve-token-0123456789"


def log_lines(isolated) -> list[dict]:
    text = ConnectionPaths.for_config(isolated / "config.toml").log_file.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line parses, or the test fails here


def secrets_of(sb) -> list[str]:
    creds = sb.credentials
    return [creds.client_secret, creds.app_key, creds.rf_api_key]


def test_push_lead_new_with_log_format_json_writes_one_object_per_line_with_its_keys(connected, cli, isolated):
    sb = connected
    ConnectionPaths.for_config(isolated / "config.toml").log_file.unlink()  # connect's own lines were text
    result = cli("--log-format", "json", "push-lead", "--new", "-vv")
    assert result.exit_code == 0, str(result)
    entries = log_lines(isolated)
    assert entries and all({"ts", "level", "logger", "pid", "message", "connection"} <= set(e) for e in entries)
    assert {e["connection"] for e in entries} == {"default"}
    assert all(e["command"] == "push-lead --new" and e["job"] == "push" for e in entries if "command" in e)
    in_run = [e for e in entries if "run_id" in e]
    assert in_run and len({e["run_id"] for e in in_run}) == 1
    booked = {b["externalId"] for b in sb.bookings()}
    assert booked and {e["external_id"] for e in entries if "external_id" in e} >= booked
    text = json.dumps(entries)
    for secret in secrets_of(sb):
        assert secret not in text
    # -vv logs HTTP traffic: bearer tokens and keys never appear in a JSON line either.
    assert "Bearer" not in text or "Bearer ***" in text


def test_the_config_and_the_environment_choose_json_and_the_option_wins(connected, cli, isolated, monkeypatch):
    path = isolated / "config.toml"
    log_file = ConnectionPaths.for_config(path).log_file
    config = load_config(path)
    config.logging.format = "json"
    save_config(config, path)
    log_file.unlink()
    assert cli("sync-customers", "--ongoing", "-vv").exit_code == 0
    entries = log_lines(isolated)
    assert any("customer_id" in e for e in entries) and all(e.get("command", "sync-customers --ongoing") == "sync-customers --ongoing" for e in entries)

    log_file.unlink()
    assert cli("--log-format", "text", "sync-customers", "--ongoing", "-vv").exit_code == 0
    assert log_file.read_text().strip() and not log_file.read_text().lstrip().startswith("{")

    config.logging.format = "text"
    save_config(config, path)
    monkeypatch.setenv("STSYNC_LOG_FORMAT", "json")
    log_file.unlink()
    assert cli("sync-customers", "--ongoing", "-vv").exit_code == 0
    assert log_lines(isolated)


def test_a_json_line_is_redacted_as_a_whole(isolated):
    register_secret("rf-live-SECRET-0123456789")
    paths = ConnectionPaths.for_config(isolated / "x.toml")
    attach_file_handler(paths, log_format="json")
    try:
        with log_context(external_id="rf-live-SECRET-0123456789", run_id=7):
            get_logger("stsync.test").warning("key %s refused", "rf-live-SECRET-0123456789")
            try:
                raise ValueError("rf-live-SECRET-0123456789")
            except ValueError:
                get_logger("stsync.test").exception("boom")
    finally:
        detach_handlers()
    entries = [json.loads(line) for line in paths.log_file.read_text().splitlines()]
    assert [e["level"] for e in entries] == ["warning", "error"]
    assert entries[0]["message"] == "key *** refused" and entries[0]["external_id"] == "***" and entries[0]["run_id"] == 7
    assert "ValueError: ***" in entries[1]["message"]
    assert "rf-live-SECRET" not in paths.log_file.read_text()
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "stsync"})), str)


def test_serve_with_json_logs_writes_only_json_lines_to_stderr(connected, isolated):
    sb = connected
    env = {**os.environ, "STSYNC_WEBHOOK_TOKEN": TOKEN, "STSYNC_LOG_FORMAT": "json"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stsync", "serve", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        first = json.loads(process.stderr.readline())
        assert first["level"] == "info" and first["command"] == "serve"
        deadline = time.monotonic() + 30
        url = None
        lines = [first]
        while url is None and time.monotonic() < deadline:
            entry = json.loads(process.stderr.readline())
            lines.append(entry)
            if "listening on" in entry["message"] and "/hooks/" in entry["message"]:
                url = entry["message"].split("listening on ", 1)[1].split("<token>")[0]
        assert url, lines
        [user] = sb.add_leads(1)
        answer = httpx.post(url + TOKEN + "/lead-created", json={"email": user["email"], "code": user["code"], "first_name": user["first_name"]}, timeout=10)
        assert answer.status_code == 202, answer.text
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    entries = lines + [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert any(e.get("delivery") for e in entries), "the delivery's key is on its lines"
    assert any("serve stopped" in e["message"] for e in entries)
    for secret in [*secrets_of(sb), TOKEN]:
        assert secret not in json.dumps(entries)
