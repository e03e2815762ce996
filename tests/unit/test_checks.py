"""The check engine (table, runner, exit-code rule), and `stsync validate`, which runs it: offline
on the config, online against strict HTTP mocks (an unexpected request or an unused response
fails the test)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakes import FakeTime  # tests/support
from pytest_httpx import HTTPXMock

from stsync.checks import offline, table
from stsync.checks.activity import check_referral_factory_throttle
from stsync.checks.context import CheckContext
from stsync.checks.result import Check, NotRun, Verdict, fail, ok
from stsync.checks.runner import CheckRun, CheckSpec, Input, exit_code_for
from stsync.cli.app import run
from stsync.errors import AuthError, ConfigError
from stsync.ratelimit import RateLimiter, local_and_utc
from stsync.services.validate import validate
from stsync.storage.config import Config, default_config
from stsync.storage.config_writer import save_config
from stsync.storage.paths import ConnectionPaths

AUTH = "https://auth.servicetitan.io"
API = "https://api.servicetitan.io"
RF = "https://referral-factory.com/api/v2"
TENANT, BP, CAMPAIGN = 1234567, 42, 7
SECRETS = {"STSYNC_ST_CLIENT_SECRET": "cs2.KNOWN-secret", "STSYNC_ST_APP_KEY": "ak1.KNOWN-key", "STSYNC_RF_API_KEY": "rf-KNOWN-key"}
TOKEN_URL = f"{AUTH}/connect/token"
OTHER_TOKEN_URL = "https://auth-integration.servicetitan.io/connect/token"
FIELD_TYPES_URL = f"{API}/crm/v2/tenant/{TENANT}/customers/custom-fields?page=1&pageSize=200"
BOOKINGS_URL = f"{API}/crm/v2/tenant/{TENANT}/booking-provider/{BP}/bookings?page=1&pageSize=1"
CAMPAIGNS_URL = f"{RF}/campaigns?page=1&per_page=250"
CAMPAIGN_URL = f"{RF}/campaigns/{CAMPAIGN}"
TEXT_TYPES = [{"id": 101, "name": "Referral Link", "dataType": "Text"}, {"id": 102, "name": "Referral Code", "dataType": "Text"}]


@pytest.fixture
def connected(monkeypatch) -> Path:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = Path(os.environ["STSYNC_CONFIG"])
    save_config(default_config(tenant_id=TENANT, client_id="cid.test", booking_provider=BP, campaign_id=CAMPAIGN), path)
    return path


def edit(path: Path, **sections) -> None:
    data = default_config(tenant_id=TENANT, client_id="cid.test", booking_provider=BP, campaign_id=CAMPAIGN).model_dump(by_alias=True, exclude_none=True)
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    save_config(Config.model_validate(data), path)


def report_for(path: Path, *, online: bool = False):
    return validate(path, ConnectionPaths.for_config(path), online=online)


def by_name(report) -> dict[str, Check]:
    return {check.name: check for check in report.checks}


# == offline ======================================================================================


def test_a_connected_default_config_passes_offline(connected: Path):
    report = report_for(connected)
    assert report.exit_code == 0
    assert [c.status for c in report.checks] == ["pass"] * len(report.checks)
    assert {c.name for c in report.checks} >= {"Config file", "Connection settings", "Secrets", "Leads: field mapping", "Qualification rule"}


def test_secret_values_never_appear_only_their_names(connected: Path, capsys):
    assert run(["--json", "validate"]) == 0
    out = capsys.readouterr()
    for value in SECRETS.values():
        assert value not in out.out and value not in out.err
    secrets = next(c for c in json.loads(out.out)["checks"] if c["name"] == "Secrets")
    assert "st_client_secret (env)" in secrets["message"]


def test_missing_secrets_are_named_and_fail_with_3(connected: Path, monkeypatch):
    monkeypatch.delenv("STSYNC_ST_APP_KEY")
    report = report_for(connected)
    secrets = by_name(report)["Secrets"]
    assert secrets.status == "fail" and "st_app_key" in secrets.message and "STSYNC_ST_APP_KEY" in secrets.message
    assert "stsync connect" in secrets.fix and report.exit_code == 3


def test_toml_syntax_error_gives_line_and_column(connected: Path):
    connected.write_text('[leads]\naction = "create_booking"\nfields = { name = \n')
    report = report_for(connected)
    first = report.checks[0]
    assert first.name == "Config file" and first.status == "fail" and ":3:" in first.message
    assert by_name(report)["Secrets"].status == "pass"  # still checked: it does not need the config
    assert report.exit_code == 3


def test_schema_error_names_the_key_path(connected: Path):
    connected.write_text(connected.read_text().replace('action = "create_booking"', 'action = "create"'))
    first = report_for(connected).checks[0]
    assert first.status == "fail" and "leads.action" in first.message


def test_nothing_to_action_warns_with_the_troubleshooting_wording(connected: Path):
    edit(connected, leads={"action": "nothing"})
    report = report_for(connected)
    action = by_name(report)["Leads: when lead joins campaign"]
    assert action.status == "warn"
    assert '"Nothing to action" is selected' in action.message and "no bookings will be created in ServiceTitan" in action.message
    assert action.fix == "stsync map action leads create-booking"
    assert report.exit_code == 0
    strict = offline.check_leads_action(Config.model_validate({"leads": {"action": "nothing"}}), nothing_is="fail")
    assert strict.status == "fail" and strict.exit_code == 3


def test_required_field_not_mapped_is_setup_required_with_exactly_those_fields(connected: Path):
    fields = {k: v for k, v in default_config().model_dump(by_alias=True)["leads"]["fields"].items() if k not in ("summary", "is_first_time_client")}
    edit(connected, leads={"fields": fields})
    report = report_for(connected)
    mapping_check = by_name(report)["Leads: field mapping"]
    assert mapping_check.status == "fail"
    assert "Setup Required: Summary (summary), Is First Time Client (is_first_time_client) not mapped" in mapping_check.message
    assert "Required fields not mapped" in mapping_check.message
    assert report.exit_code == 3


def test_referrers_creating_bookings_need_their_required_fields(connected: Path):
    edit(connected, referrers={"action": "create_booking"})
    check = by_name(report_for(connected))["Referrers: field mapping"]
    assert check.status == "fail" and "Source (source)" in check.message and "--for referrers" in check.fix


def test_unknown_source_field_in_a_mapping_fails_with_suggestion(connected: Path):
    fields = {**default_config().model_dump(by_alias=True)["leads"]["fields"], "name": {"from": "frist_name"}}
    edit(connected, leads={"fields": fields})
    check = by_name(report_for(connected))["Leads: field mapping"]
    assert check.status == "fail" and "leads.fields.name" in check.message and "did you mean 'first_name'" in check.message


def test_partial_address_warns(connected: Path):
    fields = {**default_config().model_dump(by_alias=True)["leads"]["fields"], "address.street": {"from": "meta.Street"}}
    edit(connected, leads={"fields": fields})
    check = by_name(report_for(connected))["Leads: field mapping"]
    assert check.status == "warn" and "address.city" in check.message


def test_qualification_rule_consistency():
    base = {"leads": {"action": "nothing", "qualification": {"rule": "job_created"}}}
    assert offline.check_qualification_rule(Config.model_validate(base)).status == "warn"
    good = Config.model_validate({"leads": {"qualification": {"rule": "job_status", "job_status": "Completed"}}})
    check = offline.check_qualification_rule(good)
    assert check.status == "pass" and "Completed" in check.message
    ignored = Config.model_validate({"leads": {"qualification": {"rule": "job_created", "job_status": "Hold"}}})
    assert offline.check_qualification_rule(ignored).status == "warn"
    contradictory = Config.model_validate(
        {"leads": {"qualification": {"rule": "job_status", "job_status": "Canceled", "unqualify_on": ["job_canceled"]}}}
    )
    assert offline.check_qualification_rule(contradictory).status == "warn"
    held = Config.model_validate({"leads": {"qualification": {"rule": "job_status", "hold_days": 14}}})
    check = offline.check_qualification_rule(held)
    assert check.status == "pass" and "held 14 days" in check.message
    assert "held" not in offline.check_qualification_rule(Config.model_validate({"leads": {"qualification": {"hold_days": 3}}})).message


def test_customer_mapping_and_return_fields():
    bad = Config.model_validate({"customer_sync": {"fields": {"first_name": {"from": "customer.frist_name"}, "email": {"from": "contact.email"}}}})
    check = offline.check_customer_mapping(bad)
    assert check.status == "fail" and "did you mean 'customer.first_name'" in check.message
    no_email = Config.model_validate({"customer_sync": {"fields": {"first_name": {"from": "customer.first_name"}}}})
    assert offline.check_customer_mapping(no_email).status == "fail"
    twice = Config.model_validate({"customer_sync": {"return_fields": {"Referral Link": "referral_link", "referral link": "referral_code"}}})
    assert offline.check_return_fields(twice).status == "fail"
    assert offline.check_return_fields(default_config()).status == "pass"


def test_missing_connection_settings_skip_online_checks(tmp_path: Path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = Path(os.environ["STSYNC_CONFIG"])
    save_config(default_config(), path)
    report = report_for(path, online=True)  # strict mocks: any request would fail the test
    assert by_name(report)["Connection settings"].status == "fail"
    assert report.online_skipped and report.exit_code == 3


# == online =======================================================================================


def st_ok(httpx_mock: HTTPXMock, *, types=TEXT_TYPES, bookings_status: int = 200) -> None:
    httpx_mock.add_response(method="POST", url=TOKEN_URL, json={"access_token": "tok-1", "expires_in": 900})
    httpx_mock.add_response(method="GET", url=FIELD_TYPES_URL, json={"page": 1, "pageSize": 200, "hasMore": False, "data": types})
    if bookings_status == 200:
        httpx_mock.add_response(method="GET", url=BOOKINGS_URL, json={"page": 1, "pageSize": 1, "hasMore": False, "data": []})
    else:
        httpx_mock.add_response(method="GET", url=BOOKINGS_URL, status_code=bookings_status, json={"title": "Not Found", "status": bookings_status})


def rf_ok(httpx_mock: HTTPXMock, *, status: str = "launched") -> None:
    campaign = {"id": CAMPAIGN, "name": "Spring Referrals", "status": status}
    httpx_mock.add_response(method="GET", url=CAMPAIGNS_URL, json={"data": [campaign]})
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, json={"data": campaign})


def test_online_all_good(connected: Path, httpx_mock: HTTPXMock, capsys):
    st_ok(httpx_mock)
    rf_ok(httpx_mock)
    assert run(["--json", "validate", "--online"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in out["checks"] if c["status"] == "pass"]
    for expected in ("ServiceTitan token", "ServiceTitan app key and tenant access", "Booking Provider Value",
                     "Return fields in ServiceTitan", "Referral Factory API key", "Referral Factory campaign"):
        assert expected in names
    assert out["ok"] is True and out["counts"]["fail"] == 0


def test_wrong_booking_provider_uses_the_troubleshooting_wording_and_exits_4(connected: Path, httpx_mock: HTTPXMock, capsys):
    st_ok(httpx_mock, bookings_status=404)
    rf_ok(httpx_mock)
    assert run(["--json", "validate", "--online"]) == 4
    out = capsys.readouterr()
    check = next(c for c in json.loads(out.out)["checks"] if c["name"] == "Booking Provider Value")
    assert check["status"] == "fail" and check["exit_code"] == 4
    assert check["message"].startswith(
        "Booking Provider Value is incorrect — if the wrong Booking Provider Value was entered during the "
        "Finalize step, bookings may fail"
    )
    assert "API Application Access" in check["fix"]
    assert "Booking Provider Value" in out.err and "FAIL" in out.err and "(exit 4)" in out.err


def test_paused_campaign_fails(connected: Path, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    rf_ok(httpx_mock, status="paused")
    report = report_for(connected, online=True)
    campaign = by_name(report)["Referral Factory campaign"]
    assert campaign.status == "fail" and "is paused, not launched" in campaign.message
    assert report.exit_code == 3


def test_return_field_missing_in_servicetitan_or_not_text(connected: Path, httpx_mock: HTTPXMock):
    st_ok(httpx_mock, types=[{"id": 101, "name": "Referral Link", "dataType": "Dropdown"}, {"id": 103, "name": "Referral Codes", "dataType": "Text"}])
    rf_ok(httpx_mock)
    report = report_for(connected, online=True)
    check = by_name(report)["Return fields in ServiceTitan"]
    assert check.status == "fail"
    assert "no customer custom field named 'Referral Code' (did you mean 'Referral Codes'?)" in check.message
    assert "'Referral Link' is a Dropdown custom field, not Text" in check.message
    assert report.exit_code == 3


def test_bad_client_secret_fails_the_token_names_the_environment_and_skips_dependent_checks(connected: Path, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=400, json={"error": "invalid_client"})
    # Nobody to ask: the other environment's token server gets nothing (the strict mock says so).
    rf_ok(httpx_mock)
    report = report_for(connected, online=True)
    names = by_name(report)
    token = names["ServiceTitan token"]
    assert token.status == "fail" and "Client ID / Client Secret" in token.message and "production environment" in token.message
    assert "Booking Provider Value" not in names and names["Referral Factory campaign"].passed
    assert report.exit_code == 4


def test_wrong_app_key_is_told_apart(connected: Path, httpx_mock: HTTPXMock):
    httpx_mock.add_response(method="POST", url=TOKEN_URL, json={"access_token": "tok-1", "expires_in": 900}, is_reusable=True)
    httpx_mock.add_response(method="GET", url=FIELD_TYPES_URL, status_code=401, json={"title": "Invalid ST-App-Key", "status": 401}, is_reusable=True)
    rf_ok(httpx_mock)
    report = report_for(connected, online=True)
    access = by_name(report)["ServiceTitan app key and tenant access"]
    assert by_name(report)["ServiceTitan token"].passed
    assert access.status == "fail" and "ST-App-Key" in access.message and access.exit_code == 4
    assert report.exit_code == 4


def test_revoked_referral_factory_key(connected: Path, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGNS_URL, status_code=401, json={"message": "Unauthenticated."})
    report = report_for(connected, online=True)
    key = by_name(report)["Referral Factory API key"]
    assert key.status == "fail" and "one active API key" in (key.fix or "") + key.message
    assert "Referral Factory campaign" not in by_name(report)
    assert report.exit_code == 4


def test_unknown_campaign(connected: Path, httpx_mock: HTTPXMock):
    st_ok(httpx_mock)
    httpx_mock.add_response(method="GET", url=CAMPAIGNS_URL, json={"data": []})
    httpx_mock.add_response(method="GET", url=CAMPAIGN_URL, status_code=404, json={"message": "Not found"})
    check = by_name(report_for(connected, online=True))["Referral Factory campaign"]
    assert check.status == "fail" and "was not found for this API key" in check.message


# == the engine ===================================================================================


def spec(name: str, verdict: Verdict | None, ran: list[str], **rest) -> CheckSpec:
    def run_check(ctx):
        ran.append(name)
        return verdict

    return CheckSpec(name, "config", run_check, **rest)


def context(tmp_path: Path, **rest) -> CheckContext:
    return CheckContext(paths=ConnectionPaths.for_config(tmp_path / "c.toml"), config_path=tmp_path / "c.toml", **rest)


def test_a_failed_check_skips_its_dependants_naming_itself_and_theirs_inherit_the_reason(tmp_path: Path):
    ran: list[str] = []
    root = spec("Root", fail("broken", "fix it"), ran, blocks="the root is broken")
    child = spec("Child", ok("fine"), ran, needs=(root,))
    grandchild = spec("Grandchild", ok("fine"), ran, needs=(child,))
    other = spec("Other", ok("fine"), ran)
    result = CheckRun(context(tmp_path)).run((root, child, grandchild, other))
    assert ran == ["Root", "Other"]
    assert [c.name for c in result.checks] == ["Root", "Other"]
    assert result.not_run == [NotRun("Child", "the root is broken", "Root"), NotRun("Grandchild", "the root is broken", "Root")]


def test_a_missing_input_is_reported_by_the_first_reporting_check_that_ran(tmp_path: Path):
    ran: list[str] = []
    settings = spec("Settings", fail("not set", "connect"), ran)
    secrets = spec("Secrets", ok("found"), ran)
    unused = spec("Never in the run", ok("-"), ran)
    tenant = Input("tenant", lambda ctx: False, (unused, settings))
    key = Input("key", lambda ctx: False, (secrets,))
    live = spec("Live", ok("fine"), ran, inputs=(tenant, key))
    result = CheckRun(context(tmp_path)).run((settings, secrets, live))
    assert ran == ["Settings", "Secrets"]
    assert result.not_run == [NotRun("Live", "missing: tenant, key", "Settings")]


def test_a_need_outside_the_run_is_no_condition_and_a_silent_check_adds_no_row(tmp_path: Path):
    ran: list[str] = []
    outside = spec("Outside", fail("broken", None), ran)
    silent = spec("Silent", None, ran)
    dependant = spec("Dependant", ok("fine"), ran, needs=(outside, silent))
    result = CheckRun(context(tmp_path)).run((silent, dependant))
    assert ran == ["Silent", "Dependant"] and [c.name for c in result.checks] == ["Dependant"]
    assert result.passed(dependant) and not result.passed(outside) and not result.not_run


def test_stop_at_first_failure_raises_the_checks_own_error_and_runs_nothing_after(tmp_path: Path):
    ran: list[str] = []
    refused = AuthError("refused", hint="reconnect")
    first = spec("First", ok("fine"), ran)
    second = spec("Second", Verdict("fail", "refused", "reconnect", 4, refused), ran)
    third = spec("Third", ok("fine"), ran)
    with pytest.raises(AuthError) as raised:
        CheckRun(context(tmp_path)).run((first, second, third), stop_at_first_failure=True)
    assert raised.value is refused and ran == ["First", "Second"]
    # A failure without an error of its own becomes one of its class, in the check's words.
    with pytest.raises(ConfigError, match="Third: not set") as raised:
        CheckRun(context(tmp_path)).run((spec("Third", fail("not set", "connect"), []),), stop_at_first_failure=True)
    assert raised.value.hint == "connect"


def test_exit_code_rule_for_validate_and_for_diagnose():
    auth = Check("ServiceTitan token", "fail", "refused", "stsync connect", "servicetitan", 4)
    config = Check("Config file", "fail", "missing", "stsync connect", "config", 3)
    temporary = Check("Referral Factory API key", "fail", "unreachable", "retry", "referral_factory", 6)
    other = Check("Push failures", "fail", "1 failed", "retry", "activity", None)
    blocked = [NotRun("Booking Provider Value", "token refused", "ServiceTitan token")]
    assert exit_code_for([Check("x", "warn", "w")]) == 0
    # validate: the most pressing class
    assert exit_code_for([config, auth]) == 4 and exit_code_for([temporary, config]) == 3
    assert exit_code_for([temporary]) == 6 and exit_code_for([other]) == 1
    # diagnose: the class only when it is the whole story and it kept a check from running
    diagnose_rule = {"class_only_if_blocking": True}
    assert exit_code_for([Check("x", "warn", "w")], [], **diagnose_rule) == 0
    assert exit_code_for([auth], blocked, **diagnose_rule) == 4
    assert exit_code_for([auth], [], **diagnose_rule) == 1  # it stopped nothing: an ordinary FAIL
    assert exit_code_for([auth, other], blocked, **diagnose_rule) == 1
    assert exit_code_for([config], [NotRun("ServiceTitan token", "no config", "Config file")], **diagnose_rule) == 3
    assert exit_code_for([config], [NotRun("ServiceTitan token", "--offline")], **diagnose_rule) == 1
    assert exit_code_for([temporary], [NotRun("Referral Factory campaign", "unreachable", temporary.name)], **diagnose_rule) == 1


def test_every_check_name_is_written_once_and_each_plan_runs_its_prerequisites_first():
    specs = [value for value in vars(table).values() if isinstance(value, CheckSpec)]
    names = [item.name for item in specs]
    assert len(names) == len(set(names))
    diagnose = (*table.DIAGNOSE_OFFLINE, *table.LIVE, *table.DIAGNOSE_RUNS)
    for plan in (table.VALIDATE_OFFLINE, table.DIAGNOSE_OFFLINE, diagnose, table.CONNECT):
        for position, item in enumerate(plan):
            for need in item.needs:
                assert need not in plan[position:], f"{item.name} runs before {need.name}"


def test_limits_above_the_documented_ones_warn_in_validate_and_in_the_commands_that_use_them(connected, capsys):
    edit(connected, limits={"servicetitan_per_second": 6000})
    check = by_name(report_for(connected))["Limits"]
    assert check.status == "warn" and "servicetitan_per_second = 6000" in check.message
    assert run(["validate"]) == 0  # a warning, not a failure
    capsys.readouterr()
    assert run(["history"]) == 0
    assert "Warning: limits.servicetitan_per_second = 6000 is above" in capsys.readouterr().err
    edit(connected)
    assert by_name(report_for(connected))["Limits"].status == "pass"


def test_the_secret_store_check_of_a_file_store_ignores_the_keyring(connected, monkeypatch):
    text = connected.read_text().replace('store = "keyring"', 'store = "file"')
    connected.write_text(text)
    monkeypatch.setenv("STSYNC_TEST_KEYRING", "locked")
    verdict, described = offline.check_secret_store(ConnectionPaths.for_config(connected))
    assert verdict.status == "pass" and "the file store" in verdict.message
    assert described["store"] == "file"


# -- Referral Factory's shared rate-limit state (diagnose, no request) ---------------------------

WALL = 1_800_000_000.0


def rf_state(tmp_path: Path, fake: FakeTime) -> tuple[ConnectionPaths, RateLimiter]:
    paths = ConnectionPaths.for_config(tmp_path / "acme.toml")
    limiter = RateLimiter(600, 60.0, state_file=paths.rate_file("referral_factory"), clock=fake.clock,
                          sleep=fake.sleep, wall_clock=fake.clock, service="Referral Factory")
    return paths, limiter


def throttle(paths: ConnectionPaths, fake: FakeTime) -> Verdict:
    return check_referral_factory_throttle(paths, clock=fake.clock, wall_clock=fake.clock)


def test_the_throttle_check_passes_with_no_state_and_creates_nothing(tmp_path: Path):
    fake = FakeTime(WALL)
    paths = ConnectionPaths.for_config(tmp_path / "acme.toml")
    verdict = throttle(paths, fake)
    assert verdict.passed and "no Referral Factory rate limiting" in verdict.message
    assert not paths.state.exists()


def test_the_throttle_check_warns_after_one_episode_with_when_it_is_full_speed_again(tmp_path: Path):
    fake = FakeTime(WALL)
    paths, limiter = rf_state(tmp_path, fake)
    limiter.record_rate_limited()
    verdict = throttle(paths, fake)
    assert verdict.status == "warn"
    assert f"HTTP 429 at {local_and_utc(WALL)}" in verdict.message and "50%" in verdict.message
    # An hour held, then one ten-minute doubling.
    assert f"until {local_and_utc(WALL + 3600 + 600)}" in verdict.message


def test_the_throttle_check_warns_during_a_rate_limit_cool_down_and_fails_on_an_ip_block(tmp_path: Path):
    fake = FakeTime(WALL)
    paths, limiter = rf_state(tmp_path, fake)
    limiter.record_rate_limited()
    fake.now += 300
    limiter.record_rate_limited()
    cooling = throttle(paths, fake)
    assert cooling.status == "warn" and f"until {local_and_utc(WALL + 300 + 3600)}" in cooling.message
    limiter.record_ip_blocked()
    blocked = throttle(paths, fake)
    assert blocked.failed and blocked.exit_code == 6
    assert "blocked this machine's IP address" in blocked.message
    assert str(paths.rate_file("referral_factory")) in blocked.fix
    fake.now += 7 * 86400
    over = throttle(paths, fake)
    assert over.passed and "the last cool-down (an IP block) ended" in over.message


# == credentials only where the configuration points ===========================================


class TerminalInput:
    """stdin of a person at a terminal, typing ``answer`` (stderr counts as a terminal too)."""

    def __init__(self, monkeypatch, answer: str) -> None:
        import io
        import sys

        from stsync.cli.terminal import Terminal

        class TypedAtATerminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        monkeypatch.setattr(sys, "stdin", TypedAtATerminal(answer))
        monkeypatch.setattr(Terminal, "can_ask", property(lambda self: True))


def test_at_a_terminal_yes_asks_the_other_environment_and_tells_the_credentials_apart(
    connected: Path, httpx_mock: HTTPXMock, capsys, monkeypatch
):
    TerminalInput(monkeypatch, "y\n")
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=400, json={"error": "invalid_client"})
    httpx_mock.add_response(method="POST", url=OTHER_TOKEN_URL, json={"access_token": "tok-other", "expires_in": 900})
    rf_ok(httpx_mock)
    assert run(["validate", "--online"]) == 4
    said = capsys.readouterr()
    err, out = " ".join(said.err.split()), " ".join(said.out.split())  # the question is talk; the checks are data
    assert "Checking sends them to the integration token server (https://auth-integration.servicetitan.io)" in err
    assert "they were made for integration" in out and "stsync connect --environment integration" in out


def test_at_a_terminal_the_default_answer_sends_nothing_to_the_other_environment(
    connected: Path, httpx_mock: HTTPXMock, capsys, monkeypatch
):
    TerminalInput(monkeypatch, "\n")  # Enter: the default is No; the strict mock fails a request to the other server
    httpx_mock.add_response(method="POST", url=TOKEN_URL, status_code=400, json={"error": "invalid_client"})
    rf_ok(httpx_mock)
    assert run(["validate", "--online"]) == 4
    said = capsys.readouterr()
    err, out = " ".join(said.err.split()), " ".join(said.out.split())  # the question is talk; the checks are data
    assert "[y/N]" in err and "not sent to integration" in out
    assert "run `stsync connect --environment integration`" in out


@pytest.mark.parametrize(
    ("failure", "rechecked_by"),
    [
        ({"type": "AuthError", "exit_code": 4, "message": "ServiceTitan rejected the Client ID / Client Secret"},
         {"ServiceTitan token", "ServiceTitan app key and tenant access", "Booking Provider Value"}),
        ({"type": "AuthError", "exit_code": 4, "message": "Referral Factory rejected the API key"},
         {"Referral Factory API key", "Referral Factory campaign"}),
        ({"type": "ConfigError", "exit_code": 3, "key_path": "referral_factory.campaign_id", "message": "paused"},
         {"Referral Factory campaign"}),
        ({"type": "SetupRequired", "exit_code": 3, "key_path": "leads.fields", "message": "Setup Required"},
         {"Leads: when lead joins campaign", "Leads: field mapping"}),
        ({"type": "StateUnusable", "exit_code": 3, "key_path": None, "message": "disk full"}, {"State directory"}),
        ({"type": "TemporaryError", "exit_code": 6, "message": "ServiceTitan is unavailable"},
         {"ServiceTitan token", "ServiceTitan app key and tenant access", "Referral Factory API key",
          "Referral Factory rate limit"}),
        ({"type": "StsyncError", "exit_code": 1, "message": "a bug"}, set()),
    ],
)
def test_a_failed_runs_cause_is_rechecked_by_the_checks_that_verify_it(failure, rechecked_by):
    assert {spec.name for spec in table.cause_checks(failure)} == rechecked_by
