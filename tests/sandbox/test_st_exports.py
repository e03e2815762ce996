"""Export feeds: continuation tokens in modifiedOn order, re-appearing changes, lag, dates."""

from __future__ import annotations

import pytest
from contract import ServiceTitanApi, assert_problem, assert_schema

BATCH = 7


@pytest.fixture
def small_batches(make_sandbox):
    sb = make_sandbox(export_batch_size=BATCH)
    api = ServiceTitanApi(sb)
    yield sb, api
    api.close()


def read_feed(api, path, start=None, *, recent=True):
    """Every batch from ``start`` until hasMore is false: (rows, batches, last token)."""
    rows, batches, token = [], 0, start
    while True:
        params = {"includeRecentChanges": "true" if recent else "false"}
        if token is not None:
            params["from"] = token
        response = api.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"hasMore", "continueFrom", "data"} and isinstance(body["continueFrom"], str)
        rows += body["data"]
        batches += 1
        token = body["continueFrom"]
        if not body["hasMore"]:
            return rows, batches, token


def test_customer_feed_returns_every_customer_once_in_modified_order(small_batches):
    sb, api = small_batches
    rows, batches, _ = read_feed(api, api.crm + "/export/customers")
    everyone = sb.customers()
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in everyone)  # inactive and merged included
    assert batches == -(-len(everyone) // BATCH)
    order = [(r["modifiedOn"], r["id"]) for r in rows]
    assert order == sorted(order)
    assert [r["id"] for r in rows] != sorted(r["id"] for r in rows)  # not an id scan
    for row in rows:
        assert_schema("Crm.V2.ExportCustomerResponse", row)


def test_a_token_is_reusable_and_a_modified_customer_reappears(small_batches):
    sb, api = small_batches
    path = api.crm + "/export/customers"
    first = api.get(path, params={"includeRecentChanges": "true"}).json()
    again = api.get(path, params={"from": first["continueFrom"], "includeRecentChanges": "true"}).json()
    same = api.get(path, params={"from": first["continueFrom"], "includeRecentChanges": "true"}).json()
    assert again == same and again["data"][0]["id"] not in {r["id"] for r in first["data"]}
    _, _, caught_up = read_feed(api, path)
    assert read_feed(api, path, caught_up)[0] == []  # nothing new
    returned = first["data"][0]
    sb.modify_customer(returned["id"], name="Renamed Customer")
    api.patch(f"{api.crm}/customers/{first['data'][1]['id']}", json={"doNotService": True})
    rows, _, _ = read_feed(api, path, caught_up)
    assert [(r["id"], r["name"]) for r in rows][0] == (returned["id"], "Renamed Customer")
    assert [r["id"] for r in rows] == [returned["id"], first["data"][1]["id"]]


def test_new_customers_arrive_at_the_end_of_the_feed(small_batches):
    sb, api = small_batches
    path = api.crm + "/export/customers"
    _, _, caught_up = read_feed(api, path)
    added = sb.add_customers(3) + [sb.add_customer("Zoë Ångström", email="zoe@example.com")]
    rows, _, _ = read_feed(api, path, caught_up)
    assert [r["id"] for r in rows] == [c["id"] for c in added]


def test_recent_changes_lag_unless_asked_for(small_batches):
    sb, api = small_batches
    path = api.crm + "/export/customers"
    lagging, _, token = read_feed(api, path, recent=False)
    assert len(lagging) == len(sb.customers())  # the seeded data is old
    added = sb.add_customer("Fresh Customer", email="fresh@example.com")
    assert read_feed(api, path, token, recent=False)[0] == []
    assert [r["id"] for r in read_feed(api, path, token, recent=True)[0]] == [added["id"]]


def test_from_a_date_means_modified_on_or_after_it(small_batches):
    sb, api = small_batches
    path = api.crm + "/export/customers"
    cutoff = sorted(c["modifiedOn"] for c in sb.customers())[20]
    rows, _, _ = read_feed(api, path, cutoff[:10])
    assert rows and all(r["modifiedOn"][:10] >= cutoff[:10] for r in rows)
    assert len(rows) == len([c for c in sb.customers() if c["modifiedOn"][:10] >= cutoff[:10]])


def test_a_bad_token_is_400(st):
    assert_problem(st.get(st.crm + "/export/customers", params={"from": "garbage!"}), 400, "from")
    assert_problem(st.get(st.crm + "/export/customers", params={"includeRecentChanges": "often"}), 400)


def test_contact_feed_rows_carry_customer_and_active(small_batches):
    sb, api = small_batches
    path = api.crm + "/export/customers/contacts"
    rows, _, token = read_feed(api, path)
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in sb.contacts())
    for row in rows:
        assert_schema("Crm.V2.ExportCustomerContactResponse", row)
    customer = sb.customers()[0]
    contact = next(c for c in sb.contacts(customer["id"]) if c["type"] == "Email")
    sb.modify_customer(customer["id"], email="changed@example.com")
    api.delete(f"{api.crm}/customers/{customer['id']}/contacts/{contact['id']}")
    rows, _, _ = read_feed(api, path, token)
    assert [(r["id"], r["value"], r["active"]) for r in rows] == [(contact["id"], "changed@example.com", False)]


def test_booking_and_job_feeds(sandbox, st):
    booking = st.create_booking()
    rows, _, token = read_feed(st, st.crm + "/export/bookings")
    assert [r["id"] for r in rows] == [booking["id"]]
    assert_schema("Crm.V2.ExportBookingResponse", rows[0])
    job = sandbox.convert_booking_to_job(booking["id"])
    rows, _, _ = read_feed(st, st.crm + "/export/bookings", token)
    assert [(r["id"], r["jobId"]) for r in rows] == [(booking["id"], job["id"])]
    jobs, _, _ = read_feed(st, st.jpm + "/export/jobs")
    assert [j["id"] for j in jobs] == [job["id"]]
    assert_schema("Jpm.V2.ExportJobsResponse", jobs[0])
