"""Credentials go only where the configuration points, and never in clear text over the
network: a plain http:// endpoint that is not this machine is refused (exit 3, with the https
fix) — from the config or from STSYNC_*_URL — before anything is sent; loopback (the sandbox,
the tests) stays allowed."""

from __future__ import annotations

import pytest

from stsync.errors import ConfigError
from stsync.storage.config import default_config, parse_config, resolve_endpoints
from stsync.storage.config_writer import save_config
from stsync.urls import https_fix, is_loopback_host, plain_http_elsewhere


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "api.localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["example.com", "10.0.0.1", "192.168.1.2", "0.0.0.0", "::", "localhost.example.com", "", None])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback_host(host)


def test_which_urls_are_plain_http_elsewhere():
    assert plain_http_elsewhere("http://api.example.com") and plain_http_elsewhere("HTTP://10.1.2.3:8080/x")
    assert not plain_http_elsewhere("https://api.example.com")
    assert not plain_http_elsewhere("http://127.0.0.1:8765/api/v2") and not plain_http_elsewhere("http://[::1]:9/")
    assert https_fix("http://api.example.com:8080/v2") == "https://api.example.com:8080/v2"


@pytest.mark.parametrize(
    "section, key",
    [("servicetitan", "auth_url"), ("servicetitan", "api_url"), ("referral_factory", "api_url"), ("notify", "webhook_url"), ("notify", "ping_url")],
)
def test_a_plain_http_url_in_the_config_is_refused_with_its_key_path_and_the_fix(section, key):
    with pytest.raises(ConfigError) as caught:
        parse_config({section: {key: "http://remote.example.com/x"}})
    assert caught.value.key_path == f"{section}.{key}"
    assert "must use https" in str(caught.value) and "'https://remote.example.com/x'" in str(caught.value)


def test_loopback_http_and_https_urls_are_accepted():
    config = parse_config({
        "servicetitan": {"auth_url": "http://127.0.0.1:8765", "api_url": "https://api.example.com"},
        "referral_factory": {"api_url": "http://localhost:8765/api/v2"},
        "notify": {"webhook_url": "http://[::1]:9000/hook", "ping_url": "https://hc-ping.com/key/{job}"},
    })
    endpoints = resolve_endpoints(config)
    assert endpoints.st_auth_url == "http://127.0.0.1:8765" and endpoints.rf_api_url == "http://localhost:8765/api/v2"


@pytest.mark.parametrize("variable", ["STSYNC_ST_AUTH_URL", "STSYNC_ST_API_URL", "STSYNC_RF_API_URL"])
def test_a_plain_http_url_in_the_environment_is_refused_naming_the_variable(variable, monkeypatch):
    monkeypatch.setenv(variable, "http://203.0.113.7:8080")
    with pytest.raises(ConfigError) as caught:
        resolve_endpoints(default_config())
    assert f"the environment variable {variable} is a plain http URL (http://203.0.113.7:8080)" in str(caught.value)
    assert caught.value.exit_code == 3 and "https://203.0.113.7:8080" in caught.value.hint


def test_a_command_exits_3_before_sending_anything(isolated, monkeypatch, cli_subprocess):
    save_config(default_config(tenant_id=1, client_id="cid.x", booking_provider=2, campaign_id=3), isolated / "config.toml")
    for name, value in {"STSYNC_ST_CLIENT_SECRET": "cs-0123456789", "STSYNC_ST_APP_KEY": "ak1.0123456789",
                        "STSYNC_RF_API_KEY": "rf-0123456789"}.items():
        monkeypatch.setenv(name, value)
    # Nothing listens there: had a request been sent, the error would be a connection failure (exit 6).
    monkeypatch.setenv("STSYNC_RF_API_URL", "http://198.51.100.1:9/api/v2")
    result = cli_subprocess("push-lead", "--new", timeout=60)
    assert result.exit_code == 3, str(result)
    said = " ".join(result.stderr.split())
    assert "STSYNC_RF_API_URL is a plain http URL" in said and "use https (https://198.51.100.1:9/api/v2)" in said
    assert "Traceback" not in result.stderr
