"""envvars + credentials: one table of STSYNC_* variables, one precedence, blank = unset, and
every copy of a name (README, SPEC, the sandbox's own) agreeing with the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stsync import credentials, envvars
from stsync.storage.config import default_config, resolve_endpoints
from stsync.storage.paths import default_config_path, resolve_config_path, state_root

SRC = Path(__file__).resolve().parents[2] / "src" / "stsync"
README = Path(__file__).resolve().parents[2] / "README.md"
NAME = re.compile(r"\bSTSYNC_[A-Z][A-Z_]*[A-Z]\b")


def test_the_precedence_is_option_then_environment_then_config_then_default():
    variable = envvars.ST_API_URL
    env = {variable.name: "https://env.example"}
    assert envvars.resolve(variable, option="https://opt.example", configured="https://cfg.example", default="d", environ=env) == "https://opt.example"
    assert envvars.resolve(variable, configured="https://cfg.example", default="d", environ=env) == "https://env.example"
    assert envvars.resolve(variable, configured="https://cfg.example", default="d", environ={}) == "https://cfg.example"
    assert envvars.resolve(variable, default="d", environ={}) == "d"
    assert envvars.resolve(variable, environ={}) is None


@pytest.mark.parametrize("blank", ["", " ", "\t", "\r\n", " \n "])
def test_a_blank_value_counts_as_unset_at_every_level(blank):
    variable = envvars.ST_AUTH_URL
    assert envvars.read(variable, {variable.name: blank}) is None
    assert envvars.resolve(variable, option=blank, configured=blank, default="fallback", environ={variable.name: blank}) == "fallback"
    assert envvars.resolve(variable, configured="https://cfg.example", environ={variable.name: blank}) == "https://cfg.example"


def test_a_value_is_read_without_surrounding_whitespace():
    variable = envvars.RF_API_KEY
    assert envvars.read(variable, {variable.name: "  rf-key 42\r\n"}) == "rf-key 42"


def test_blank_endpoint_variables_fall_back_to_the_config_then_the_environment_default(monkeypatch):
    config = default_config()
    config.servicetitan.api_url = "https://api.configured.example/"
    monkeypatch.setenv("STSYNC_ST_API_URL", "   ")
    monkeypatch.setenv("STSYNC_ST_AUTH_URL", "")
    monkeypatch.setenv("STSYNC_RF_API_URL", " http://127.0.0.1:9/api/v2/\n")
    endpoints = resolve_endpoints(config)
    assert endpoints.st_api_url == "https://api.configured.example"
    assert endpoints.st_auth_url == "https://auth.servicetitan.io"
    assert endpoints.rf_api_url == "http://127.0.0.1:9/api/v2"


def test_blank_path_variables_fall_back_to_the_platform_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("STSYNC_CONFIG", " \n")
    monkeypatch.setenv("STSYNC_STATE_DIR", "")
    assert resolve_config_path(None) == default_config_path()
    assert resolve_config_path(str(tmp_path / "acme.toml")) == tmp_path / "acme.toml"  # --config wins
    assert state_root() != Path("")
    monkeypatch.setenv("STSYNC_STATE_DIR", f"{tmp_path / 'state'}\n")
    assert state_root() == tmp_path / "state"


def test_the_table_names_each_variable_once_and_documents_it():
    names = [variable.name for variable in envvars.VARIABLES]
    assert len(names) == len(set(names)) and all(name.startswith(envvars.PREFIX) for name in names)
    for variable in envvars.VARIABLES:
        assert variable.overrides and variable.doc
    assert {v.config_key for v in envvars.ENDPOINT_VARIABLES} == {
        "servicetitan.auth_url", "servicetitan.api_url", "referral_factory.api_url"}
    assert {s.env_var for s in credentials.SECRETS} <= {v for v in envvars.VARIABLES if v.secret}


def test_no_module_names_a_variable_outside_the_table_or_reads_one_itself():
    known = set(envvars.BY_NAME)
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert set(NAME.findall(text)) <= known, path
        if path.name != "envvars.py" and "sandbox" not in path.parts:
            # Reading the environment for our own variables happens in envvars only.
            assert not re.search(r"environ(\.get)?\s*[\[(]\s*[\"']STSYNC_|getenv\(\s*[\"']STSYNC_", text), path
            assert "envvar=" not in text, f"{path}: Typer would read the variable behind the resolver's back"


def test_readme_and_spec_name_exactly_the_table(shared_dir):
    readme = set(NAME.findall(README.read_text(encoding="utf-8")))
    assert readme == set(envvars.BY_NAME)
    assert set(NAME.findall((shared_dir / "SPEC.md").read_text(encoding="utf-8"))) <= set(envvars.BY_NAME)


def test_the_sandbox_keeps_its_own_copy_of_the_names_and_it_matches(sandbox):
    assert set(sandbox.env()) == {variable.name for variable in envvars.ENDPOINT_VARIABLES}
    assert set(sandbox.secret_env()) == {secret.env_var.name for secret in credentials.SECRETS}


def test_the_secret_table_is_complete():
    assert credentials.SECRET_NAMES == ("st_client_secret", "st_app_key", "rf_api_key")
    for secret in credentials.SECRETS:
        assert secret.label and secret.where and secret.option.startswith("--")
        assert credentials.secret(secret.name) is secret
    with pytest.raises(ValueError, match="known: st_client_secret"):
        credentials.secret("password")
