"""Admin operations over HTTP (a sandbox in another process), the request log, seeded data."""

from __future__ import annotations

import pytest
from contract import ServiceTitanApi

from stsync.sandbox import Faults, RemoteSandbox, RemoteSandboxError, Sandbox


def test_remote_admin_drives_the_same_operations(sandbox, st):
    remote = RemoteSandbox(sandbox.base_url)
    assert remote.credentials()["tenant_id"] == sandbox.credentials.tenant_id
    booking = st.create_booking()
    job = remote.convert_booking_to_job(booking["id"], "InProgress")
    assert remote.set_job_status(job["id"], "Completed")["completedOn"]
    customer = remote.add_customer("Remote Person", email="remote@example.com", type="Commercial")
    assert sandbox.customer(customer["id"])["type"] == "Commercial"
    assert remote.modify_customer(customer["id"], name="Renamed")["name"] == "Renamed"
    fixed = remote.modify_customer(customer["id"], custom_fields={"Preferred Technician": "Sam", "Gate Code": "42"})
    assert {f["name"]: f["value"] for f in fixed["customFields"]} == {"Preferred Technician": "Sam", "Gate Code": "42"}
    cleared = remote.modify_customer(customer["id"], custom_fields={"Gate Code": None})
    assert [f["name"] for f in cleared["customFields"]] == ["Preferred Technician"]
    assert cleared["modifiedOn"] > fixed["modifiedOn"]
    assert len(remote.add_customers(2)) == 2
    leads = remote.add_leads(2)
    assert [u["type"] for u in leads] == ["person_invited"] * 2
    remote.set_faults(Faults(burst_429=1))
    assert sandbox.faults.burst_429 == 1
    remote.set_faults(None)
    remote.expire_tokens()
    assert st.get(st.crm + "/customers").status_code == 401
    assert remote.rotate_client_secret() == sandbox.credentials.client_secret
    remote.pause_campaign(sandbox.credentials.campaign_id)
    remote.delete_custom_field_type("Gate Code")
    state = remote.snapshot()
    assert "Gate Code" not in {t["name"] for t in state["servicetitan"]["custom_field_types"]}
    assert state["referral_factory"]["campaigns"][0]["status"] == "paused"
    assert state == sandbox.snapshot()
    with pytest.raises(RemoteSandboxError) as refused:
        remote.convert_booking_to_job(booking["id"])
    assert refused.value.status == 409
    with pytest.raises(RemoteSandboxError) as missing:
        remote.modify_customer(1, name="x")
    assert missing.value.status == 404


def test_request_log_records_service_method_path_query_status(sandbox, st, rf):
    sandbox.clear_request_log()
    st.get(st.bookings, params={"externalId": "X"})
    st.get(st.crm + "/customers/1")
    rf.get("/campaigns")
    RemoteSandbox(sandbox.base_url).credentials()
    log = sandbox.request_log
    assert [(r.service, r.method, r.status) for r in log] == [
        ("servicetitan", "GET", 200),
        ("servicetitan", "GET", 404),
        ("referral_factory", "GET", 200),
        ("admin", "GET", 200),
    ]
    assert log[0].query == {"externalId": "X"} and log[0].path == st.bookings
    assert sandbox.count_requests(service="servicetitan") == 2
    assert sandbox.count_requests(path_contains="/customers/") == 1
    assert sandbox.count_requests(method="get", service="referral_factory") == 1
    assert [r["status"] for r in RemoteSandbox(sandbox.base_url).request_log()][:4] == [200, 404, 200, 200]
    sandbox.clear_request_log()
    assert sandbox.request_log == []


def test_the_same_seed_gives_the_same_world():
    first, second, other = Sandbox(seed=5, customers=25), Sandbox(seed=5, customers=25), Sandbox(seed=6, customers=25)
    assert first.snapshot() == second.snapshot() and first.credentials == second.credentials
    assert first.snapshot() != other.snapshot() and first.credentials != other.credentials


def test_sizes_are_configurable(make_sandbox):
    sb = make_sandbox(customers=3, leads=2, referrers=1)
    assert len(sb.customers()) == 3
    assert len(sb.rf_users(campaign_id=sb.credentials.campaign_id)) == 3


def test_env_secret_env_and_connect_args_point_at_the_sandbox(sandbox):
    creds = sandbox.credentials
    assert sandbox.env() == {
        "STSYNC_ST_AUTH_URL": sandbox.base_url,
        "STSYNC_ST_API_URL": sandbox.base_url,
        "STSYNC_RF_API_URL": sandbox.base_url + "/api/v2",
    }
    assert sandbox.secret_env() == {
        "STSYNC_ST_CLIENT_SECRET": creds.client_secret,
        "STSYNC_ST_APP_KEY": creds.app_key,
        "STSYNC_RF_API_KEY": creds.rf_api_key,
    }
    args = sandbox.connect_args()
    pairs = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "connect" and pairs["--environment"] == "integration"
    assert pairs["--tenant-id"] == str(creds.tenant_id) and pairs["--campaign-id"] == str(creds.campaign_id)
    assert pairs["--booking-provider"] == str(creds.booking_provider) and pairs["--rf-api-key"] == creds.rf_api_key


def test_unknown_paths_and_admin_operations(sandbox, st):
    assert st.http.get("/nowhere").status_code == 404
    assert st.http.post("/_sandbox/nothing").status_code == 404
    assert st.http.post("/_sandbox/jobs/1/status", json={}).status_code == 400  # no "status"
    assert st.http.put("/_sandbox/faults", json={"error_rate": 7}).status_code == 400


def test_a_stopped_sandbox_can_be_restarted_elsewhere_and_keeps_its_state(make_sandbox):
    sb = make_sandbox()
    api = ServiceTitanApi(sb)
    api.create_booking()
    api.close()
    sb.stop()
    sb.start()
    api = ServiceTitanApi(sb)
    assert len(api.get(api.bookings).json()["data"]) == 1
    api.close()


def test_get_sandbox_lists_every_admin_operation_and_each_one_answers(sandbox, st):
    listed = st.http.get("/_sandbox/").json()["operations"]
    assert st.http.get("/_sandbox").json()["operations"] == listed
    assert RemoteSandbox(sandbox.base_url).operations() == listed
    assert all(set(op) == {"method", "path", "summary"} and op["summary"] for op in listed)
    assert len({(op["method"], op["path"]) for op in listed}) == len(listed)
    for op in listed:
        if op["method"] == "DELETE" or op["path"].endswith(("/rotate", "/block", "/expire", "/pause")):
            continue  # answered below without changing the world for the other checks
        path = op["path"].replace("{id}", "1").replace("{kind}", "jobs").replace("{name}", "Nothing")
        response = st.http.request(op["method"], path, json={})
        if response.status_code != 200:  # refused for the data, not unknown as an operation
            assert "no admin operation" not in response.json()["error"], (op, response.text)
    assert st.http.delete("/_sandbox/requests").status_code == 200
    assert st.http.post("/_sandbox/ips/block").status_code == 200
    assert st.http.post("/_sandbox/ips/unblock").status_code == 200
    assert "no admin operation" in st.http.post("/_sandbox/nothing").json()["error"]


def test_leads_can_be_referred_by_a_referrer_named_by_e_mail_and_joined_on_a_given_day(sandbox):
    remote = RemoteSandbox(sandbox.base_url)
    campaign = sandbox.credentials.campaign_id
    referrer = sandbox.rf_users(campaign_id=campaign, type="person_referring")[1]
    added = remote.add_leads(2, referrer_email=referrer["email"].upper(), signed_up_at="2025-10-03")
    assert [(u["referrer_id"], u["signed_up_at"]) for u in added] == [(referrer["id"], "2025-10-03")] * 2
    assert {u["id"] for u in added} <= {u["id"] for u in sandbox.rf_users(campaign_id=campaign, type="person_invited")}
    with pytest.raises(RemoteSandboxError) as unknown:
        remote.add_leads(1, referrer_email="nobody@example.com")
    assert unknown.value.status == 404 and "no referrer with e-mail" in str(unknown.value)
    with pytest.raises(RemoteSandboxError) as bad_day:
        remote.add_leads(1, signed_up_at="2025-02-30")
    assert bad_day.value.status == 400
