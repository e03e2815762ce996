"""Customers, custom-field types and customer contacts."""

from __future__ import annotations

import pytest
from contract import assert_problem, assert_schema

REFERRAL_LINK, REFERRAL_CODE, GATE_CODE = 102, 103, 101
FULL_ADDRESS = {
    "street": "1 Main St", "unit": None, "city": "Austin", "state": "TX", "zip": "78701", "country": "USA",
    "latitude": 30.1, "longitude": -97.7,
}  # fmt: skip


def all_customers(st, **params):
    rows, page = [], 1
    while True:
        body = st.get(st.crm + "/customers", params={"page": page, "pageSize": 15, **params}).json()
        rows += body["data"]
        if not body["hasMore"]:
            return rows
        page += 1


def test_list_is_active_only_by_default(sandbox, st):
    everyone = sandbox.customers()
    active = [c["id"] for c in everyone if c["active"]]
    assert len(active) < len(everyone)
    assert [c["id"] for c in all_customers(st)] == active
    assert [c["id"] for c in all_customers(st, active="Any")] == [c["id"] for c in everyone]
    assert [c["id"] for c in all_customers(st, active="False")] == [c["id"] for c in everyone if not c["active"]]
    assert_problem(st.get(st.crm + "/customers", params={"active": "Maybe"}), 400, "active")
    # Enum values are spelt as the spec lists them (the strict reading).
    assert_problem(st.get(st.crm + "/customers", params={"active": "any"}), 400, "active")


def test_customers_match_the_spec(st):
    for customer in all_customers(st, active="Any"):
        assert_schema("Crm.V2.Customers.CustomerResponse", customer)


def test_filters_by_ids_and_name(sandbox, st):
    some = sandbox.customers()[:3]
    body = st.get(st.crm + "/customers", params={"ids": ",".join(str(c["id"]) for c in some), "active": "Any"}).json()
    assert [c["id"] for c in body["data"]] == [c["id"] for c in some]
    name = some[0]["name"]
    named = st.get(st.crm + "/customers", params={"name": name.split()[0].upper(), "active": "Any"}).json()["data"]
    assert some[0]["id"] in [c["id"] for c in named]
    assert all(name.split()[0].casefold() in c["name"].casefold() for c in named)


def test_get_customer_and_404(sandbox, st):
    customer = sandbox.customers()[0]
    assert st.get(f"{st.crm}/customers/{customer['id']}").json() == customer
    body = assert_problem(st.get(f"{st.crm}/customers/1"), 404)
    assert body["title"] == "Customer not found"


def test_patch_custom_fields_replaces_the_whole_list(sandbox, st):
    customer = next(c for c in sandbox.customers() if any(f["typeId"] == GATE_CODE for f in c["customFields"]))
    gate = next(f for f in customer["customFields"] if f["typeId"] == GATE_CODE)
    path = f"{st.crm}/customers/{customer['id']}"
    # Only the new field sent: the Gate Code is lost (the cautious reading of the spec).
    response = st.patch(path, json={"customFields": [{"typeId": REFERRAL_CODE, "value": "ueONFmUp"}]})
    assert response.status_code == 200
    after = response.json()
    assert_schema("Crm.V2.Customers.CustomerResponse", after)
    assert after["customFields"] == [{"typeId": REFERRAL_CODE, "name": "Referral Code", "value": "ueONFmUp"}]
    assert after["modifiedOn"] > customer["modifiedOn"]
    # Read-modify-write keeps every other field.
    kept = [{"typeId": f["typeId"], "value": f["value"]} for f in after["customFields"]]
    fields = [
        *kept,
        {"typeId": GATE_CODE, "value": gate["value"]},
        {"typeId": REFERRAL_LINK, "value": "https://x/ueONFmUp"},
    ]
    after = st.patch(path, json={"customFields": fields}).json()
    assert {f["name"]: f["value"] for f in after["customFields"]} == {
        "Referral Code": "ueONFmUp", "Gate Code": gate["value"], "Referral Link": "https://x/ueONFmUp",
    }  # fmt: skip
    assert sandbox.customer(customer["id"]) == after


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"customFields": [{"typeId": 999, "value": "x"}]}, "CustomFields[0].TypeId"),
        ({"customFields": [{"typeId": REFERRAL_CODE, "value": 5}]}, "$.customFields[0].value"),
        ({"customFields": [{"typeId": REFERRAL_CODE}]}, "CustomFields[0].Value"),
        ({"customFields": [{"name": "Referral Code", "value": "x"}]}, "$.customFields[0].name"),
        ({"active": False}, "Active"),
        ({"type": "Business"}, "$.type"),
        ({"address": {k: v for k, v in FULL_ADDRESS.items() if k != "latitude"}}, "Address.Latitude"),
        ({"doNotMail": "no"}, "$.doNotMail"),
    ],
)
def test_patch_refuses_what_the_spec_refuses(sandbox, st, body, key):
    customer = sandbox.customers()[0]
    assert_problem(st.patch(f"{st.crm}/customers/{customer['id']}", json=body), 400, key)
    assert sandbox.customer(customer["id"]) == customer


def test_patch_address_and_external_data(sandbox, st):
    customer = sandbox.customers()[0]
    path = f"{st.crm}/customers/{customer['id']}"
    after = st.patch(path, json={"address": FULL_ADDRESS, "doNotMail": True}).json()
    assert after["address"] == FULL_ADDRESS and after["doNotMail"] is True
    guid = "7f1c4c1e-3a0b-4d55-9a1e-1b2c3d4e5f60"
    st.patch(path, json={"externalData": {"applicationGuid": guid, "externalData": [{"key": "a", "value": "1"}]}})
    st.patch(
        path,
        json={
            "externalData": {
                "patchMode": "Merge",
                "applicationGuid": guid,
                "externalData": [{"key": "b", "value": "2"}],
            }
        },
    )
    body = st.get(st.crm + "/customers", params={"ids": customer["id"], "externalDataApplicationGuid": guid}).json()
    assert body["data"][0]["externalData"] == [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    assert_problem(st.patch(path, json={"externalData": {"applicationGuid": "nope", "externalData": []}}), 400)


def test_custom_field_types(sandbox, st):
    body = st.get(st.crm + "/customers/custom-fields").json()
    names = {t["name"]: t["id"] for t in body["data"]}
    assert names["Referral Link"] == REFERRAL_LINK and names["Referral Code"] == REFERRAL_CODE and "Gate Code" in names
    for field_type in body["data"]:
        assert_schema("Crm.V2.Customers.CustomFieldTypeResponse", field_type)
    sandbox.delete_custom_field_type("Referral Link")
    assert "Referral Link" not in {t["name"] for t in st.get(st.crm + "/customers/custom-fields").json()["data"]}
    customer = sandbox.customers()[0]
    assert_problem(
        st.patch(
            f"{st.crm}/customers/{customer['id']}", json={"customFields": [{"typeId": REFERRAL_LINK, "value": "x"}]}
        ),
        400,
        "CustomFields[0].TypeId",
    )


def test_customer_contacts_list_create_patch_delete(sandbox, st):
    customer = sandbox.customers()[0]
    path = f"{st.crm}/customers/{customer['id']}/contacts"
    before = st.get(path).json()["data"]
    for contact in before:
        assert_schema("Crm.V2.Customers.CustomerContactWithModifiedOnResponse", contact)
    created = st.post(path, json={"type": "Email", "value": "second@example.com", "memo": "work"})
    assert created.status_code == 200
    contact = created.json()
    assert_schema("Crm.V2.Customers.CustomerContactWithModifiedOnResponse", contact)
    assert_problem(st.post(path, json={"type": "Pager", "value": "1"}), 400, "$.type")
    patched = st.patch(f"{path}/{contact['id']}", json={"value": "third@example.com"}).json()
    assert patched["value"] == "third@example.com" and patched["modifiedOn"] > contact["modifiedOn"]
    assert st.delete(f"{path}/{contact['id']}").status_code == 200
    assert [c["id"] for c in st.get(path).json()["data"]] == [c["id"] for c in before]
    assert_problem(st.delete(f"{path}/{contact['id']}"), 404)
    assert_problem(st.get(f"{st.crm}/customers/1/contacts"), 404)


def test_contacts_of_many_customers_need_a_filter(sandbox, st):
    path = st.crm + "/customers/contacts"
    assert_problem(st.get(path), 400)
    ids = [c["id"] for c in sandbox.customers()[:5]]
    rows = st.get(path, params={"customerIds": ",".join(map(str, ids)), "pageSize": 200}).json()["data"]
    assert {r["customerId"] for r in rows} <= set(ids)
    assert len(rows) == sum(len([c for c in sandbox.contacts(i) if c["active"]]) for i in ids)
    for row in rows:
        assert_schema("Crm.V2.Customers.CustomerContactWithModifiedOnAndCustomerIdResponse", row)
    recent = st.get(path, params={"modifiedOnOrAfter": "2000-01-01"}).json()
    assert recent["data"]
    assert_problem(st.get(path, params={"customerIds": ",".join(str(i) for i in range(51))}), 400, "customerIds")


def test_seeded_customers_cover_the_awkward_cases(sandbox):
    customers = sandbox.customers()
    contacts = sandbox.contacts()
    emails = {
        c["id"]: [x["value"] for x in contacts if x["customerId"] == c["id"] and x["type"] == "Email"]
        for c in customers
    }
    assert any(c["type"] == "Commercial" for c in customers)
    assert any(not c["name"].isascii() for c in customers)
    assert any(not c["active"] and c["mergedToId"] is None for c in customers)  # deactivated
    assert any(not c["active"] and c["mergedToId"] is not None for c in customers)  # merged
    assert any(not e for e in emails.values())  # no e-mail
    assert any(len(e) == 2 for e in emails.values())  # two e-mails
    assert any(e and "@" not in e[0] for e in emails.values())  # malformed
    assert any(x["type"] == "Phone" for x in contacts) and any(x["type"] == "MobilePhone" for x in contacts)
    assert any(any(f["name"] == "Gate Code" for f in c["customFields"]) for c in customers)
