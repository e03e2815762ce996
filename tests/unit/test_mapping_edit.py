"""`stsync map ...`: every edit validated, written back loadable, shown as the seed's table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stsync.cli.app import run
from stsync.errors import UsageError
from stsync.services import mapping_edit
from stsync.storage.config import default_config, load_config
from stsync.storage.config_writer import save_config


@pytest.fixture
def config_path() -> Path:
    path = Path(os.environ["STSYNC_CONFIG"])
    save_config(default_config(tenant_id=1234567, client_id="cid.test", booking_provider=42, campaign_id=7), path)
    return path


def json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


# == service ======================================================================================


def test_set_each_kind_and_the_file_reloads(config_path: Path):
    mapping_edit.set_field(config_path, "name", kind="template", value="{first_name} {meta.Last Name}")
    mapping_edit.set_field(config_path, "priority", kind="select", value="high")
    mapping_edit.set_field(config_path, "business_unit_id", kind="value", value="12")
    mapping_edit.set_field(config_path, "phone", kind="from", value="meta.Phone")
    config = load_config(config_path)
    fields = config.leads.fields
    assert fields["name"].template == "{first_name} {meta.Last Name}"
    assert fields["priority"].select == "High"  # stored in the option's own spelling
    assert fields["business_unit_id"].value == 12
    assert fields["phone"].from_ == "meta.Phone"
    assert config.servicetitan.tenant_id == 1234567  # the connection is untouched


@pytest.mark.parametrize(
    ("target", "kind", "value", "for_", "words"),
    [
        ("nmae", "from", "first_name", "leads", "did you mean 'name'"),
        ("name", "from", "frist_name", "leads", "did you mean 'first_name'"),
        ("priority", "select", "asap", "leads", "Low, Normal, High, Urgent"),
        ("is_first_time_client", "select", "maybe", "leads", "yes, no"),
        ("name", "template", "{first_name} {meta.}", "leads", "meta."),
        ("name", "template", "{first_name", "leads", ""),
        ("summary", "value", "   ", "leads", ""),
        ("first_nme", "from", "customer.first_name", "customers", "did you mean 'first_name'"),
        ("first_name", "from", "customer.frist_name", "customers", "did you mean 'customer.first_name'"),
        ("email", "value", "x@y.com", "customers", "own e-mail"),
        ("external_id", "value", "REF-1", "leads", "already booked"),
        ("external_id", "template", "referral", "referrers", "names no field"),
        ("external_id", "value", "REF-1", "referrers", "stsync map set external_id --from referral_code --for referrers"),
    ],
)
def test_invalid_sets_are_refused_and_the_file_is_unchanged(config_path: Path, target, kind, value, for_, words):
    """What the person typed is refused as a usage mistake (exit 2), the file untouched."""
    before = config_path.read_text()
    with pytest.raises(UsageError) as caught:
        mapping_edit.set_field(config_path, target, kind=kind, value=value, for_=for_)
    assert words in f"{caught.value} {caught.value.hint or ''}"
    assert config_path.read_text() == before


def test_unset_a_required_field_reports_setup_required(config_path: Path):
    result = mapping_edit.unset_field(config_path, "summary")
    assert result.changed and result.setup_required == ["summary"]
    assert "summary" not in load_config(config_path).leads.fields
    again = mapping_edit.unset_field(config_path, "summary")
    assert not again.changed
    with pytest.raises(UsageError, match="did you mean 'summary'"):
        mapping_edit.unset_field(config_path, "sumary")


def test_action_and_referrers_start_from_the_leads_mapping(config_path: Path):
    result = mapping_edit.set_action(config_path, "leads", "nothing")
    assert load_config(config_path).leads.action == "nothing"
    assert any("Nothing to action" in w for w in result.warnings)
    result = mapping_edit.set_action(config_path, "referrers", "create-booking")
    config = load_config(config_path)
    assert config.referrers.action == "create_booking" and config.referrers.fields == config.leads.fields
    assert result.setup_required == []
    with pytest.raises(UsageError):
        mapping_edit.set_action(config_path, "leads", "create")


def test_qualify_rules(config_path: Path):
    mapping_edit.set_qualification(config_path, "job-status", status="completed", unqualify_on=["job-canceled"])
    q = load_config(config_path).leads.qualification
    assert (q.rule, q.job_status, q.unqualify_on) == ("job_status", "Completed", ["job_canceled"])
    mapping_edit.set_qualification(config_path, "job-created")
    q = load_config(config_path).leads.qualification
    assert (q.rule, q.job_status) == ("job_created", None)
    with pytest.raises(UsageError, match="Scheduled, Dispatched, InProgress, Hold, Completed, Canceled"):
        mapping_edit.set_qualification(config_path, "job-status", status="Done")
    with pytest.raises(UsageError, match="needs --status"):
        mapping_edit.set_qualification(config_path, "job-status")
    with pytest.raises(UsageError, match="only goes with job-status"):
        mapping_edit.set_qualification(config_path, "none", status="Completed")


def test_qualify_hold_days_is_set_kept_and_validated(config_path: Path):
    result = mapping_edit.set_qualification(config_path, "job-status", status="Completed", hold_days=14)
    assert "hold_days = 14" in result.change and result.changed
    assert load_config(config_path).leads.qualification.hold_days == 14
    mapping_edit.set_qualification(config_path, "job-status", status="Completed", unqualify_on=["job-canceled"])
    assert load_config(config_path).leads.qualification.hold_days == 14, "kept when --hold-days is not given"
    for wrong in (-1, 366):
        with pytest.raises(UsageError, match="0 to 365"):
            mapping_edit.set_qualification(config_path, "job-status", status="Completed", hold_days=wrong)
    assert load_config(config_path).leads.qualification.hold_days == 14, "a refused value changes nothing"
    none = mapping_edit.set_qualification(config_path, "none")
    assert any("no effect" in warning for warning in none.warnings)
    mapping_edit.set_qualification(config_path, "job-created", hold_days=0)
    assert load_config(config_path).leads.qualification.hold_days == 0


def test_map_qualify_hold_days_on_the_command_line_is_shown_by_map_show(config_path: Path, cli):
    assert cli("map", "qualify", "job-status", "--status", "Completed", "--hold-days", "7").exit_code == 0
    shown = cli("map", "show", "--for", "leads")
    assert "held 7 days without a cancellation" in " ".join((shown.stdout + shown.stderr).split())
    as_json = cli("--json", "map", "show", "--for", "leads")
    assert as_json.json["leads"]["qualification"]["hold_days"] == 7
    refused = cli("map", "qualify", "job-status", "--status", "Completed", "--hold-days", "seven")
    assert refused.exit_code == 2
    assert cli("map", "qualify", "job-status", "--status", "Completed", "--hold-days", "400").exit_code == 2


def test_return_fields_add_and_remove(config_path: Path):
    mapping_edit.set_return_field(config_path, "Referral URL", "referral_link")
    assert load_config(config_path).customer_sync.return_fields["Referral URL"] == "referral_link"
    with pytest.raises(UsageError, match="referral_link or referral_code"):
        mapping_edit.set_return_field(config_path, "Count", "referral_count")
    mapping_edit.remove_return_field(config_path, "Referral URL")
    assert "Referral URL" not in load_config(config_path).customer_sync.return_fields
    with pytest.raises(UsageError, match="did you mean 'Referral Link'"):
        mapping_edit.remove_return_field(config_path, "Referal Link")


def test_reset_restores_the_default_mapping_and_keeps_the_connection(config_path: Path):
    mapping_edit.unset_field(config_path, "summary")
    mapping_edit.set_action(config_path, "referrers", "create-booking")
    mapping_edit.reset_mapping(config_path)
    config = load_config(config_path)
    defaults = default_config()
    assert (config.leads, config.referrers, config.customer_sync) == (defaults.leads, defaults.referrers, defaults.customer_sync)
    assert config.servicetitan.booking_provider == 42 and config.referral_factory.campaign_id == 7


def test_hand_written_comments_are_counted_when_dropped(config_path: Path):
    text = config_path.read_text()
    config_path.write_text("# my own note\n" + text.replace('summary = { value = "Referral" }', 'summary = { value = "Referral #1" }  # keep this'))
    result = mapping_edit.set_field(config_path, "priority", kind="select", value="Low")
    assert result.dropped_comments == 2
    assert load_config(config_path).leads.fields["summary"].value == "Referral #1"  # "#" inside a string is no comment
    assert mapping_edit.set_field(config_path, "priority", kind="select", value="High").dropped_comments == 0


def test_comment_lines_ignore_hashes_in_strings():
    text = 'a = "x # y"  # real\nb = \'\'\'\n# not a comment\n\'\'\'\n# second\nc = "esc \\" # still"\n'
    assert mapping_edit.comment_lines(text) == ["real", "second"]


def test_edits_without_a_config_start_from_the_default(tmp_path: Path):
    path = tmp_path / "new.toml"
    result = mapping_edit.set_field(path, "summary", kind="value", value="Friend referral")
    assert result.created_config
    config = load_config(path)
    assert config.leads.fields["summary"].value == "Friend referral"
    assert config.leads.fields["name"] == default_config().leads.fields["name"]


# == CLI ==========================================================================================


def test_map_show_json_is_the_table_as_data(config_path: Path, capsys):
    assert run(["--json", "map", "show"]) == 0
    out = json_out(capsys)
    leads = out["leads"]
    assert leads["action"] == "create_booking" and leads["setup_required"] is False and leads["missing"] == []
    assert [(r["data_type"], r["from"], r["target_label"], r["required"]) for r in leads["fields"]] == [
        ("Dynamic Value", "Campaign Name", "Source", True),
        ("Dynamic Value", "First Name", "Name", True),
        ("Dynamic Value", "Email", "Email", True),
        ("Fixed Value (Manual Input)", '"Referral"', "Summary", True),
        ("Fixed Value (Manual Select)", '"Yes"', "Is First Time Client", True),
        ("Dynamic Value", "Referral Code", "External Id", True),
    ]
    assert leads["qualification"]["label"] == "Do not qualify my referrals"
    assert out["referrers"]["action"] == "nothing"
    assert [r["custom_field"] for r in out["customers"]["return_fields"]] == ["Referral Link", "Referral Code"]


def test_map_show_renders_the_table_and_the_setup_required_banner(config_path: Path, capsys):
    assert run(["map", "unset", "source"]) == 0
    assert run(["map", "unset", "external_id"]) == 0
    capsys.readouterr()
    assert run(["map", "show", "--for", "leads"]) == 0
    shown = capsys.readouterr()
    out = shown.out  # the mapping is the data the user asked for: stdout, talk on stderr
    assert shown.err == ""
    for header in ("Data Type", "From Referral Factory", "To ServiceTitan"):
        assert header in out
    assert "Setup Required" in out and "Source (source), External Id (external_id)" in out
    assert "Name *" in out and "Summary *" in out and "not mapped" in out
    assert run(["--json", "map", "show", "--for", "leads"]) == 0
    out = json_out(capsys)
    assert out["leads"]["setup_required"] is True and out["leads"]["missing"] == ["source", "external_id"]
    assert "referrers" not in out


def test_map_show_no_banner_with_nothing_to_action(config_path: Path, capsys):
    run(["map", "unset", "source"])
    run(["map", "action", "leads", "nothing"])
    capsys.readouterr()
    assert run(["map", "show", "--for", "leads"]) == 0
    out = capsys.readouterr().out
    assert "Setup Required" not in out and "Nothing to action" in out


def test_map_set_cli_messages_and_exit_codes(config_path: Path, capsys):
    assert run(["map", "set", "name", "--template", "{first_name} {meta.Last Name}"]) == 0
    assert 'name = { template = "{first_name} {meta.Last Name}" }' in capsys.readouterr().err
    assert run(["map", "set", "name", "--from", "first_name", "--value", "x"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    # A typo is a usage error wherever it is typed: a target, a field, an option, a status.
    assert run(["map", "set", "nmae", "--from", "first_name"]) == 2
    assert "did you mean 'name'" in capsys.readouterr().err
    assert run(["map", "set", "priority", "--select", "Hgh"]) == 2
    assert run(["map", "qualify", "job-status", "--status", "Finished"]) == 2
    assert "Completed" in capsys.readouterr().err
    assert run(["map", "unset", "sumary"]) == 2
    assert run(["map", "set", "external_id", "--value", "REF-1"]) == 2
    assert "already booked" in capsys.readouterr().err
    assert run(["--json", "map", "set", "first_name", "--from", "customer.name", "--for", "customers"]) == 0
    assert json_out(capsys)["change"] == 'customers: first_name = { from = "customer.name" }'


def test_map_return_field_cli(config_path: Path, capsys):
    assert run(["map", "return-field", "Referral URL", "referral_link"]) == 0
    assert run(["map", "return-field", "Referral URL"]) == 2
    assert run(["map", "return-field", "Referral URL", "--remove"]) == 0
    assert "Referral URL" not in load_config(config_path).customer_sync.return_fields


def test_map_reset_needs_yes_without_a_terminal(config_path: Path, capsys):
    run(["map", "unset", "summary"])
    assert run(["map", "reset"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert run(["map", "reset", "--yes"]) == 0
    assert "summary" in load_config(config_path).leads.fields


def test_a_note_when_hand_written_comments_are_dropped_and_help_says_so(config_path: Path, capsys):
    config_path.write_text("# remember: ask Bob\n" + config_path.read_text())
    assert run(["map", "set", "summary", "--value", "Friend"]) == 0
    assert "1 comment line(s) you added" in capsys.readouterr().err
    assert run(["map", "set", "--help"]) == 0
    assert "comments you added by hand are not kept" in " ".join(capsys.readouterr().out.split())


def test_a_broken_config_is_reported_with_line_and_column(config_path: Path, capsys):
    config_path.write_text("[leads\naction = 1\n")
    assert run(["map", "set", "summary", "--value", "x"]) == 3
    assert ":1:" in capsys.readouterr().err


def test_map_show_without_a_config_shows_the_default_and_says_so(capsys):
    assert run(["--json", "map", "show", "--for", "customers"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["default"] is True and "no config at" in captured.err
    assert [r["target"] for r in out["customers"]["fields"]] == ["first_name", "email"]
    assert not Path(os.environ["STSYNC_CONFIG"]).exists()  # showing writes nothing


def test_map_show_rejects_an_unknown_section(capsys):
    assert run(["map", "show", "--for", "lead"]) == 2
    assert "did you mean 'leads'" in capsys.readouterr().err
