"""ServiceTitan variants (api/servicetitan.md §9, §11) and the stricter default readings: 429
shapes, the 409 maintenance answer, the gateway's 401, token throttling, lookup lag after a
create, custom-field values ServiceTitan refuses, enum values in the wrong case."""

from __future__ import annotations

import time

import pytest
from contract import ServiceTitanApi, assert_problem, booking_body, raw_post

from stsync.sandbox import Faults, Variants

GATE_CODE, TECHNICIAN, SQUARE_FOOTAGE, ALARM_CODE = 101, 104, 105, 106


@pytest.fixture
def throttled(make_sandbox):
    sb = make_sandbox(st_per_second=2)
    api = ServiceTitanApi(sb)
    yield sb, api
    api.close()


def exhaust(api) -> None:
    for _ in range(2):
        assert api.get(api.crm + "/customers", params={"pageSize": 1}).status_code == 200


def test_a_429_by_default_says_retry_after_in_the_header_and_the_title(throttled):
    sb, api = throttled
    exhaust(api)
    response = api.get(api.crm + "/customers")
    body = assert_problem(response, 429)
    assert response.headers["Retry-After"] == "1" and body["title"].endswith("Try again in 1 seconds.")


def test_a_429_may_come_in_the_api_gateways_shape_without_retry_after(throttled):
    sb, api = throttled
    sb.set_variants(Variants(st_429="apim-body"))
    exhaust(api)
    response = api.get(api.crm + "/customers")
    assert response.status_code == 429 and "Retry-After" not in response.headers
    assert response.json() == {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."}
    sb.set_faults(Faults(burst_429=1, retry_after=7))  # the burst fault speaks the same way
    time.sleep(1.0)
    assert api.get(api.crm + "/customers").json()["message"].endswith("Try again in 7 seconds.")


def test_a_429_may_carry_neither_header_nor_body(throttled):
    sb, api = throttled
    sb.set_variants(Variants(st_429="bare"))
    exhaust(api)
    response = api.get(api.crm + "/customers")
    assert response.status_code == 429 and "Retry-After" not in response.headers and response.content == b""
    time.sleep(1.0)
    assert api.get(api.crm + "/customers").status_code == 200


def test_maintenance_409_is_answered_before_anything_happens(sandbox, st, rf):
    sandbox.set_faults(Faults(maintenance_rate=1.0))
    body = assert_problem(st.post(st.bookings, json=booking_body()), 409)
    assert body["title"] == "The service is suspended for maintenance"
    assert sandbox.bookings() == []
    assert rf.get("/campaigns").status_code == 200  # ServiceTitan only
    assert st.token()  # not the token endpoint

    def pattern(seed: int) -> list[int]:
        sandbox.set_faults(Faults(maintenance_rate=0.5, seed=seed))
        return [st.get(st.bookings).status_code for _ in range(16)]

    first = pattern(3)
    assert set(first) == {200, 409} and pattern(3) == first


@pytest.mark.parametrize(
    ("app_key", "words"), [(None, "missing subscription key"), ("ak1.wrong", "invalid subscription key")]
)
def test_the_gateway_may_refuse_a_wrong_app_key_with_a_401_about_a_subscription_key(sandbox, st, app_key, words):
    headers = {"Authorization": st.headers["Authorization"]}
    if app_key:
        headers["ST-App-Key"] = app_key
    assert_problem(st.http.get(st.crm + "/customers", headers=headers), 403)  # the default
    sandbox.set_variants(Variants(st_gateway_401=True))
    response = st.http.get(st.crm + "/customers", headers=headers)
    assert response.status_code == 401 and "WWW-Authenticate" not in response.headers
    assert response.json()["statusCode"] == 401 and words in response.json()["message"]
    # Checked before the token: a bad token with a bad key is still the key's 401.
    response = st.http.get(st.crm + "/customers", headers={**headers, "Authorization": "Bearer nope"})
    assert "subscription key" in response.json()["message"]
    assert st.get(st.crm + "/customers").status_code == 200  # the right key passes


def test_the_token_endpoint_may_throttle(sandbox, st):
    creds = sandbox.credentials
    form = {"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}
    assert all(raw_post(sandbox.st_auth_url + "/connect/token", data=form).status_code == 200 for _ in range(12))
    sandbox.set_variants(Variants(token_per_minute=3))
    statuses = [raw_post(sandbox.st_auth_url + "/connect/token", data=form) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    refused = statuses[-1]
    assert refused.json()["error"] == "too_many_requests" and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Try again in" in refused.json()["error_description"]
    assert st.get(st.crm + "/customers").status_code == 200  # tokens already issued still work
    sandbox.set_variants(None)
    assert raw_post(sandbox.st_auth_url + "/connect/token", data=form).status_code == 200


def test_lookup_lag_hides_a_new_booking_from_external_id_lookups_only(sandbox, st):
    sandbox.set_variants(Variants(lookup_lag_seconds=0.6))
    booking = st.create_booking(externalId="LAG1")
    assert st.get(st.bookings, params={"externalId": "LAG1"}).json()["data"] == []
    assert st.get(f"{st.bookings}/{booking['id']}").status_code == 200
    assert [b["id"] for b in st.get(st.bookings).json()["data"]] == [booking["id"]]
    time.sleep(0.7)
    assert [b["id"] for b in st.get(st.bookings, params={"externalId": "LAG1"}).json()["data"]] == [booking["id"]]
    sandbox.set_variants(None)
    fresh = st.create_booking(externalId="NOLAG")
    assert [b["id"] for b in st.get(st.bookings, params={"externalId": "NOLAG"}).json()["data"]] == [fresh["id"]]


def test_enum_query_values_must_be_spelt_as_the_spec_lists_them(st):
    for value in ("completed", "COMPLETED", "inprogress"):
        body = assert_problem(st.get(st.jpm + "/jobs", params={"jobStatus": value}), 400, "jobStatus")
        assert "Completed" in body["errors"]["jobStatus"][0]
    assert st.get(st.jpm + "/jobs", params={"jobStatus": "InProgress"}).status_code == 200
    assert_problem(st.get(st.crm + "/customers", params={"active": "false"}), 400, "active")


# ---------------------------------------------------------------------------- custom fields
def holding(sandbox, type_id: int, value: str | None = None) -> dict:
    return next(
        c
        for c in sandbox.customers()
        if any(f["typeId"] == type_id and (value is None or f["value"] == value) for f in c["customFields"])
    )


def echo(customer: dict, **changes: str) -> list[dict]:
    fields = [{"typeId": f["typeId"], "value": f["value"]} for f in customer["customFields"]]
    return fields + [{"typeId": int(t), "value": v} for t, v in changes.items()]


def test_the_seed_holds_values_a_patch_could_not_set(sandbox, st):
    listed = {t["id"]: t for t in st.get(st.crm + "/customers/custom-fields").json()["data"]}
    assert listed[SQUARE_FOOTAGE]["dataType"] == "Numeric" and ALARM_CODE not in listed
    assert holding(sandbox, GATE_CODE, "")
    retired = holding(sandbox, TECHNICIAN, "Chris")
    assert "Chris" not in listed[TECHNICIAN]["dataTypeOptions"]
    alarm = holding(sandbox, ALARM_CODE)
    shown = st.get(f"{st.crm}/customers/{alarm['id']}").json()
    alarm_field = next(f for f in shown["customFields"] if f["typeId"] == ALARM_CODE)
    assert alarm_field["name"] == "Alarm Code" and alarm_field["value"]
    assert retired["id"] != alarm["id"]


def test_households_share_an_e_mail(sandbox):
    by_email: dict[str, set[int]] = {}
    for contact in sandbox.contacts():
        if contact["type"] == "Email":
            by_email.setdefault(contact["value"].casefold(), set()).add(contact["customerId"])
    shared = [ids for ids in by_email.values() if len(ids) > 1]
    assert any(len(ids) >= 3 for ids in shared)
    household = max(shared, key=len)
    spellings = {c["value"] for c in sandbox.contacts() if c["type"] == "Email" and c["customerId"] in household}
    assert len(spellings) == 2  # one of them typed with other capitals


@pytest.mark.parametrize(
    ("field", "key", "words"),
    [
        ({"typeId": TECHNICIAN, "value": "Chris"}, "CustomFields[0].Value", "not an option"),
        ({"typeId": TECHNICIAN, "value": "alex"}, "CustomFields[0].Value", "not an option"),  # options are exact
        ({"typeId": SQUARE_FOOTAGE, "value": "about 2000"}, "CustomFields[0].Value", "not a number"),
        ({"typeId": SQUARE_FOOTAGE, "value": "1,850"}, "CustomFields[0].Value", "not a number"),
        ({"typeId": GATE_CODE, "value": ""}, "CustomFields[0].Value", "required"),
        ({"typeId": GATE_CODE, "value": "   "}, "CustomFields[0].Value", "required"),
        ({"typeId": ALARM_CODE, "value": "1234"}, "CustomFields[0].TypeId", "no longer available"),
    ],
)
def test_a_new_custom_field_value_servicetitan_refuses(sandbox, st, field, key, words):
    customer = next(c for c in sandbox.customers() if not c["customFields"])
    body = assert_problem(st.patch(f"{st.crm}/customers/{customer['id']}", json={"customFields": [field]}), 400, key)
    assert words in body["errors"][key][0]
    assert sandbox.customer(customer["id"]) == customer


def test_a_type_id_given_twice_is_refused(sandbox, st):
    customer = sandbox.customers()[0]
    fields = [{"typeId": 103, "value": "a"}, {"typeId": 102, "value": "b"}, {"typeId": 103, "value": "c"}]
    response = st.patch(f"{st.crm}/customers/{customer['id']}", json={"customFields": fields})
    body = assert_problem(response, 400, "CustomFields[2].TypeId")
    assert "more than once" in body["errors"]["CustomFields[2].TypeId"][0]
    assert sandbox.customer(customer["id"]) == customer


def test_valid_values_pass(sandbox, st):
    customer = next(c for c in sandbox.customers() if not c["customFields"])
    fields = [{"typeId": TECHNICIAN, "value": "Sam"}, {"typeId": SQUARE_FOOTAGE, "value": "1850.5"}]
    after = st.patch(f"{st.crm}/customers/{customer['id']}", json={"customFields": fields})
    assert after.status_code == 200, after.text
    stored = [(f["typeId"], f["value"]) for f in after.json()["customFields"]]
    assert stored == [(TECHNICIAN, "Sam"), (SQUARE_FOOTAGE, "1850.5")]


@pytest.mark.parametrize(
    ("type_id", "value", "key"),
    [(GATE_CODE, "", "Value"), (TECHNICIAN, "Chris", "Value"), (ALARM_CODE, None, "TypeId")],
)
def test_echoing_an_invalid_value_the_customer_holds(sandbox, st, type_id, value, key):
    customer = holding(sandbox, type_id, value)
    path = f"{st.crm}/customers/{customer['id']}"
    fields = echo(customer, **{"103": "ueONFmUp"})
    # The default reading: what the customer holds may be sent back unchanged.
    accepted = st.patch(path, json={"customFields": fields})
    assert accepted.status_code == 200, accepted.text
    assert {f["typeId"]: f["value"] for f in accepted.json()["customFields"]}[type_id] == next(
        f["value"] for f in customer["customFields"] if f["typeId"] == type_id
    )
    # The variant: ServiceTitan refuses the whole PATCH, naming the field and its value.
    sandbox.set_variants(Variants(refuse_invalid_existing_custom_fields=True))
    before = sandbox.customer(customer["id"])
    at = next(i for i, f in enumerate(fields) if f["typeId"] == type_id)
    body = assert_problem(st.patch(path, json={"customFields": fields}), 400, f"CustomFields[{at}].{key}")
    name = {GATE_CODE: "Gate Code", TECHNICIAN: "Preferred Technician", ALARM_CODE: "Alarm Code"}[type_id]
    assert name in body["errors"][f"CustomFields[{at}].{key}"][0]
    assert sandbox.customer(customer["id"]) == before
    # Leaving the field out (or, for a list value, changing it to a valid one) passes.
    fields = [f for f in fields if f["typeId"] != type_id]
    assert st.patch(path, json={"customFields": fields}).status_code == 200
