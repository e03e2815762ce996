"""storage/config_writer.py: the config as commented TOML (the example file IS its output),
saved atomically, never in a form stsync could not load back."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from stsync.errors import ConfigError
from stsync.storage.config import ConfigSchemaError, FixedValue, TemplateValue, default_config, load_config
from stsync.storage.config_writer import render_config, save_config, toml_value

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "config.toml"
EXAMPLE_IDENTITY = dict(tenant_id=1234567, client_id="cid.xxxxx", booking_provider=42, campaign_id=7)


def test_example_file_is_what_save_config_writes():
    # The example is never edited by hand: it cannot drift from what stsync writes.
    assert EXAMPLE.read_text(encoding="utf-8") == render_config(default_config(**EXAMPLE_IDENTITY))


def test_save_writes_spec_order_and_inline_specs(tmp_path):
    config = default_config(**EXAMPLE_IDENTITY)
    config.referrers.fields["name"] = TemplateValue(template="{first_name} {meta.Last Name}")
    config.webhook.aliases["referral_code"] = ["code", "referralCode"]
    config.leads.qualification.unqualify_on = ["job_canceled"]
    path = tmp_path / "config.toml"
    save_config(config, path)
    text = path.read_text()
    headers = re.findall(r"^\[([a-z_.]+)\]", text, re.M)
    assert headers == [
        "servicetitan",
        "referral_factory",
        "secrets",
        "leads",
        "leads.fields",
        "leads.qualification",
        "referrers",
        "referrers.fields",
        "customer_sync",
        "customer_sync.fields",
        "customer_sync.return_fields",
        "limits",
        "schedule",
        "notify",
        "logging",
        "webhook",
        "webhook.aliases",
    ]
    assert re.search(r'^summary = \{ value = "Referral" \} +# Fixed Value \(Manual Input\)$', text, re.M)
    assert '"Referral Link" = "referral_link"' in text
    assert 'unqualify_on = ["job_canceled"]' in text
    assert 'referral_code = ["code", "referralCode"]' in text
    assert load_config(path) == config


def test_save_is_atomic_and_keeps_the_file_mode(tmp_path):
    path = tmp_path / "conf" / "config.toml"
    save_config(default_config(), path)
    path.chmod(0o640)
    save_config(default_config(tenant_id=5), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left
    assert load_config(path).servicetitan.tenant_id == 5


def test_save_refuses_text_that_is_not_utf8(tmp_path):
    config = default_config()
    config.leads.fields["summary"] = FixedValue(value="bad \udcff byte")  # argv with surrogateescape
    with pytest.raises(ConfigError, match="not valid text"):
        save_config(config, tmp_path / "config.toml")
    assert not (tmp_path / "config.toml").exists()


def test_save_refuses_a_config_it_could_not_load(tmp_path):
    path = tmp_path / "config.toml"
    save_config(default_config(tenant_id=5), path)
    before = path.read_text()
    broken = default_config()
    broken = broken.model_copy(update={"limits": broken.limits.model_copy(update={"workers": 0})})
    with pytest.raises(ConfigSchemaError) as caught:
        save_config(broken, path)
    assert caught.value.key_path == "limits.workers"
    assert path.read_text() == before


def test_a_file_written_by_hand_with_user_comments_loses_them_with_notice(tmp_path):
    # save_config regenerates the comments: the header says so, so nobody is surprised.
    path = tmp_path / "config.toml"
    save_config(default_config(), path)
    assert "notes you add are not kept" in path.read_text()
    assert os.access(path, os.R_OK)


def test_values_are_spelled_as_the_file_spells_them():
    assert [toml_value(v) for v in ("a \"b\"", 12, True, ["x", "y"])] == ['"a \\"b\\""', "12", "true", '["x", "y"]']


def test_schedule_notify_and_logging_survive_a_rewrite_in_their_own_spelling(tmp_path):
    """`map set` rewrites the file: a schedule written as "30s" stays "30s", "off" stays off,
    and the alert URLs and the log format are kept."""
    from stsync.storage.config import parse_config_text

    path = tmp_path / "config.toml"
    path.write_text(
        '[schedule]\npush = "30s"\nsync = "off"\nqualify = 90\nfull_sync = "2d"\noverdue_after = 2\n'
        '[notify]\nwebhook_url = "https://hooks.example.com/T0/B0"\nping_url = "https://hc-ping.example/k/{job}"\n'
        '[logging]\nformat = "json"\n'
    )
    config = parse_config_text(path.read_text())
    save_config(config, path)
    text = path.read_text()
    assert re.search(r'^push = "30s" ', text, re.M) and re.search(r'^sync = "off" ', text, re.M)
    assert re.search(r'^qualify = "90s" ', text, re.M) and re.search(r'^full_sync = "2d" ', text, re.M)
    assert re.search(r'^overdue_after = 2 ', text, re.M) and re.search(r'^# jitter = "30s" ', text, re.M)
    assert 'webhook_url = "https://hooks.example.com/T0/B0"' in text and re.search(r'^format = "json" ', text, re.M)
    assert parse_config_text(text) == config
