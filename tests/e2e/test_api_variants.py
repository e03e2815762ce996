"""The real CLI against the sandbox playing each reading the API contracts leave open
(api/referral-factory.md §11, api/servicetitan.md §11; docs/sandbox.md "Variants"): paging,
search refusals, mixed meta values, route-level 404s, the shared 429 fate and the IP block,
the gateway's 401, ServiceTitan's maintenance 409 and its 429 shapes, secrets with CR/LF.

What happened is read back from the sandbox (its data and its request log), never from stsync.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from sandbox_world import edit_config, leads_of

from stsync.sandbox import Faults, Variants
from stsync.storage.ledger import Ledger
from stsync.storage.paths import ConnectionPaths, resolve_config_path

pytestmark = pytest.mark.e2e

# Scaled up (sandbox and config alike) so that hundreds of bookings take seconds.
ST_PER_SECOND = 1_000
RF_PER_MINUTE = 60_000
SEARCH = "/users/search"
# This sandbox lists what was created at once (no lookup lag): a create whose answer was lost
# is settled by the next run after a short grace period (stsync.lookup_grace).
GRACE_SECONDS = 1


@pytest.fixture
def world(make_sandbox, cli, isolated, monkeypatch):
    """``world(**sandbox settings)``: a started sandbox, the environment pointing at it, and a
    connection to it (secrets in the file store, the rate limits scaled up)."""

    def make(**settings):
        sb = make_sandbox(st_per_second=ST_PER_SECOND, rf_per_minute=RF_PER_MINUTE, **settings)
        for name, value in sb.env().items():
            monkeypatch.setenv(name, value)
        result = cli(*sb.connect_args(), "--secrets-store", "file")
        assert result.exit_code == 0, str(result)
        edit_config(lambda c: (
            setattr(c.limits, "servicetitan_per_second", ST_PER_SECOND),
            setattr(c.limits, "referral_factory_per_minute", RF_PER_MINUTE),
            setattr(c.limits, "lookup_grace_seconds", GRACE_SECONDS),
        ))
        sb.clear_request_log()
        return sb

    return make


def assert_one_booking_per_lead(sb) -> None:
    codes = [b["externalId"] for b in sb.bookings()]
    assert sorted(codes) == sorted(u["code"] for u in leads_of(sb)), "every lead booked, exactly once"


def rf_requests(sb, **filters) -> list:
    return [r for r in sb.request_log if r.service == "referral_factory"
            and all(getattr(r, key) == value for key, value in filters.items())]


def open_ledger() -> Ledger:
    return Ledger.open(ConnectionPaths.for_config(resolve_config_path(None)).ledger)


# -- Referral Factory paging, search and meta ---------------------------------------------------


def test_cursor_paging_pushes_every_lead_past_the_first_page(world, cli):
    sb = world(leads=301, customers=5, variants=Variants(rf_cursor_paging=True))

    result = cli("--json", "push-lead", "--new")

    assert result.exit_code == 0, str(result)
    assert len(leads_of(sb)) == 301
    assert_one_booking_per_lead(sb)
    searches = rf_requests(sb, method="POST", path="/api/v2" + SEARCH)
    # The first page (250 rows), then the cursor link as given — never page=2, which the
    # cursor paginator would answer with the first page again.
    assert len(searches) == 2
    assert "cursor" not in searches[0].query and searches[1].query.get("cursor")
    assert "page" not in searches[1].query


def test_a_search_refusing_type_and_big_pages_succeeds_and_the_next_run_asks_the_shape_that_worked(world, cli):
    sb = world(variants=Variants(rf_search_refuses_type=True, rf_search_max_per_page=100))

    first = cli("-v", "push-lead", "--new")

    assert first.exit_code == 0, str(first)
    assert_one_booking_per_lead(sb)
    assert [r.status for r in rf_requests(sb, method="POST", path="/api/v2" + SEARCH)] == [422, 422, 200]
    assert "search refused the filter field(s) type" in first.stderr
    assert "search refused the page size" in first.stderr
    sb.clear_request_log()
    sb.add_leads(2)

    second = cli("-v", "--json", "push-lead", "--new")

    assert second.exit_code == 0, str(second)
    searches = rf_requests(sb, method="POST", path="/api/v2" + SEARCH)
    assert [(r.status, r.query.get("per_page")) for r in searches] == [(200, "100")]
    assert "using the shape remembered for this connection" in second.stderr
    assert_one_booking_per_lead(sb)


def test_list_and_object_meta_values_are_pushed_as_text(world, cli):
    sb = world(variants=Variants(rf_mixed_meta=True))
    assert cli("map", "set", "summary", "--from", "meta.Service Needed").exit_code == 0

    result = cli("--json", "push-lead", "--new")

    assert result.exit_code == 0, str(result)
    assert_one_booking_per_lead(sb)
    mixed = [u for u in leads_of(sb) if any(isinstance(m["value"], list) for m in u["meta"])]
    assert mixed, "the seed shows list values with rf_mixed_meta"
    for user in mixed:
        [service] = [m["value"] for m in user["meta"] if m["field"] == "Service Needed"]
        [booking] = sb.bookings(external_id=user["code"])
        assert booking["summary"] == ", ".join(service)


# -- 404: a deletion only when the API is otherwise answering ---------------------------------


@pytest.fixture
def qualifying(world, cli):
    """Every lead pushed, the rule "job created", one booking converted to a job."""
    sb = world()
    assert cli("push-lead", "--new").exit_code == 0
    assert cli("map", "qualify", "job-created").exit_code == 0
    booking = sb.bookings()[0]
    sb.convert_booking_to_job(booking["id"])
    [user] = [u for u in leads_of(sb) if u["code"] == booking["externalId"]]
    sb.clear_request_log()
    return sb, user


@pytest.mark.parametrize("html", [True, False], ids=["html-route-404", "json-route-404"])
def test_a_wrong_referral_factory_url_exits_3_quoting_it_and_closes_nothing(qualifying, cli, monkeypatch, html):
    sb, user = qualifying
    if html:
        sb.set_variants(Variants(html_route_404=True))
    wrong = sb.base_url + "/referral-factory/api/v2"  # outside both APIs: a proxy's 404
    monkeypatch.setenv("STSYNC_RF_API_URL", wrong)
    open_before = len(open_ledger().open_bookings())

    result = cli("qualify")

    assert result.exit_code == 3, str(result)
    assert f"{wrong}/users/{user['id']}" in result.stderr
    assert "api_url" in result.stderr
    ledger = open_ledger()
    assert len(ledger.open_bookings()) == open_before, "nothing became final"
    assert ledger.qualifications_for(user["code"]) == []
    assert not sb.qualified(user["id"])

    monkeypatch.setenv("STSYNC_RF_API_URL", sb.rf_api_url)
    again = cli("qualify")
    assert again.exit_code == 0, str(again)
    assert sb.qualified(user["id"])


def test_the_api_json_404_while_the_campaign_reads_fine_is_a_deletion_and_final(qualifying, cli):
    sb, user = qualifying
    deleted = httpx.delete(f"{sb.rf_api_url}/users/{user['id']}",
                           headers={"Authorization": f"Bearer {sb.credentials.rf_api_key}", "Accept": "application/json"})
    assert deleted.status_code == 200

    result = cli("--json", "qualify")

    assert result.exit_code == 5, str(result)  # that record failed, for good
    [decision] = [d for d in result.json["decisions"] if d["external_id"] == user["code"]]
    assert decision["outcome"] == "failed" and decision["final"] is True
    assert rf_requests(sb, method="GET", path=f"/api/v2/campaigns/{sb.credentials.campaign_id}"), \
        "the campaign was read to prove the API answers"
    assert open_ledger().get_push(user["code"]).final
    sb.clear_request_log()
    assert cli("qualify").exit_code == 0
    assert not rf_requests(sb, path=f"/api/v2/users/{user['id']}"), "a final booking is not read again"


# -- the shared 429 fate and the IP block --------------------------------------------------------


def test_two_processes_each_meeting_a_429_then_every_process_waits_out_the_cool_down(world, cli_subprocess):
    sb = world()
    sb.set_faults(Faults(rf_burst_429=1, retry_after=1))  # another app on the key spent the minute

    first = cli_subprocess("push-lead", "--new")

    assert first.exit_code == 0, str(first)  # retried after Retry-After, at half speed
    assert_one_booking_per_lead(sb)
    sb.set_faults(Faults(rf_burst_429=1, retry_after=1))
    sb.add_leads(1)

    second = cli_subprocess("push-lead", "--new")

    assert second.exit_code == 6, str(second)
    said = " ".join(second.stderr.split())  # as a person reads it, whatever the line wrapping
    assert re.search(r"no stsync process of this connection calls Referral Factory until \d{4}-\d\d-\d\d \d\d:\d\d\b.*UTC", said), said
    sb.clear_request_log()

    third = cli_subprocess("push-lead", "--new")

    assert third.exit_code == 6, str(third)
    assert "UTC" in third.stderr
    assert rf_requests(sb) == [], "no process of the connection calls Referral Factory during the cool-down"
    diagnose = cli_subprocess("diagnose", "--offline")
    assert "Referral Factory rate limit" in diagnose.stderr + diagnose.stdout
    assert rf_requests(sb) == []


def test_a_blocked_ip_exits_6_with_when_and_the_next_run_sends_nothing(world, cli):
    sb = world()
    sb.block_ips()

    result = cli("push-lead", "--new")

    assert result.exit_code == 6, str(result)
    said = " ".join(result.stderr.split())
    assert "blocked this machine's IP address" in said and "UTC" in said
    assert len(rf_requests(sb)) == 1
    sb.clear_request_log()
    again = cli("push-lead", "--new")
    assert again.exit_code == 6, str(again)
    assert rf_requests(sb) == []


def test_an_admin_only_403_exits_4_with_the_hint(world, cli):
    sb = world()
    sb.set_faults(Faults(rf_admin_403_path="/users/search"))
    result = cli("push-lead", "--new")
    assert result.exit_code == 4, str(result)
    assert "account admin" in result.stderr


# -- ServiceTitan's wording ---------------------------------------------------------------------


def test_the_gateway_401_about_the_subscription_key_is_a_bad_app_key(world, cli, monkeypatch):
    sb = world(variants=Variants(st_gateway_401=True))
    monkeypatch.setenv("STSYNC_ST_APP_KEY", "ak1.not-the-apps-key")

    result = cli("push-lead", "--new")

    assert result.exit_code == 4, str(result)
    assert "ST-App-Key" in result.stderr and "Application Key" in result.stderr
    assert sb.count_requests(service="auth") <= 1, "a new token cannot fix the app key: none is asked twice"
    assert sb.bookings() == []


def test_maintenance_409s_are_retried_and_the_run_succeeds(world, cli):
    sb = world()
    sb.set_faults(Faults(maintenance_rate=0.3, seed=7))

    # Reads are retried like a 503. A booking POST answered 409 may or may not have been
    # applied, like one answered 503: never sent again by its run (exit 6, "unknown"); the
    # next run — as cron would start it — looks it up first, then creates it.
    results = [cli("push-lead", "--new")]
    while results[-1].exit_code == 6 and len(results) < 5:
        results.append(cli("push-lead", "--new"))

    assert results[-1].exit_code == 0, "\n".join(map(str, results))
    assert all(r.exit_code == 6 for r in results[:-1])
    assert_one_booking_per_lead(sb)
    assert any(r.status == 409 for r in sb.request_log if r.service == "servicetitan")


@pytest.mark.parametrize("style", ["apim-body", "bare"])
def test_servicetitan_429_without_retry_after_is_retried_and_the_run_succeeds(world, cli, style):
    sb = world(variants=Variants(st_429=style))
    sb.set_faults(Faults(burst_429=3, retry_after=1))

    result = cli("push-lead", "--new")

    assert result.exit_code == 0, str(result)
    assert_one_booking_per_lead(sb)
    assert [r.status for r in sb.request_log if r.service == "servicetitan"].count(429) == 3


def test_secrets_with_a_trailing_cr_lf_in_the_environment_work(world, cli_subprocess, monkeypatch):
    sb = world()
    Path(ConnectionPaths.for_config(resolve_config_path(None)).secrets_file).unlink()  # the environment alone
    for name, value in sb.secret_env().items():
        monkeypatch.setenv(name, f"{value}\r\n")
    assert os.environ["STSYNC_RF_API_KEY"].endswith("\r\n")

    result = cli_subprocess("push-lead", "--new")

    assert result.exit_code == 0, str(result)
    assert_one_booking_per_lead(sb)
