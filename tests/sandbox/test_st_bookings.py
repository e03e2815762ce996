"""Bookings through the booking provider (and tenant-wide): create, validate, list, page, get, patch."""

from __future__ import annotations

import pytest
from contract import assert_problem, assert_schema, booking_body


def test_create_answers_a_booking_response_as_the_spec_states_it(sandbox, st):
    response = st.post(st.bookings, json=booking_body(start="2025-06-02T15:00:00Z", priority="High"))
    assert response.status_code == 200
    booking = response.json()
    assert_schema("Crm.V2.BookingResponse", booking)
    assert booking["status"] == "New" and booking["jobId"] is None
    assert booking["externalId"] == "ueONFmUp"
    assert booking["bookingProviderId"] == sandbox.credentials.booking_provider
    assert booking["start"] == "2025-06-02T15:00:00Z" and booking["priority"] == "High"
    assert "contacts" not in booking  # contacts are not part of BookingResponse
    assert [c["value"] for c in sandbox.booking_contacts(booking["id"])] == ["jane@example.com", "8185550100"]
    assert sandbox.bookings(external_id="ueONFmUp") == [booking]


def test_a_booking_without_start_gets_its_creation_time(st):
    booking = st.create_booking()
    assert booking["start"] == booking["createdOn"]


def test_address_alone_is_enough_to_reach_the_customer(st):
    address = {"street": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"}
    booking = st.create_booking(contacts=..., address=address)
    assert booking["address"] == {**address, "unit": None}


FORBIDDEN = [
    ("missing source", {"source": ...}, "Source"),
    ("missing externalId", {"externalId": ...}, "ExternalId"),
    ("empty name", {"name": ""}, "Name"),
    ("null summary", {"summary": None}, "Summary"),
    ('"Yes" for a boolean', {"isFirstTimeClient": "Yes"}, "$.isFirstTimeClient"),
    ("unknown contact type", {"contacts": [{"type": "Cell", "value": "8185550100"}]}, "$.contacts[0].type"),
    ("contact without value", {"contacts": [{"type": "Email"}]}, "Contacts[0].Value"),
    ("incomplete address", {"address": {"street": "1 Main St", "city": "Austin"}}, "Address.Zip"),
    ("unknown property", {"isFirstTimeCustomer": True}, "$.isFirstTimeCustomer"),
    ("not RFC 3339", {"start": "06/02/2025 3pm"}, "$.start"),
    ("date without time", {"start": "2025-06-02"}, "$.start"),
    ("string id", {"campaignId": "12"}, "$.campaignId"),
    ("unknown priority", {"priority": "ASAP"}, "$.priority"),
    ("unknown customer type", {"customerType": "Residental"}, "CustomerType"),
    ("neither address nor phone/email", {"contacts": [{"type": "Fax", "value": "8185550100"}]}, "Contacts"),
    ("no contacts at all", {"contacts": []}, "Contacts"),
]


@pytest.mark.parametrize(("change", "key"), [(c, k) for _, c, k in FORBIDDEN], ids=[n for n, _, _ in FORBIDDEN])
def test_a_body_the_spec_forbids_is_400_and_creates_nothing(sandbox, st, change, key):
    response = st.post(st.bookings, json=booking_body(**change))
    body = assert_problem(response, 400, key)
    assert body["title"] == "One or more validation errors occurred."
    assert sandbox.bookings() == []


def test_a_json_conversion_error_names_the_path_and_the_dotnet_type(st):
    body = assert_problem(st.post(st.bookings, json=booking_body(isFirstTimeClient="Yes")), 400)
    assert body["errors"]["$.isFirstTimeClient"] == [
        "The JSON value could not be converted to System.Boolean. Path: $.isFirstTimeClient."
    ]
    assert body["errors"]["crm.V2.CreateBookingRequest"] == ["The crm.V2.CreateBookingRequest field is required."]


def test_every_missing_field_is_reported_at_once(st):
    body = assert_problem(st.post(st.bookings, json={"contacts": [{"type": "Email", "value": "a@b.c"}]}), 400)
    assert set(body["errors"]) == {"Source", "Name", "Summary", "IsFirstTimeClient", "ExternalId"}
    assert body["errors"]["Name"] == ["The Name field is required."]


@pytest.mark.parametrize(
    ("content", "headers", "status", "key"),
    [
        (b"", {"Content-Type": "application/json"}, 400, ""),
        (b"{not json", {"Content-Type": "application/json"}, 400, "$"),
        (b'{"name": "x"}', {"Content-Type": "text/plain"}, 415, None),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "$"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(sandbox, st, content, headers, status, key):
    response = st.post(st.bookings, content=content, headers=headers)
    assert_problem(response, status, *([key] if key is not None else []))
    assert sandbox.bookings() == []


def test_external_id_is_not_unique_so_a_second_create_is_a_second_booking(st):
    first = st.create_booking(externalId="DUP1")
    second = st.create_booking(externalId="DUP1")
    st.create_booking(externalId="OTHER")
    found = st.get(st.bookings, params={"externalId": "DUP1"}).json()
    assert [b["id"] for b in found["data"]] == [first["id"], second["id"]]
    assert st.get(st.bookings, params={"externalId": "dup1"}).json()["data"] == []  # exact match


def test_paging_follows_has_more_and_counts_only_when_asked(st):
    created = [st.create_booking(externalId=f"P{i}")["id"] for i in range(7)]
    seen = []
    for page, more in ((1, True), (2, True), (3, False)):
        body = st.get(st.bookings, params={"page": page, "pageSize": 3}).json()
        assert (body["page"], body["pageSize"], body["hasMore"], body["totalCount"]) == (page, 3, more, None)
        seen += [b["id"] for b in body["data"]]
    assert seen == created
    body = st.get(st.bookings, params={"includeTotal": "true", "pageSize": 3}).json()
    assert body["totalCount"] == 7
    default = st.get(st.bookings).json()
    assert default["page"] == 1 and default["pageSize"] == 50 and len(default["data"]) == 7


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"page": 0}, "page"),
        ({"page": "abc"}, "page"),
        ({"pageSize": 5001}, "pageSize"),
        ({"pageSize": 0}, "pageSize"),
        ({"includeTotal": "yes"}, "includeTotal"),
        ({"ids": ",".join(str(i) for i in range(1, 52))}, "ids"),
        ({"ids": "1,x"}, "ids"),
        ({"modifiedOnOrAfter": "yesterday"}, "modifiedOnOrAfter"),
        ({"createdBefore": "2025-13-45T00:00:00Z"}, "createdBefore"),
        ({"sort": "+Name"}, "sort"),
        ({"sort": " Id"}, "sort"),  # an unencoded "+" arrives as a space
    ],
)
def test_query_values_of_the_wrong_type_are_400(st, params, key):
    assert_problem(st.get(st.bookings, params=params), 400, key)


def test_ids_filter_sort_and_date_filters(st):
    ids = [st.create_booking(externalId=f"S{i}")["id"] for i in range(4)]
    body = st.get(st.bookings, params={"ids": f"{ids[3]},{ids[1]},999", "sort": "-Id"}).json()
    assert [b["id"] for b in body["data"]] == [ids[3], ids[1]]
    body = st.get(st.bookings, params={"sort": "-ModifiedOn"}).json()
    assert [b["id"] for b in body["data"]] == ids[::-1]
    third = st.get(f"{st.bookings}/{ids[2]}").json()
    body = st.get(st.bookings, params={"modifiedOnOrAfter": third["modifiedOn"]}).json()
    assert [b["id"] for b in body["data"]] == ids[2:]  # on-or-after is inclusive
    body = st.get(st.bookings, params={"createdBefore": third["createdOn"]}).json()
    assert [b["id"] for b in body["data"]] == ids[:2]  # before is exclusive


def test_unknown_query_parameters_are_ignored_and_names_are_case_insensitive(st):
    booking = st.create_booking(externalId="CASE")
    st.create_booking(externalId="OTHER")
    body = st.get(st.bookings, params={"externalid": "CASE", "frobnicate": "1", "PAGESIZE": "1"}).json()
    assert [b["id"] for b in body["data"]] == [booking["id"]] and body["pageSize"] == 1


def test_get_one_booking_and_404s(sandbox, st):
    booking = st.create_booking()
    got = st.get(f"{st.bookings}/{booking['id']}")
    assert got.status_code == 200 and got.json() == booking
    assert_problem(st.get(f"{st.bookings}/{booking['id'] + 999}"), 404)


def test_tenant_wide_bookings_list_every_provider(st):
    booking = st.create_booking()
    body = st.get(st.crm + "/bookings", params={"externalId": booking["externalId"]}).json()
    assert [b["id"] for b in body["data"]] == [booking["id"]]
    assert st.get(f"{st.crm}/bookings/{booking['id']}").json() == booking
    contacts = st.get(f"{st.crm}/bookings/{booking['id']}/contacts").json()["data"]
    assert [c["type"] for c in contacts] == ["Email", "MobilePhone"]
    for contact in contacts:
        assert_schema("Crm.V2.BookingContactResponse", contact)


def test_booking_contacts_can_be_added(st):
    booking = st.create_booking()
    response = st.post(f"{st.bookings}/{booking['id']}/contacts", json={"type": "Phone", "value": "5125550100"})
    assert response.status_code == 200
    assert_schema("Crm.V2.BookingContactResponse", response.json())
    listed = st.get(f"{st.bookings}/{booking['id']}/contacts").json()["data"]
    assert [c["value"] for c in listed][-1] == "5125550100"
    assert_problem(st.post(f"{st.bookings}/{booking['id']}/contacts", json={"type": "Phone"}), 400, "Value")


def test_patch_updates_fields_but_not_status_or_job(sandbox, st):
    booking = st.create_booking()
    response = st.patch(f"{st.bookings}/{booking['id']}", json={"summary": "Call after 5pm", "priority": "Urgent"})
    assert response.status_code == 200
    patched = response.json()
    assert (patched["summary"], patched["priority"]) == ("Call after 5pm", "Urgent")
    assert patched["modifiedOn"] > booking["modifiedOn"]
    assert_problem(st.patch(f"{st.bookings}/{booking['id']}", json={"status": "Converted"}), 400, "$.status")
    assert_problem(st.patch(f"{st.bookings}/{booking['id']}", json={"jobId": 5}), 400, "$.jobId")
    # A patched address needs all six parts (unit included).
    address = {"street": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"}
    assert_problem(st.patch(f"{st.bookings}/{booking['id']}", json={"address": address}), 400, "Address.Unit")
    sandbox.convert_booking_to_job(booking["id"])
    assert_problem(st.patch(f"{st.bookings}/{booking['id']}", json={"summary": "late"}), 409)


def test_booking_provider_tags(sandbox, st):
    body = st.get(st.crm + "/booking-provider-tags").json()
    ours = [t for t in body["data"] if t["id"] == sandbox.credentials.booking_provider]
    assert len(ours) == 1 and ours[0]["tagName"] == "Referral Factory" and len(body["data"]) == 2
    for tag in body["data"]:
        assert_schema("Crm.V2.GetBookingProviderTagResponse", tag)
    assert st.get(f"{st.crm}/booking-provider-tags/{ours[0]['id']}").json() == ours[0]
    assert_problem(st.get(f"{st.crm}/booking-provider-tags/1"), 404)
