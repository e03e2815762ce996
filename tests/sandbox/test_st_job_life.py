"""A booking's whole life (issue 16): seeded history, the admin operations that move a booking
through it, and the incremental reads that see it — jobs by ids and modifiedOnOrAfter, the
provider's bookings by modifiedOnOrAfter, export/jobs, export/job-history and
export/job-canceled-logs, all valid against ServiceTitan's schemas."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from contract import ServiceTitanApi, assert_problem, assert_schema

from stsync.sandbox import AdminError, RemoteSandbox, Sandbox

BOOKINGS = 100


@pytest.fixture
def history(make_sandbox):
    sb = make_sandbox(bookings=BOOKINGS, export_lag_seconds=0)
    api = ServiceTitanApi(sb)
    yield sb, api
    api.close()


def stamp(moment: datetime) -> str:
    """ServiceTitan's date-time style (milliseconds, Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def read_feed(api, path):
    rows, token = [], None
    while True:
        body = api.get(path, params={} if token is None else {"from": token}).json()
        rows += body["data"]
        token = body["continueFrom"]
        if not body["hasMore"]:
            return rows, body


def all_pages(api, path, **params):
    rows, page = [], 1
    while True:
        body = api.get(path, params={**params, "page": page, "pageSize": 40}).json()
        rows += body["data"]
        if not body["hasMore"]:
            return rows
        page += 1


def test_seeded_bookings_have_every_kind_of_life(history):
    sb, api = history
    ours = [b for b in sb.bookings() if b["bookingProviderId"] == sb.credentials.booking_provider]
    assert len(sb.bookings()) == BOOKINGS and len(ours) == BOOKINGS - BOOKINGS // 25
    statuses = Counter(b["status"] for b in ours)
    assert statuses["New"] >= 25 and statuses["Dismissed"] >= 8 and statuses["Converted"] >= 50
    jobs = {j["id"]: j for j in sb.jobs()}
    assert {j["jobStatus"] for j in jobs.values()} == {"Scheduled", "InProgress", "Completed", "Canceled"}
    completed = [j for j in jobs.values() if j["jobStatus"] == "Completed"]
    assert any(j["total"] == 0 for j in completed) and any(j["total"] > 0 for j in completed)
    assert all(j["invoiceId"] and j["completedOn"] for j in completed)
    # Cancelled after completion: completedOn stays; a cancel log says when.
    canceled = [j for j in jobs.values() if j["jobStatus"] == "Canceled"]
    assert canceled and all(j["completedOn"] and j["total"] > 0 for j in canceled)
    # Passed through Completed for seconds: InProgress now, completedOn kept, history shows it.
    passed = [j for j in jobs.values() if j["jobStatus"] == "InProgress" and j["completedOn"]]
    assert passed
    events = sb.job_history(passed[0]["id"])
    assert [e["eventType"] for e in events][-2:] == ["Completed", "InProgress"]
    held = datetime.fromisoformat(events[-1]["date"]) - datetime.fromisoformat(events[-2]["date"])
    assert held == timedelta(seconds=5)
    # The first bookings book the campaign's leads; their codes are the externalIds.
    leads = sb.rf_users(campaign_id=sb.credentials.campaign_id, type="person_invited")
    assert [b["externalId"] for b in sb.bookings()[: len(leads)]] == [u["code"] for u in leads]
    for booking in ours[:20]:
        assert_schema("Crm.V2.BookingResponse", booking)
    for job in jobs.values():
        assert_schema("Jpm.V2.JobResponse", job)


def test_seeded_history_is_deterministic_and_leaves_the_rest_of_the_world_alone():
    with_history, again, without = Sandbox(seed=4, bookings=30), Sandbox(seed=4, bookings=30), Sandbox(seed=4)
    assert with_history.snapshot() == again.snapshot()
    assert with_history.rf_users() == without.rf_users()
    seeded = {c["id"] for c in without.customers()}
    assert [c for c in with_history.customers() if c["id"] in seeded] == without.customers()


def test_modified_on_ties_between_records(history):
    sb, api = history
    bookings = Counter(b["modifiedOn"] for b in sb.bookings())
    jobs = Counter(j["modifiedOn"] for j in sb.jobs())
    assert max(bookings.values()) >= 2 and max(jobs.values()) >= 2
    tied = next(stamp for stamp, n in bookings.items() if n >= 2)
    listed = all_pages(api, api.bookings, modifiedOnOrAfter=tied, sort="+ModifiedOn")
    assert sum(1 for b in listed if b["modifiedOn"] == tied) == 2  # inclusive: both tied rows
    # A tie made on purpose: the feed and the filter order ties by id.
    first, second = sb.bookings()[:2]
    sb.set_modified_on("booking", second["id"], first["modifiedOn"])
    listed = all_pages(api, api.bookings, modifiedOnOrAfter=first["modifiedOn"])
    same = [b["id"] for b in listed if b["modifiedOn"] == first["modifiedOn"]]
    assert {first["id"], second["id"]} <= set(same)


def test_incremental_reads_of_bookings_and_jobs(history):
    sb, api = history
    latest = max(b["modifiedOn"] for b in sb.bookings())
    assert [b["modifiedOn"] for b in all_pages(api, api.bookings, modifiedOnOrAfter=latest)] == [latest] * Counter(
        b["modifiedOn"] for b in sb.bookings() if b["bookingProviderId"] == sb.credentials.booking_provider
    )[latest]
    newest = all_pages(api, api.bookings, sort="-ModifiedOn")
    assert [b["modifiedOn"] for b in newest] == sorted((b["modifiedOn"] for b in newest), reverse=True)
    booking = next(b for b in sb.bookings() if b["status"] == "New")
    job = sb.convert_booking_to_job(booking["id"])
    changed = all_pages(api, api.bookings, modifiedOnOrAfter=job["modifiedOn"])
    assert [b["id"] for b in changed] == [booking["id"]] and changed[0]["jobId"] == job["id"]
    jobs = api.get(api.jpm + "/jobs", params={"modifiedOnOrAfter": job["modifiedOn"]}).json()["data"]
    assert [j["id"] for j in jobs] == [job["id"]]
    ids = [j["id"] for j in sb.jobs()][:50]
    by_ids = api.get(api.jpm + "/jobs", params={"ids": ",".join(map(str, ids)), "pageSize": 50}).json()["data"]
    assert sorted(j["id"] for j in by_ids) == sorted(ids)
    too_many = ",".join(str(i) for i in range(1, 52))
    assert_problem(api.get(api.jpm + "/jobs", params={"ids": too_many}), 400, "ids")


def test_job_exports_are_valid_and_follow_changes(history):
    sb, api = history
    jobs, last = read_feed(api, api.jpm + "/export/jobs")
    assert_schema("ExportResponse_Of_Jpm.V2.ExportJobsResponse", last)
    assert sorted(j["id"] for j in jobs) == sorted(j["id"] for j in sb.jobs())
    rows, last = read_feed(api, api.jpm + "/export/job-history")
    assert_schema("ExportResponse_Of_Jpm.V2.ExportJobHistoryResponse", {**last, "data": rows})
    assert {r["jobId"] for r in rows} == {j["id"] for j in sb.jobs()}
    assert all("memo" not in e for r in rows for e in r["history"])
    logs, last = read_feed(api, api.jpm + "/export/job-canceled-logs")
    assert_schema("ExportResponse_Of_Jpm.V2.ExportJobCanceledLogResponse", {**last, "data": logs})
    assert {log["jobId"] for log in logs} == {j["id"] for j in sb.jobs() if j["jobStatus"] == "Canceled"}
    # A change comes again, after the token, with the whole history of the job.
    job = next(j for j in sb.jobs() if j["jobStatus"] == "Scheduled")
    sb.set_job_status(job["id"], "Dispatched")
    again = api.get(api.jpm + "/export/job-history", params={"from": last["continueFrom"]})
    assert again.status_code == 200
    history_rows, _ = read_feed(api, api.jpm + "/export/job-history")
    row = next(r for r in history_rows if r["jobId"] == job["id"])
    assert [e["eventType"] for e in row["history"]] == ["Scheduled", "Dispatched"]


def test_a_booking_moves_through_its_whole_life(sandbox, st):
    booking = st.create_booking(externalId="LIFE1")
    job = sandbox.convert_booking_to_job(booking["id"])
    assert (job["jobStatus"], job["total"], job["completedOn"]) == ("Scheduled", None, None) and job["invoiceId"]
    worked = sandbox.set_job_status(job["id"], "InProgress")
    assert worked["modifiedOn"] > job["modifiedOn"]
    done = sandbox.complete_job(job["id"], total="1234.50")
    assert (done["jobStatus"], done["total"]) == ("Completed", 1234.5) and done["completedOn"]
    canceled = sandbox.cancel_job(job["id"], reason_id=3, memo="refund")
    assert canceled["jobStatus"] == "Canceled" and canceled["completedOn"] == done["completedOn"]
    [log] = sandbox.job_cancel_logs(job["id"])
    assert (log["reasonId"], log["memo"], log["active"]) == (3, "refund", True)
    restored = sandbox.uncancel_job(job["id"])
    assert restored["jobStatus"] == "Completed" and sandbox.job_cancel_logs(job["id"])[0]["active"] is False
    assert sandbox.set_job_total(job["id"], 0)["total"] == 0.0
    events = [e["eventType"] for e in st.get(f"{st.jpm}/jobs/{job['id']}/history").json()["history"]]
    assert events == ["Scheduled", "InProgress", "Completed", "Canceled", "Completed"]
    assert_schema("Jpm.V2.JobHistoryResponse", st.get(f"{st.jpm}/jobs/{job['id']}/history").json())
    assert_problem(st.get(f"{st.jpm}/jobs/1/history"), 404)
    other = st.create_booking(externalId="LIFE2")
    assert sandbox.dismiss_booking(other["id"])["status"] == "Dismissed"


def test_a_status_change_can_be_dated_in_the_past(sandbox, st):
    job = sandbox.convert_booking_to_job(st.create_booking()["id"])
    sandbox.age_job(job["id"], 2)  # booked two days ago
    yesterday = stamp(datetime.now(UTC) - timedelta(days=1))
    worked = sandbox.set_job_status(job["id"], "Completed", at=yesterday)
    assert worked["completedOn"] == yesterday  # dated as told...
    assert datetime.fromisoformat(worked["modifiedOn"]) > datetime.now(UTC) - timedelta(minutes=1)  # ...changed now
    assert [(e["eventType"], e["date"]) for e in sandbox.job_history(job["id"])][-1] == ("Completed", yesterday)
    recent = st.get(st.jpm + "/jobs", params={"modifiedOnOrAfter": stamp(datetime.now(UTC) - timedelta(minutes=1))})
    assert [j["id"] for j in recent.json()["data"]] == [job["id"]]


def test_age_job_moves_everything_that_happened_into_the_past(sandbox, st):
    booking = st.create_booking()
    job = sandbox.convert_booking_to_job(booking["id"])
    done = sandbox.complete_job(job["id"], total=80)
    sandbox.cancel_job(job["id"])
    before = sandbox.job_history(job["id"])
    aged = sandbox.age_job(job["id"], 10)

    def days_between(later: str, earlier: str) -> float:
        return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)) / timedelta(days=1)

    assert days_between(done["completedOn"], aged["completedOn"]) == 10
    assert days_between(done["createdOn"], aged["createdOn"]) == 10
    after = sandbox.job_history(job["id"])
    assert all(days_between(b["date"], a["date"]) == 10 for a, b in zip(after, before, strict=True))
    assert datetime.fromisoformat(aged["modifiedOn"]) < datetime.now(UTC) - timedelta(days=9)
    # Reads by modifiedOnOrAfter no longer see it as recent.
    recent = st.get(st.jpm + "/jobs", params={"modifiedOnOrAfter": (datetime.now(UTC) - timedelta(days=1)).isoformat()})
    assert job["id"] not in [j["id"] for j in recent.json()["data"]]
    assert sandbox.age_job(job["id"], 0.5)["completedOn"] < aged["completedOn"]


@pytest.mark.parametrize(
    "operation",
    [
        lambda sb, j: sb.set_job_status(j, "completed"),
        lambda sb, j: sb.set_job_status(j, "Completed", at="yesterday"),
        lambda sb, j: sb.set_job_status(j, "Completed", at="2001-01-01T00:00:00Z"),  # before the job existed
        lambda sb, j: sb.complete_job(j, total=-5),
        lambda sb, j: sb.complete_job(j, total="lots"),
        lambda sb, j: sb.uncancel_job(j),  # not canceled
        lambda sb, j: sb.age_job(j, -1),
        lambda sb, j: sb.cancel_job(999),
        lambda sb, j: sb.set_modified_on("tag", j, "2025-01-01T00:00:00Z"),
        lambda sb, j: sb.set_modified_on("job", j, "not a date"),
    ],
)
def test_impossible_life_operations_raise_and_change_nothing(sandbox, st, operation):
    job = sandbox.convert_booking_to_job(st.create_booking()["id"])
    before = sandbox.snapshot()
    with pytest.raises(AdminError):
        operation(sandbox, job["id"])
    assert sandbox.snapshot() == before


def test_the_life_operations_over_http(sandbox, st):
    remote = RemoteSandbox(sandbox.base_url)
    booking = st.create_booking()
    job = remote.convert_booking_to_job(booking["id"])
    remote.set_job_status(job["id"], "Dispatched", at=job["createdOn"])
    assert remote.complete_job(job["id"], total=99.99)["total"] == 99.99
    assert remote.cancel_job(job["id"], memo="changed mind")["jobStatus"] == "Canceled"
    assert remote.uncancel_job(job["id"])["jobStatus"] == "Completed"
    completed = remote.set_job_total(job["id"], 10)
    assert completed["total"] == 10
    aged = remote.age_job(job["id"], 3)
    shift = datetime.fromisoformat(completed["completedOn"]) - datetime.fromisoformat(aged["completedOn"])
    assert shift == timedelta(days=3)
    events = [e["eventType"] for e in remote.job_history(job["id"])]
    assert events == ["Scheduled", "Dispatched", "Completed", "Canceled", "Completed"]
    tied = remote.set_modified_on("booking", booking["id"], "2025-03-01T00:00:00Z")
    assert tied["modifiedOn"] == "2025-03-01T00:00:00.000Z" and remote.job(job["id"])["id"] == job["id"]
    customer = remote.set_modified_on("customer", sandbox.customers()[0]["id"], 1_700_000_000_000)
    assert customer["modifiedOn"] == "2023-11-14T22:13:20.000Z"
