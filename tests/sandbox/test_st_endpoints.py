"""Every ServiceTitan endpoint the sandbox serves refuses what the spec forbids, in the real shape."""

from __future__ import annotations

import pytest
from contract import assert_problem

LISTS = [
    "{bookings}",
    "{crm}/bookings",
    "{bookings}/{booking}/contacts",
    "{crm}/bookings/{booking}/contacts",
    "{crm}/booking-provider-tags",
    "{crm}/customers",
    "{crm}/customers/custom-fields",
    "{crm}/customers/contacts",
    "{crm}/customers/{customer}/contacts",
    "{jpm}/jobs",
    "{jpm}/job-types",
]
FEEDS = ["{crm}/export/customers", "{crm}/export/customers/contacts", "{crm}/export/bookings", "{jpm}/export/jobs"]
ONE = [
    "{bookings}/{missing}",
    "{crm}/bookings/{missing}",
    "{crm}/booking-provider-tags/{missing}",
    "{crm}/customers/{missing}",
    "{crm}/customers/{missing}/contacts",
    "{jpm}/jobs/{missing}",
]


@pytest.fixture
def paths(sandbox, st):
    booking = st.create_booking()
    values = {
        "bookings": st.bookings,
        "crm": st.crm,
        "jpm": st.jpm,
        "booking": booking["id"],
        "customer": sandbox.customers()[0]["id"],
        "missing": 424242,
    }
    return lambda template: template.format(**values)


@pytest.mark.parametrize("template", LISTS)
def test_every_list_answers_a_page_and_refuses_a_page_below_1(st, paths, template):
    path = paths(template)
    extra = {"customerIds": "1"} if path.endswith("/customers/contacts") else {}
    ok = st.get(path, params={"pageSize": 2, **extra})
    assert ok.status_code == 200, ok.text
    assert set(ok.json()) == {"page", "pageSize", "hasMore", "totalCount", "data"}
    assert_problem(st.get(path, params={"page": 0, **extra}), 400, "page")
    assert_problem(st.get(path, params={"pageSize": "many", **extra}), 400, "pageSize")


@pytest.mark.parametrize("template", FEEDS)
def test_every_feed_refuses_a_bad_token(st, paths, template):
    assert st.get(paths(template)).status_code == 200
    assert_problem(st.get(paths(template), params={"from": "not a token"}), 400, "from")


@pytest.mark.parametrize("template", ONE)
def test_every_single_record_endpoint_is_404_for_an_unknown_id(st, paths, template):
    assert_problem(st.get(paths(template)), 404)


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("POST", "{bookings}", {"name": 1}),
        ("PATCH", "{bookings}/{booking}", {"name": 1}),
        ("POST", "{bookings}/{booking}/contacts", {"type": "Email", "value": 1}),
        ("PATCH", "{crm}/customers/{customer}", {"name": 1}),
        ("POST", "{crm}/customers/{customer}/contacts", {"type": "Email", "value": 1}),
    ],
)
def test_every_write_validates_its_body(st, paths, method, template, body):
    response = st.request(method, paths(template), json=body)
    problem = assert_problem(response, 400)
    assert any(key.startswith("$.") for key in problem["errors"]), problem
