"""Jobs (JPM v2) and the admin operations that make them: a CSR converts, dismisses, completes."""

from __future__ import annotations

import pytest
from contract import assert_problem, assert_schema

from stsync.sandbox import AdminError


def test_converting_a_booking_makes_a_job_and_links_both_ways(sandbox, st):
    booking = st.create_booking(name="Zoë Ångström")
    job = sandbox.convert_booking_to_job(booking["id"])
    assert_schema("Jpm.V2.JobResponse", job)
    assert (job["bookingId"], job["jobStatus"], job["completedOn"]) == (booking["id"], "Scheduled", None)
    after = st.get(f"{st.bookings}/{booking['id']}").json()
    assert (after["status"], after["jobId"]) == ("Converted", job["id"])
    assert after["modifiedOn"] > booking["modifiedOn"]
    # The CSR made a customer from the booking, with its contacts.
    customer = sandbox.customer(job["customerId"])
    assert customer["name"] == "Zoë Ångström"
    assert {c["value"] for c in sandbox.contacts(customer["id"])} == {"jane@example.com", "8185550100"}
    assert st.get(f"{st.jpm}/jobs/{job['id']}").json() == job


def test_jobs_list_by_booking_ids_and_status(sandbox, st):
    bookings = [st.create_booking(externalId=f"J{i}") for i in range(3)]
    jobs = [sandbox.convert_booking_to_job(b["id"]) for b in bookings]
    sandbox.set_job_status(jobs[1]["id"], "Completed")
    path = st.jpm + "/jobs"
    assert [j["id"] for j in st.get(path, params={"bookingId": bookings[2]["id"]}).json()["data"]] == [jobs[2]["id"]]
    ids = f"{jobs[0]['id']},{jobs[2]['id']}"
    assert [j["id"] for j in st.get(path, params={"ids": ids}).json()["data"]] == [jobs[0]["id"], jobs[2]["id"]]
    completed = st.get(path, params={"jobStatus": "Completed"}).json()["data"]
    assert [j["id"] for j in completed] == [jobs[1]["id"]] and completed[0]["completedOn"]
    assert_problem(st.get(path, params={"jobStatus": "Done"}), 400, "jobStatus")
    assert_problem(st.get(path, params={"bookingId": "x"}), 400, "bookingId")
    assert_problem(st.get(path, params={"page": 0}), 400, "page")
    assert_problem(st.get(f"{path}/1"), 404)


def test_status_changes_bump_modified_and_completed_on_stays(sandbox, st):
    booking = st.create_booking()
    job = sandbox.convert_booking_to_job(booking["id"], job_status="InProgress")
    done = sandbox.set_job_status(job["id"], "Completed")
    assert done["completedOn"] and done["modifiedOn"] > job["modifiedOn"]
    again = sandbox.set_job_status(job["id"], "Hold")
    assert again["completedOn"] == done["completedOn"]  # a durable signal
    later = st.get(st.jpm + "/jobs", params={"modifiedOnOrAfter": again["modifiedOn"]}).json()["data"]
    assert [j["id"] for j in later] == [job["id"]]


def test_dismissed_bookings(sandbox, st):
    booking = st.create_booking()
    dismissed = sandbox.dismiss_booking(booking["id"])
    assert (dismissed["status"], dismissed["dismissingReasonId"]) == ("Dismissed", 1)
    assert st.get(f"{st.bookings}/{booking['id']}").json()["status"] == "Dismissed"
    with pytest.raises(AdminError):
        sandbox.convert_booking_to_job(booking["id"])


@pytest.mark.parametrize(
    "operation",
    [
        lambda sb, b, j, fresh: sb.convert_booking_to_job(b),  # twice
        lambda sb, b, j, fresh: sb.convert_booking_to_job(999),
        lambda sb, b, j, fresh: sb.convert_booking_to_job(fresh, job_status="Done"),
        lambda sb, b, j, fresh: sb.convert_booking_to_job(fresh, customer_id=1),
        lambda sb, b, j, fresh: sb.set_job_status(j, "Finished"),
        lambda sb, b, j, fresh: sb.set_job_status(999, "Completed"),
        lambda sb, b, j, fresh: sb.dismiss_booking(b),  # converted already
        lambda sb, b, j, fresh: sb.dismiss_booking(999),
    ],
)
def test_impossible_admin_operations_raise_and_change_nothing(sandbox, st, operation):
    booking = st.create_booking()
    fresh = st.create_booking(externalId="FRESH")
    job = sandbox.convert_booking_to_job(booking["id"])
    before = sandbox.snapshot()
    with pytest.raises(AdminError):
        operation(sandbox, booking["id"], job["id"], fresh["id"])
    assert sandbox.snapshot() == before


def test_job_types(st):
    body = st.get(st.jpm + "/job-types").json()
    assert len(body["data"]) == 3
    for job_type in body["data"]:
        assert_schema("Jpm.V2.JobTypeResponse", job_type)
