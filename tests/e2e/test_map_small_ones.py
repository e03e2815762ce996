"""The small ones of issue 15 item 12 about the mapping, through the real CLI in a child
process: a typo exits 2 wherever it is typed, ``map qualify`` confirms every change it made,
and ``map show`` banners a hand-edited value that cannot work, in ``validate``'s words."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def said(result) -> str:
    return " ".join(result.stderr.split())


def test_a_typo_in_map_set_and_in_map_qualify_status_exits_the_same(cli_subprocess, isolated):
    typo_in_set = cli_subprocess("map", "set", "nmae", "--from", "first_name")
    typo_in_status = cli_subprocess("map", "qualify", "job-status", "--status", "Complted")
    typo_in_option = cli_subprocess("map", "set", "priority", "--select", "Hgh")

    assert typo_in_set.exit_code == typo_in_status.exit_code == typo_in_option.exit_code == 2, (
        str(typo_in_set), str(typo_in_status), str(typo_in_option),
    )  # fmt: skip
    assert "did you mean 'name'" in said(typo_in_set)
    assert "Completed" in said(typo_in_status)
    assert "High" in said(typo_in_option)


def test_map_qualify_with_unqualify_on_confirms_both_changes(cli_subprocess):
    both = cli_subprocess("map", "qualify", "job-status", "--status", "Completed", "--unqualify-on", "job-canceled")
    assert both.exit_code == 0, str(both)
    assert "job_status = Completed" in said(both) and "unqualify_on = job_canceled" in said(both)

    cleared = cli_subprocess("map", "qualify", "job-created", "--unqualify-on", "none")
    assert cleared.exit_code == 0
    assert "rule = job_created" in said(cleared) and "unqualify_on = none" in said(cleared)

    rule_only = cli_subprocess("map", "qualify", "job-created")
    assert "unqualify_on" not in said(rule_only), "an option left out is not a change"


def test_map_show_banners_a_hand_edited_value_as_validate_reports_it(cli_subprocess, isolated):
    assert cli_subprocess("map", "set", "summary", "--value", "Referral").exit_code == 0  # writes the config
    config = isolated / "config.toml"
    config.write_text(config.read_text().replace('is_first_time_client = { select = "yes" }', 'is_first_time_client = { select = "maybe" }'))

    shown = cli_subprocess("map", "show", "--for", "leads")
    assert shown.exit_code == 0, str(shown)
    text = " ".join((shown.stdout + shown.stderr).split())
    assert "Setup Required" in text and "leads.fields.is_first_time_client" in text
    assert "'maybe' is not an option of is_first_time_client" in text

    data = cli_subprocess("--json", "map", "show", "--for", "leads").json
    assert data["leads"]["setup_required"] is True and data["leads"]["missing"] == []
    [problem] = data["leads"]["problems"]
    validate = cli_subprocess("--json", "validate")
    check = next(c for c in validate.json["checks"] if c["name"] == "Leads: field mapping")
    assert check["status"] == "fail" and problem["message"] in check["message"] and problem["hint"] == check["fix"]
