"""Referral Factory v2: users, search, qualification, campaigns, Laravel paging, 422 shapes."""

from __future__ import annotations

import pytest
from contract import assert_rf_error, raw_get

USER_FIELDS = {
    "id", "campaign_id", "referrer_id", "first_name", "email", "code", "url", "type", "source", "reach", "ip",
    "signed_up_at", "qualified_at", "unsubscribed_at", "meta", "sharing",
}  # fmt: skip


def search(rf, *conditions, operator="AND", **params):
    body = {
        "filters": {"operator": operator, "value": [{"field": f, "value": v, "operator": o} for f, v, o in conditions]}
    }
    return rf.post("/users/search", json=body, params=params)


def test_auth_and_accept(sandbox, rf):
    response = raw_get(sandbox.rf_api_url + "/campaigns", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.json()["message"] == "Unauthenticated."
    response = raw_get(sandbox.rf_api_url + "/campaigns", headers={"Authorization": sandbox.credentials.rf_api_key})
    assert response.status_code == 401  # the key without "Bearer"
    response = rf.get("/campaigns", headers={"Accept": "text/html"})
    assert response.status_code == 406
    old = sandbox.credentials.rf_api_key
    sandbox.rotate_rf_api_key()
    assert rf.get("/campaigns").status_code == 401  # one active key per account
    assert sandbox.credentials.rf_api_key != old


def test_create_a_referrer_then_a_referred_lead(sandbox, rf):
    response = rf.create_user(email="jane@example.com", meta=[{"field": "Last Name", "value": "Doe"}], notify=False)
    assert response.status_code == 201
    referrer = response.json()["data"]
    assert USER_FIELDS <= set(referrer)
    assert (referrer["type"], referrer["source"], referrer["referrer_id"]) == ("person_referring", "Api", None)
    assert referrer["url"].endswith("/" + referrer["code"]) and len(referrer["code"]) == 8
    assert referrer["meta"] == [{"field": "Last Name", "value": "Doe"}]
    for field in ("code", "email", "id"):
        value = referrer[field]
        lead = rf.create_user(email=f"lead-{field}@example.com", referrer={"field": field, "value": value})
        assert lead.status_code == 201, lead.text
        assert (lead.json()["data"]["type"], lead.json()["data"]["referrer_id"]) == ("person_invited", referrer["id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"first_name": ""}, "first_name"),
        ({"campaign_id": None}, "campaign_id"),
        ({"campaign_id": 1}, "campaign_id"),
        ({"referrer": {"field": "code", "value": "NOSUCHCODE"}}, "referrer"),
        ({"referrer": {"field": "phone", "value": "1"}}, "referrer"),
        ({"meta": {"Last Name": "Doe"}}, "meta"),
    ],
)
def test_create_refuses_invalid_users_with_422(sandbox, rf, body, field):
    before = len(sandbox.rf_users())
    assert_rf_error(rf.create_user(**body), 422, field)
    assert len(sandbox.rf_users()) == before


def test_duplicate_email_in_the_campaign_is_422_but_another_campaign_may_have_it(sandbox, rf):
    lead = sandbox.rf_users(campaign_id=sandbox.credentials.campaign_id, type="person_invited")[0]
    body = assert_rf_error(rf.create_user(email=lead["email"].upper()), 422, "email")
    assert "already exists" in body["errors"]["email"][0]["message"]
    twins = [u for u in sandbox.rf_users() if u["email"].casefold() == lead["email"].casefold()]
    assert {u["campaign_id"] for u in twins} == {
        sandbox.credentials.campaign_id,
        sandbox.credentials.paused_campaign_id,
    }


def test_a_paused_campaign_takes_no_new_users(sandbox, rf):
    assert_rf_error(rf.create_user(campaign_id=sandbox.credentials.paused_campaign_id), 422, "campaign_id")
    sandbox.pause_campaign(sandbox.credentials.campaign_id)
    assert_rf_error(rf.create_user(), 422, "campaign_id")
    assert rf.get(f"/campaigns/{sandbox.credentials.campaign_id}").json()["data"]["status"] == "paused"


def test_get_users_ignores_campaign_id_and_pages_like_laravel(sandbox, rf):
    everyone = sandbox.rf_users()
    body = rf.get("/users", params={"campaign_id": sandbox.credentials.campaign_id, "per_page": 5}).json()
    assert {u["campaign_id"] for u in rf.get("/users", params={"per_page": 250}).json()["data"]} == {
        sandbox.credentials.campaign_id,
        sandbox.credentials.paused_campaign_id,
    }
    meta = body["meta"]
    assert (meta["current_page"], meta["per_page"], meta["total"], meta["from"], meta["to"]) == (
        1,
        5,
        len(everyone),
        1,
        5,
    )
    assert meta["last_page"] == -(-len(everyone) // 5)
    assert body["links"]["prev"] is None and "page=2" in body["links"]["next"]
    ids, url = [], "/users?per_page=5"
    while url:
        page = rf.get(url.replace(sandbox.rf_api_url, "")).json()
        ids += [u["id"] for u in page["data"]]
        url = page["links"]["next"]
    assert ids == [u["id"] for u in everyone]
    assert rf.get("/users").json()["meta"]["per_page"] == 25
    assert_rf_error(rf.get("/users", params={"per_page": 251}), 422, "per_page")
    assert_rf_error(rf.get("/users", params={"page": 0}), 422, "page")


def test_get_user_by_id_code_or_email(sandbox, rf):
    user = sandbox.rf_users(type="person_invited")[0]
    for identifier in (user["id"], user["code"], user["email"].upper()):
        response = rf.get(f"/users/{identifier}")
        assert response.status_code == 200 and response.json()["data"]["id"] == user["id"]
    assert_rf_error(rf.get("/users/999999"), 404)


def test_search_by_campaign_and_email_case_insensitively(sandbox, rf):
    campaign = sandbox.credentials.campaign_id
    lead = sandbox.rf_users(campaign_id=campaign, type="person_invited")[2]
    rows = search(rf, ("campaign_id", str(campaign), "="), ("email", lead["email"].upper(), "=")).json()["data"]
    assert [u["id"] for u in rows] == [lead["id"]]
    everyone = search(rf, ("campaign_id", campaign, "="), per_page=4).json()
    assert everyone["meta"]["total"] == len(sandbox.rf_users(campaign_id=campaign))
    assert len(everyone["data"]) == 4 and everyone["links"]["next"]
    leads = search(rf, ("campaign_id", campaign, "="), ("type", "person_invited", "=")).json()["data"]
    assert [u["id"] for u in leads] == [u["id"] for u in sandbox.rf_users(campaign_id=campaign, type="person_invited")]
    either = search(rf, ("code", lead["code"], "="), ("id", sandbox.rf_users()[0]["id"], "="), operator="OR").json()
    assert {u["id"] for u in either["data"]} == {lead["id"], sandbox.rf_users()[0]["id"]}
    like = search(rf, ("email", "%@example.net", "like"), ("campaign_id", campaign, "=")).json()["data"]
    assert like and all(u["email"].lower().endswith("@example.net") for u in like)
    assert_rf_error(search(rf, ("phone", "1", "=")), 422, "filters.value.0.field")
    assert_rf_error(rf.post("/users/search", json={"where": {}}), 422, "filters")


def test_update_user(sandbox, rf):
    user, other = sandbox.rf_users(campaign_id=sandbox.credentials.campaign_id)[:2]
    response = rf.put(
        f"/users/{user['id']}", json={"first_name": "Renée", "meta": [{"field": "Last Name", "value": "X"}]}
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["first_name"] == "Renée" and {"field": "Last Name", "value": "X"} in data["meta"]
    assert_rf_error(rf.put(f"/users/{user['id']}", json={"email": other["email"]}), 422, "email")
    assert_rf_error(rf.put("/users/999999", json={"first_name": "x"}), 404)


def test_qualification_by_id_code_or_email(sandbox, rf):
    campaign = sandbox.credentials.campaign_id
    leads = sandbox.rf_users(campaign_id=campaign, type="person_invited")
    by_id = rf.put("/users/qualification", json={"qualified": True, "id": leads[0]["id"]})
    assert by_id.status_code == 200 and by_id.json()["data"]["qualified_at"]
    rf.put("/users/qualification", json={"qualified": True, "code": leads[1]["code"]})
    rf.put("/users/qualification", json={"qualified": True, "email": leads[2]["email"], "campaign_id": campaign})
    assert [sandbox.qualified(lead["id"]) for lead in leads[:4]] == [True, True, True, False]
    first = sandbox.rf_users(campaign_id=campaign, type="person_invited")[0]["qualified_at"]
    rf.put("/users/qualification", json={"qualified": True, "id": leads[0]["id"]})  # idempotent
    assert sandbox.rf_users(campaign_id=campaign, type="person_invited")[0]["qualified_at"] == first
    rf.put("/users/qualification", json={"qualified": False, "id": leads[0]["id"]})
    assert not sandbox.qualified(leads[0]["id"])


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"qualified": True}, 422),
        ({"qualified": True, "id": 1, "code": "x"}, 422),
        ({"qualified": True, "email": "a@b.c"}, 422),
        ({"qualified": "yes", "id": 1}, 422),
        ({"qualified": True, "id": 999999}, 404),
        ({"qualified": True, "code": "NOSUCHCD"}, 404),
    ],
)
def test_qualification_refusals(rf, body, status):
    assert_rf_error(rf.put("/users/qualification", json=body), status)


def test_only_referred_users_can_be_qualified(sandbox, rf):
    referrer = sandbox.rf_users(type="person_referring")[0]
    assert_rf_error(rf.put("/users/qualification", json={"qualified": True, "id": referrer["id"]}), 422, "id")


def test_campaigns_by_id_or_code(sandbox, rf):
    body = rf.get("/campaigns").json()
    assert [c["status"] for c in body["data"]] == ["launched", "paused"] and body["meta"]["total"] == 2
    launched = body["data"][0]
    assert rf.get(f"/campaigns/{launched['code']}").json()["data"] == launched
    assert {f["label"] for f in launched["fields"]["person_invited"]} >= {"First Name", "Email", "Last Name"}
    assert_rf_error(rf.get("/campaigns/NOPE"), 404)


def test_delete_user(sandbox, rf):
    user = rf.create_user(email="gone@example.com").json()["data"]
    assert rf.delete(f"/users/{user['id']}").status_code == 200
    assert_rf_error(rf.get(f"/users/{user['id']}"), 404)
    assert rf.create_user(email="gone@example.com").status_code == 201  # the e-mail is free again


def test_bad_json_and_unknown_routes(rf):
    response = rf.post("/users", content=b"{nope", headers={"Content-Type": "application/json"})
    assert_rf_error(response, 400)
    assert_rf_error(rf.get("/rewards"), 404)
    assert_rf_error(rf.patch("/users/qualification", json={}), 405)


def test_seeded_leads_are_credited_to_referrers(sandbox):
    campaign = sandbox.credentials.campaign_id
    referrers = {u["id"] for u in sandbox.rf_users(campaign_id=campaign, type="person_referring")}
    leads = sandbox.rf_users(campaign_id=campaign, type="person_invited")
    assert len(referrers) == 3 and len(leads) == 8
    assert {lead["referrer_id"] for lead in leads} == referrers
    assert any(not lead["first_name"].isascii() for lead in leads)
    added = sandbox.add_leads(2)
    assert [u["type"] for u in added] == ["person_invited"] * 2 and all(u["referrer_id"] in referrers for u in added)
