"""Referral Factory variants (api/referral-factory.md §11) and the stricter default readings:
cursor paging, a search that refuses ``type`` or large pages, mixed meta values, lookup lag,
e-mails Referral Factory refuses, the admin-only 403 versus the IP block, an HTML route 404."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest
from contract import assert_rf_error, raw_get

from stsync.sandbox import Faults, Variants


def search(rf, *conditions, url="/users/search", **params):
    body = {"filters": {"operator": "AND", "value": [{"field": f, "value": v, "operator": "="} for f, v in conditions]}}
    return rf.post(url, json=body, params=params)


def relative(sandbox, url: str) -> str:
    assert url.startswith(sandbox.rf_api_url), url
    return url[len(sandbox.rf_api_url) :]


def test_cursor_paging_lists_every_user_once_through_links_next(sandbox, rf):
    sandbox.set_variants(Variants(rf_cursor_paging=True))
    everyone = [u["id"] for u in sandbox.rf_users()]
    first = rf.get("/users", params={"per_page": 4}).json()
    assert first["links"]["first"] is None and first["links"]["last"] is None and first["links"]["prev"] is None
    assert set(first["meta"]) == {"path", "per_page", "next_cursor", "prev_cursor"}  # no last_page, no total
    query = parse_qs(urlsplit(first["links"]["next"]).query)
    assert set(query) == {"cursor", "per_page"} and query["per_page"] == ["4"]  # the request's parameters kept
    ids, url, pages = [], "/users?per_page=4", 0
    while url:
        page = rf.get(url).json()
        ids += [u["id"] for u in page["data"]]
        pages += 1
        url = page["links"]["next"] and relative(sandbox, page["links"]["next"])
    assert ids == everyone and pages == -(-len(everyone) // 4)
    # The cursor is opaque; "prev" leads back to the page before.
    second = rf.get(relative(sandbox, first["links"]["next"])).json()
    back = rf.get(relative(sandbox, second["links"]["prev"])).json()
    assert [u["id"] for u in back["data"]] == [u["id"] for u in first["data"]]


def test_cursor_paging_ignores_page_numbers(sandbox, rf):
    sandbox.set_variants(Variants(rf_cursor_paging=True))
    first = rf.get("/users", params={"per_page": 3}).json()["data"]
    for page in ("2", "5", "0", "x"):
        assert rf.get("/users", params={"per_page": 3, "page": page}).json()["data"] == first
    assert rf.get("/users", params={"per_page": 3, "cursor": "not-a-cursor"}).json()["data"] == first
    assert_rf_error(rf.get("/users", params={"per_page": 251}), 422, "per_page")


def test_cursor_paged_search_is_a_post_of_the_same_body_to_links_next(sandbox, rf):
    sandbox.set_variants(Variants(rf_cursor_paging=True))
    campaign = sandbox.credentials.campaign_id
    expected = [u["id"] for u in sandbox.rf_users(campaign_id=campaign)]
    ids, url = [], "/users/search?per_page=2"
    while url:
        page = search(rf, ("campaign_id", campaign), url=url).json()
        assert "last_page" not in page["meta"]
        ids += [u["id"] for u in page["data"]]
        url = page["links"]["next"] and relative(sandbox, page["links"]["next"])
    assert ids == expected
    sandbox.set_variants(None)  # the default: page numbers and meta.last_page
    page = search(rf, ("campaign_id", campaign), per_page=2).json()
    assert page["meta"]["last_page"] == -(-len(expected) // 2) and "page=2" in page["links"]["next"]


def test_a_search_may_refuse_the_type_field(sandbox, rf):
    campaign = sandbox.credentials.campaign_id
    assert search(rf, ("campaign_id", campaign), ("type", "person_invited")).status_code == 200
    sandbox.set_variants(Variants(rf_search_refuses_type=True))
    refused = search(rf, ("campaign_id", campaign), ("type", "person_invited"))
    body = assert_rf_error(refused, 422, "filters.value.1.field")
    assert "invalid" in body["errors"]["filters.value.1.field"][0]["message"]
    assert search(rf, ("campaign_id", campaign), ("email", "x@example.com")).status_code == 200


def test_a_search_may_refuse_pages_over_100(sandbox, rf):
    campaign = sandbox.credentials.campaign_id
    assert search(rf, ("campaign_id", campaign), per_page=250).status_code == 200
    assert_rf_error(search(rf, ("campaign_id", campaign), per_page=251), 422, "per_page")
    sandbox.set_variants(Variants(rf_search_max_per_page=100))
    assert search(rf, ("campaign_id", campaign), per_page=100).status_code == 200
    body = assert_rf_error(search(rf, ("campaign_id", campaign), per_page=101), 422, "per_page")
    assert "100" in body["message"]
    assert rf.get("/users", params={"per_page": 250}).status_code == 200  # GET /users keeps 250
    sandbox.set_variants(Variants(rf_search_max_per_page=100, rf_search_refuses_type=True))
    assert_rf_error(search(rf, ("type", "person_invited"), per_page=250), 422)  # both at once


def test_mixed_meta_values(sandbox, rf):
    leads = sandbox.rf_users(type="person_invited")
    assert all(isinstance(m["value"], (str, type(None))) for u in leads for m in u["meta"])
    listed = rf.create_user(email="list@example.com", meta=[{"field": "Service Needed", "value": ["a"]}])
    assert_rf_error(listed, 422, "meta")
    sandbox.set_variants(Variants(rf_mixed_meta=True))
    shown = rf.get("/users", params={"per_page": 250}).json()["data"]
    values = [m["value"] for u in shown for m in u["meta"]]
    assert any(isinstance(v, list) for v in values) and any(isinstance(v, dict) for v in values)
    assert any(isinstance(v, str) for v in values)  # mixed: most values stay text
    created = rf.create_user(
        email="mixed@example.com",
        meta=[{"field": "Service Needed", "value": ["AC repair", "Duct cleaning"]}, {"field": "Age", "value": 41}],
    )
    assert created.status_code == 201, created.text
    assert created.json()["data"]["meta"] == [
        {"field": "Service Needed", "value": ["AC repair", "Duct cleaning"]},
        {"field": "Age", "value": "41"},
    ]
    mixed_user = next(u for u in shown if any(isinstance(m["value"], dict) for m in u["meta"]))
    updated = rf.put(f"/users/{mixed_user['id']}", json={"meta": [{"field": "Last Name", "value": "Changed"}]}).json()
    assert {"field": "Last Name", "value": "Changed"} in updated["data"]["meta"]


def test_lookup_lag_hides_a_new_user_from_search_only(sandbox, rf):
    sandbox.set_variants(Variants(lookup_lag_seconds=0.6))
    created = rf.create_user(email="lagging@example.com").json()["data"]
    conditions = (("campaign_id", sandbox.credentials.campaign_id), ("email", "lagging@example.com"))
    assert search(rf, *conditions).json()["data"] == []
    assert rf.get(f"/users/{created['id']}").status_code == 200  # read by id at once
    assert_rf_error(rf.create_user(email="lagging@example.com"), 422, "email")  # the write path sees it
    time.sleep(0.7)
    assert [u["id"] for u in search(rf, *conditions).json()["data"]] == [created["id"]]
    sandbox.set_variants(None)
    other = rf.create_user(email="instant@example.com").json()["data"]
    assert [u["id"] for u in search(rf, ("email", "instant@example.com")).json()["data"]] == [other["id"]]


@pytest.mark.parametrize(
    "email",
    [
        "josé@example.com",
        "a,b@example.com",
        "a b@example.com",
        "a@exämple.com",
        "x" * 65 + "@example.com",
        "a@localhost",
    ],
)
def test_emails_referral_factory_refuses(sandbox, rf, email):
    body = assert_rf_error(rf.create_user(email=email), 422, "email")
    assert "valid email" in body["errors"]["email"][0]["message"]
    user = sandbox.rf_users(type="person_referring")[0]
    assert_rf_error(rf.put(f"/users/{user['id']}", json={"email": email}), 422, "email")


@pytest.mark.parametrize("email", ["o'brien+tag@example.co.uk", "First.Last@Example.COM", "a_b-c@sub.example.org"])
def test_emails_referral_factory_takes(rf, email):
    assert rf.create_user(email=email).status_code == 201


def test_an_admin_only_403_does_not_say_blocked_and_an_ip_block_does(sandbox, rf):
    assert rf.put("/users/qualification", json={"qualified": True, "id": 1}).status_code == 404
    sandbox.set_faults(Faults(rf_admin_403_path="/users/qualification"))
    refused = rf.put("/users/qualification", json={"qualified": True, "id": 1})
    body = assert_rf_error(refused, 403)
    assert "blocked" not in body["message"].lower() and "unauthorized" in body["message"]
    assert rf.get("/campaigns").status_code == 200  # only that endpoint
    sandbox.set_faults(None)
    sandbox.block_ips()
    blocked = assert_rf_error(rf.get("/campaigns"), 403)
    assert "blocked" in blocked["message"]
    sandbox.unblock_ips()
    assert rf.get("/campaigns").status_code == 200


def test_a_wrong_path_prefix_may_answer_an_html_404(sandbox, rf):
    default = raw_get(sandbox.base_url + "/api/v3/users")
    assert default.status_code == 404 and default.headers["content-type"].startswith("application/json")
    sandbox.set_variants(Variants(html_route_404=True))
    for path in ("/api/v3/users", "/v2/users/12", "/crm/v1/tenant/1/customers", "/"):
        response = raw_get(sandbox.base_url + path)
        assert response.status_code == 404 and response.headers["content-type"].startswith("text/html")
        assert "<h1>404 Not Found</h1>" in response.text
    # The API's own not-found stays JSON, with the variant on.
    assert_rf_error(rf.get("/users/999999"), 404)
    assert_rf_error(rf.get("/userz"), 404)


def test_variants_switch_at_run_time_over_http(sandbox, rf):
    from stsync.sandbox import RemoteSandbox

    remote = RemoteSandbox(sandbox.base_url)
    assert remote.variants() == Variants()
    remote.set_variants(Variants(rf_cursor_paging=True, st_429="bare"))
    assert sandbox.variants == Variants(rf_cursor_paging=True, st_429="bare")
    assert "next_cursor" in rf.get("/users").json()["meta"]
    remote.set_variants(None)
    assert "last_page" in rf.get("/users").json()["meta"]
    assert rf.put(sandbox.base_url + "/_sandbox/variants", json={"st_429": "weird"}).status_code == 400
    assert rf.put(sandbox.base_url + "/_sandbox/variants", json={"cursor": True}).status_code == 400
    assert sandbox.variants == Variants()
