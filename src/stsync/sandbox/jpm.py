"""ServiceTitan JPM v2 as the sandbox serves it: jobs, their history and cancellations.

A job exists only because a CSR converted a booking (no API does; the admin operations
play the CSR, see ``Sandbox.convert_booking_to_job``). Its life after that is what a
technician and the office do: statuses with their times, completion with a total,
cancellation and its removal. Each change is recorded the way the JPM spec exposes it:

- ``JobResponse``: ``jobStatus``; ``completedOn`` set the first time the job completes and
  kept afterwards (also when it is cancelled or moves on: the durable signal);
  ``invoiceId`` always (the spec requires it: ServiceTitan opens an invoice with every
  job); ``total`` (decimal, nullable): ``null`` until the job is completed with a total;
  ``$0`` totals are common and legitimate (api/servicetitan.md §11).
- Job history (``GET jobs/{id}/history``, ``GET export/job-history``): one entry per status
  the job entered, ``eventType`` = the ``Jpm.V2.JobStatus`` name (the spec says only "Type
  of the job status"; the real wording is unconfirmed), ``date`` = when it happened (an
  admin operation may give an earlier time). The export row of a job is ``{jobId,
  history}`` with **all** its entries, and comes again whenever an entry is added
  (positioned by the time of that change, not by the entry's date).
- Cancellations (``export/job-canceled-logs``): a row per cancellation; removing the
  cancellation (``PUT jobs/{id}/remove-cancellation`` in the spec; ``uncancel_job`` here)
  returns the job to the status it had and re-exports the row with ``active: false``.
- ``jobs`` list: ``ids`` (≤ 50), ``bookingId``, ``customerId``, ``number``, ``jobStatus``
  (case-sensitive: ``completed`` is a 400), created/modified/completed date filters,
  ``sort`` on Id, ModifiedOn, CreatedOn, Priority; ``modifiedOnOrAfter`` is answered from the
  ``(modifiedOn, id)`` index, so a poll with nothing changed costs nothing per job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stsync.sandbox.clock import iso_ms, to_ms
from stsync.sandbox.errors import AdminError
from stsync.sandbox.feeds import ModifiedIndex
from stsync.sandbox.problems import fail
from stsync.sandbox.query import Query, date_filter, ordered, page_of
from stsync.sandbox.schemas import parse_rfc3339
from stsync.sandbox.server import Request, Response

if TYPE_CHECKING:
    from stsync.sandbox.servicetitan import ServiceTitan

JOB_STATUSES = ("Scheduled", "Dispatched", "InProgress", "Hold", "Completed", "Canceled")
DAY_MS = 86_400_000
CSR_EMPLOYEE_ID = 1


def job_out(job: dict) -> dict:
    """The API shape (``Jpm.V2.JobResponse``) of a stored job."""
    out = {k: v for k, v in job.items() if not k.startswith("_")}
    out["customFields"] = [dict(f) for f in job["customFields"]]
    out["tagTypeIds"] = list(job["tagTypeIds"])
    out["externalData"] = [dict(e) for e in job["externalData"]]
    return out


def moment_ms(at: Any, *, what: str = "at") -> int:
    """An admin operation's time: RFC 3339 text or epoch milliseconds."""
    if isinstance(at, bool):
        raise AdminError(f"{what} must be an RFC 3339 date-time or epoch milliseconds, not {at!r}")
    if isinstance(at, (int, float)):
        return int(at)
    moment = parse_rfc3339(at) if isinstance(at, str) else None
    if moment is None:
        raise AdminError(f"{what} must be an RFC 3339 date-time (e.g. 2025-05-01T00:00:00Z), not {at!r}")
    return to_ms(moment)


def money(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AdminError(f"a job total must be a number, not {value!r}")
    try:
        amount = round(float(value), 2)
    except ValueError:
        raise AdminError(f"a job total must be a number, not {value!r}") from None
    if amount < 0:
        raise AdminError(f"a job total must not be negative, not {value!r}")
    return amount


class JobBook:
    """Jobs, job history and cancel logs of one tenant. Callers hold ``st.lock``."""

    def __init__(self, st: ServiceTitan) -> None:
        self.st = st
        self.jobs: dict[int, dict] = {}
        self.jobs_by_booking: dict[int, list[int]] = {}
        self.job_index = ModifiedIndex()
        self.history_index = ModifiedIndex()  # job id by the time its history last changed
        self.cancel_logs: dict[int, dict] = {}
        self.cancel_logs_by_job: dict[int, list[int]] = {}
        self.cancel_log_index = ModifiedIndex()
        self._next = {"job": 7_100_001, "history": 60_000_001, "cancel_log": 61_000_001}

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # ------------------------------------------------------------------ routes
    def routes(self, add: Callable[..., None], jpm: str) -> None:
        add("GET", jpm + "/jobs", self._list_jobs)
        add("GET", jpm + "/jobs/{id:int}", self._get_job)
        add("GET", jpm + "/jobs/{id:int}/history", self._get_history)
        add("GET", jpm + "/job-types", self._list_job_types)
        add("GET", jpm + "/export/jobs", self._export_jobs)
        add("GET", jpm + "/export/job-history", self._export_history)
        add("GET", jpm + "/export/job-canceled-logs", self._export_cancel_logs)

    # ------------------------------------------------------------------ reads
    def _find(self, job_id: int) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            raise fail(404, "Job not found", {"id": [f"Job {job_id} was not found."]})
        return job

    def _get_job(self, request: Request, id: int) -> Response:
        return Response(200, job_out(self._find(id)))

    def history_entries(self, job: dict, *, with_memo: bool) -> list[dict]:
        keys = ("id", "employeeId", "eventType", "date", "usedSchedulingTool") + (("memo",) if with_memo else ())
        return [{k: entry[k] for k in keys} for entry in sorted(job["_history"], key=lambda e: (e["_ms"], e["id"]))]

    def _get_history(self, request: Request, id: int) -> Response:
        return Response(200, {"history": self.history_entries(self._find(id), with_memo=True)})

    def _list_jobs(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        ids = query.ids()
        booking_id = query.integer("bookingId")
        customer_id = query.integer("customerId")
        status = query.choice("jobStatus", JOB_STATUSES)
        number = query.raw("number")
        modified_since = query.moment("modifiedOnOrAfter")
        tests = (
            date_filter(query, "created", "_created")
            + date_filter(query, "modified", "_modified")
            + date_filter(query, "completed", "_completed")
        )
        order = query.sort({"Id": "id", "ModifiedOn": "_modified", "CreatedOn": "_created", "Priority": "priority"})
        query.check()
        candidates: list[dict] | Any
        if ids is not None:
            candidates = [self.jobs[i] for i in dict.fromkeys(ids) if i in self.jobs]
        elif booking_id is not None:
            candidates = [self.jobs[i] for i in self.jobs_by_booking.get(booking_id, ())]
        elif modified_since is not None:
            candidates = [self.jobs[i] for i in self.job_index.ids_since(modified_since)]
        else:
            candidates = self.jobs.values()
        rows = [
            j
            for j in candidates
            if (booking_id is None or j["bookingId"] == booking_id)
            and (customer_id is None or j["customerId"] == customer_id)
            and (status is None or j["jobStatus"] == status)
            and (number is None or j["jobNumber"] == number)
            and all(test(j) for test in tests)
        ]
        return Response(200, page_of(ordered(rows, order), page, page_size, include_total, job_out))

    def _list_job_types(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        query.check()
        return Response(200, page_of(list(self.st.job_types.values()), page, page_size, include_total, dict))

    def _export_jobs(self, request: Request) -> Response:
        return self.st.export(request, self.job_index, lambda i: {**job_out(self.jobs[i]), "active": True})

    def _export_history(self, request: Request) -> Response:
        return self.st.export(
            request,
            self.history_index,
            lambda i: {"jobId": i, "history": self.history_entries(self.jobs[i], with_memo=False)},
        )

    def _export_cancel_logs(self, request: Request) -> Response:
        return self.st.export(request, self.cancel_log_index, lambda i: _public(self.cancel_logs[i]))

    # ------------------------------------------------------------------ the life of a job
    def create(
        self,
        booking: dict,
        customer: dict,
        *,
        status: str,
        created_ms: int,
        changed_ms: int | None = None,
    ) -> dict:
        """A job booked from ``booking`` for ``customer``: it enters ``Scheduled`` at
        ``created_ms`` (then ``status``, if another, at the same time)."""
        check_status(status)
        job_id = self._id("job")
        job = {
            "id": job_id,
            "jobNumber": str(job_id - 7_000_000),
            "projectId": None,
            "customerId": customer["id"],
            "locationId": customer["id"] + 500_000,
            "jobStatus": "Scheduled",
            "completedOn": None,
            "businessUnitId": booking["businessUnitId"] or 1,
            "jobTypeId": booking["jobTypeId"] or next(iter(self.st.job_types), 0),
            "priority": booking["priority"] or "Normal",
            "campaignId": booking["campaignId"] or 0,
            "summary": booking["summary"],
            "customFields": [],
            "appointmentCount": 1,
            "firstAppointmentId": job_id + 1_000_000,
            "lastAppointmentId": job_id + 1_000_000,
            "recallForId": None,
            "warrantyId": None,
            "jobGeneratedLeadSource": None,
            "noCharge": False,
            "notificationsEnabled": True,
            "createdOn": iso_ms(created_ms),
            "createdById": CSR_EMPLOYEE_ID,
            "modifiedOn": iso_ms(created_ms),
            "tagTypeIds": [],
            "leadCallId": None,
            "bookingId": booking["id"],
            "soldById": None,
            "externalData": [],
            "customerPo": "",
            "invoiceId": job_id + 2_000_000,
            "membershipId": None,
            "total": None,
            "_created": created_ms,
            "_modified": created_ms,
            "_completed": None,
            "_history": [],
            "_status_before_cancel": None,
        }
        self.jobs[job_id] = job
        self.jobs_by_booking.setdefault(booking["id"], []).append(job_id)
        self.job_index.put(job_id, created_ms)
        changed = changed_ms if changed_ms is not None else created_ms
        self._event(job, "Scheduled", created_ms, changed)
        if status != "Scheduled":
            self.set_status(job, status, at_ms=created_ms, changed_ms=changed)
        return job

    def _event(self, job: dict, event_type: str, at_ms: int, changed_ms: int, memo: str = "") -> None:
        job["_history"].append(
            {
                "id": self._id("history"),
                "employeeId": CSR_EMPLOYEE_ID,
                "eventType": event_type,
                "date": iso_ms(at_ms),
                "usedSchedulingTool": "Manual",
                "memo": memo,
                "_ms": at_ms,
            }
        )
        self.history_index.put(job["id"], changed_ms)

    def _touch(self, job: dict, ms: int) -> None:
        job["_modified"] = ms
        job["modifiedOn"] = iso_ms(ms)
        self.job_index.put(job["id"], ms)

    def set_status(
        self,
        job: dict,
        status: str,
        *,
        at_ms: int | None = None,
        changed_ms: int | None = None,
        reason_id: int = 1,
        memo: str | None = None,
    ) -> dict:
        """``job`` enters ``status`` at ``at_ms`` (default now); the change is made at
        ``changed_ms`` (default now: it is what ``modifiedOn`` and the exports show)."""
        check_status(status)
        if at_ms is not None and at_ms < job["_created"]:
            raise AdminError(f"job {job['id']} was created at {job['createdOn']}: it cannot change before that")
        changed = changed_ms if changed_ms is not None else self.st.clock.tick()
        at = at_ms if at_ms is not None else changed
        previous = job["jobStatus"]
        if status == "Canceled" and previous != "Canceled":
            job["_status_before_cancel"] = previous
            log_id = self._id("cancel_log")
            self.cancel_logs[log_id] = {
                "id": log_id,
                "jobId": job["id"],
                "reasonId": int(reason_id),
                "memo": memo,
                "createdOn": iso_ms(at),
                "createdById": CSR_EMPLOYEE_ID,
                "active": True,
                "_ms": at,
            }
            self.cancel_logs_by_job.setdefault(job["id"], []).append(log_id)
            self.cancel_log_index.put(log_id, changed)
        elif previous == "Canceled" and status != "Canceled":
            for log_id in self.cancel_logs_by_job.get(job["id"], ()):
                log = self.cancel_logs[log_id]
                if log["active"]:
                    log["active"] = False
                    self.cancel_log_index.put(log_id, changed)
            job["_status_before_cancel"] = None
        job["jobStatus"] = status
        if status == "Completed" and job["completedOn"] is None:
            job["completedOn"] = iso_ms(at)
            job["_completed"] = at
        self._event(job, status, at, changed, memo or "")
        self._touch(job, changed)
        return job

    def uncancel(self, job: dict) -> dict:
        if job["jobStatus"] != "Canceled":
            raise AdminError(f"job {job['id']} is {job['jobStatus']}, not Canceled", status=409)
        return self.set_status(job, job["_status_before_cancel"] or "Scheduled")

    def set_total(self, job: dict, total: Any, *, changed_ms: int | None = None) -> dict:
        job["total"] = money(total)
        self._touch(job, changed_ms if changed_ms is not None else self.st.clock.tick())
        return job

    def age(self, job: dict, days: float) -> dict:
        """Everything that happened to ``job`` happened ``days`` earlier: its history,
        ``createdOn``, ``completedOn``, ``modifiedOn``, its cancel logs, and their export
        positions (a hold test's "N days later")."""
        shift = int(round(float(days) * DAY_MS))
        if shift < 0:
            raise AdminError("age_job takes a number of days into the past (>= 0)")
        for entry in job["_history"]:
            entry["_ms"] -= shift
            entry["date"] = iso_ms(entry["_ms"])
        job["_created"] -= shift
        job["createdOn"] = iso_ms(job["_created"])
        if job["_completed"] is not None:
            job["_completed"] -= shift
            job["completedOn"] = iso_ms(job["_completed"])
        self._touch(job, job["_modified"] - shift)
        position = self.history_index.position(job["id"])
        if position is not None:
            self.history_index.put(job["id"], position - shift)
        for log_id in self.cancel_logs_by_job.get(job["id"], ()):
            log = self.cancel_logs[log_id]
            log["_ms"] -= shift
            log["createdOn"] = iso_ms(log["_ms"])
            old = self.cancel_log_index.position(log_id)
            if old is not None:
                self.cancel_log_index.put(log_id, old - shift)
        return job

    def set_modified(self, job: dict, ms: int) -> dict:
        self._touch(job, ms)
        self.st.clock.observe(ms)
        return job


def check_status(status: str) -> None:
    if status not in JOB_STATUSES:
        raise AdminError(f"unknown job status {status!r}; one of {', '.join(JOB_STATUSES)}")


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}
