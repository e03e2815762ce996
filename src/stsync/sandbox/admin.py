"""Admin operations over HTTP (``/_sandbox/…``, JSON both ways) and a client for them.

Tests and the demo drive an in-process sandbox through ``Sandbox`` methods; a sandbox in
another process (``stsync sandbox``) is driven through these routes, or through
``RemoteSandbox(base_url)``, which has the same method names. ``GET /_sandbox/`` lists the
operations (method, path, one line each): ``OPERATIONS`` below is that list, and the
routes are made from it, so the two cannot drift apart.

Times (``at``, ``modified_on``) are RFC 3339 date-times (``2025-05-01T00:00:00Z``) or epoch
milliseconds. A refused operation answers ``{"error": "…"}`` with 400, 404 or 409.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from stsync.sandbox.faults import Faults
from stsync.sandbox.server import Request, Response, Router
from stsync.sandbox.variants import Variants

if TYPE_CHECKING:
    from stsync.sandbox.simulator import Sandbox


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    run: Callable[..., Any]  # (sandbox, body, **path parameters) -> JSON-serialisable answer (None → {"ok": true})

    def to_dict(self) -> dict:
        return {"method": self.method, "path": self.path.replace(":int}", "}"), "summary": self.summary}


def _faults(sb: Sandbox, body: dict) -> dict:
    sb.set_faults(Faults.from_dict(body))
    return sb.faults.to_dict()


def _variants(sb: Sandbox, body: dict) -> dict:
    sb.set_variants(Variants.from_dict(body))
    return sb.variants.to_dict()


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/_sandbox/", "this list of admin operations", lambda sb, b: None),
    Operation("GET", "/_sandbox/state", "a snapshot of both services' data", lambda sb, b: sb.snapshot()),
    Operation(
        "GET",
        "/_sandbox/credentials",
        "the fake credentials and the STSYNC_* endpoint variables",
        lambda sb, b: {**sb.credentials.to_dict(), "env": sb.env()},
    ),
    Operation(
        "GET", "/_sandbox/requests", "the request log (no headers or bodies)", lambda sb, b: sb.request_log_dicts()
    ),
    Operation("DELETE", "/_sandbox/requests", "clear the request log", lambda sb, b: sb.clear_request_log()),
    Operation("GET", "/_sandbox/faults", "the current Faults", lambda sb, b: sb.faults.to_dict()),
    Operation("PUT", "/_sandbox/faults", "replace the Faults (body: Faults fields; {} = none)", _faults),
    Operation("GET", "/_sandbox/variants", "the current Variants", lambda sb, b: sb.variants.to_dict()),
    Operation("PUT", "/_sandbox/variants", "replace the Variants (body: Variants fields; {} = default)", _variants),
    Operation(
        "POST",
        "/_sandbox/bookings/{id:int}/convert",
        "a CSR books a job from the booking ({job_status?, customer_id?}) → job",
        lambda sb, b, id: sb.convert_booking_to_job(
            int(id), b.get("job_status", "Scheduled"), customer_id=_optional_int(b.get("customer_id"))
        ),
    ),
    Operation(
        "POST",
        "/_sandbox/bookings/{id:int}/dismiss",
        "a CSR dismisses the booking → booking",
        lambda sb, b, id: sb.dismiss_booking(int(id)),
    ),  # fmt: skip
    Operation("GET", "/_sandbox/jobs/{id:int}", "the job as JobResponse", lambda sb, b, id: sb.job(int(id))),
    Operation(
        "GET",
        "/_sandbox/jobs/{id:int}/history",
        "the job's history entries",
        lambda sb, b, id: sb.job_history(int(id)),
    ),  # fmt: skip
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/status",
        "the job enters a status ({status, at?}; history dated at, modifiedOn now) → job",
        lambda sb, b, id: sb.set_job_status(int(id), b["status"], at=b.get("at")),
    ),
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/complete",
        "the job completes ({total?, at?}; completedOn set once) → job",
        lambda sb, b, id: sb.complete_job(int(id), total=b.get("total"), at=b.get("at")),
    ),
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/cancel",
        "the job is canceled, also after completion ({reason_id?, memo?, at?}) → job",
        lambda sb, b, id: sb.cancel_job(
            int(id), reason_id=int(b.get("reason_id", 1)), memo=b.get("memo"), at=b.get("at")
        ),
    ),
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/uncancel",
        "the cancellation is removed: back to the status before it → job",
        lambda sb, b, id: sb.uncancel_job(int(id)),
    ),
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/total",
        "the job's invoice total changes ({total}) → job",
        lambda sb, b, id: sb.set_job_total(int(id), b["total"]),
    ),
    Operation(
        "POST",
        "/_sandbox/jobs/{id:int}/age",
        "everything that happened to the job happened N days earlier ({days}) → job",
        lambda sb, b, id: sb.age_job(int(id), float(b["days"])),
    ),
    Operation(
        "POST",
        "/_sandbox/{kind}/{id:int}/modified-on",
        "set a booking's, job's or customer's modifiedOn (kind: bookings|jobs|customers; {modified_on})",
        lambda sb, b, kind, id: sb.set_modified_on(_singular(kind), int(id), b["modified_on"]),
    ),
    Operation(
        "POST",
        "/_sandbox/customers",
        "a customer made in ServiceTitan ({name, type?, email?, phone?, active?, address?}) → customer",
        lambda sb, b: sb.add_customer(
            b["name"],
            type=b.get("type", "Residential"),
            email=b.get("email"),
            phone=b.get("phone"),
            active=b.get("active", True),
            address=b.get("address"),
        ),
    ),
    Operation(
        "POST",
        "/_sandbox/customers/batch",
        "n more seeded-style customers ({n}) → customers",
        lambda sb, b: sb.add_customers(int(b["n"])),
    ),
    Operation(
        "PATCH",
        "/_sandbox/customers/{id:int}",
        "a change in ServiceTitan's UI ({name?, email?, active?, custom_fields?: {name: value or null}}) → customer",
        lambda sb, b, id: sb.modify_customer(
            int(id), name=b.get("name"), email=b.get("email"), active=b.get("active"), custom_fields=b.get("custom_fields")
        ),
    ),
    Operation(
        "DELETE",
        "/_sandbox/custom-field-types/{name}",
        "the tenant deletes a custom field: its values vanish from every customer",
        lambda sb, b, name: sb.delete_custom_field_type(unquote(name)),
    ),
    Operation(
        "POST",
        "/_sandbox/leads",
        "n new referred leads ({n, campaign_id?, referrer_id?, referrer_email?, signed_up_at?}) → users",
        lambda sb, b: sb.add_leads(
            int(b.get("n", 1)),
            campaign_id=_optional_int(b.get("campaign_id")),
            referrer_id=_optional_int(b.get("referrer_id")),
            referrer_email=b.get("referrer_email"),
            signed_up_at=b.get("signed_up_at"),
        ),
    ),
    Operation(
        "POST",
        "/_sandbox/campaigns/{id:int}/pause",
        "pause a Referral Factory campaign → campaign",
        lambda sb, b, id: sb.pause_campaign(int(id)),
    ),
    Operation(
        "POST",
        "/_sandbox/tokens/expire",
        "every ServiceTitan access token stops working",
        lambda sb, b: sb.expire_tokens(),
    ),  # fmt: skip
    Operation(
        "POST",
        "/_sandbox/client-secret/rotate",
        "a new ServiceTitan client secret; the old one is refused → {client_secret}",
        lambda sb, b: {"client_secret": sb.rotate_client_secret()},
    ),
    Operation(
        "POST",
        "/_sandbox/rf-api-key/rotate",
        "a new Referral Factory API key; the old one is refused → {rf_api_key}",
        lambda sb, b: {"rf_api_key": sb.rotate_rf_api_key()},
    ),
    Operation(
        "POST",
        "/_sandbox/ips/block",
        'Referral Factory blocks every caller\'s IP (403 saying "blocked") until unblocked',
        lambda sb, b: sb.block_ips(),
    ),
    Operation(
        "POST",
        "/_sandbox/ips/unblock",
        "lift every IP block and reset the rate windows",
        lambda sb, b: sb.unblock_ips(),
    ),  # fmt: skip
)


def _singular(kind: str) -> str:
    singular = {"bookings": "booking", "jobs": "job", "customers": "customer"}.get(kind)
    if singular is None:
        raise ValueError(f"kind must be bookings, jobs or customers, not {kind!r}")
    return singular


def operations_list() -> list[dict]:
    return [op.to_dict() for op in OPERATIONS]


def admin_router(sb: Sandbox) -> Router:
    router = Router()
    for op in OPERATIONS:

        def handler(request: Request, body: dict, *, _op: Operation = op, **params: str) -> Response:
            if _op.path == "/_sandbox/":
                return Response(200, {"operations": operations_list()})
            answer = _op.run(sb, body, **params)
            return Response(200, {"ok": True} if answer is None else answer)

        router.add(op.method, op.path, handler)
    return router


class RemoteSandboxError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sandbox admin call failed ({status}): {message}")
        self.status = status


class RemoteSandbox:
    """Drives a sandbox running in another process (``stsync sandbox``) through ``/_sandbox/``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8") or "null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read().decode("utf-8")).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise RemoteSandboxError(exc.code, str(message)) from None

    def operations(self) -> list[dict]:
        return self._call("GET", "/_sandbox/")["operations"]

    def snapshot(self) -> dict:
        return self._call("GET", "/_sandbox/state")

    def credentials(self) -> dict:
        return self._call("GET", "/_sandbox/credentials")

    def request_log(self) -> list[dict]:
        return self._call("GET", "/_sandbox/requests")

    def clear_request_log(self) -> None:
        self._call("DELETE", "/_sandbox/requests")

    def set_faults(self, faults: Faults | None) -> dict:
        return self._call("PUT", "/_sandbox/faults", (faults or Faults()).to_dict())

    def faults(self) -> Faults:
        return Faults.from_dict(self._call("GET", "/_sandbox/faults"))

    def set_variants(self, variants: Variants | None) -> dict:
        return self._call("PUT", "/_sandbox/variants", (variants or Variants()).to_dict())

    def variants(self) -> Variants:
        return Variants.from_dict(self._call("GET", "/_sandbox/variants"))

    def convert_booking_to_job(
        self, booking_id: int, job_status: str = "Scheduled", *, customer_id: int | None = None
    ) -> dict:
        return self._call(
            "POST",
            f"/_sandbox/bookings/{int(booking_id)}/convert",
            {"job_status": job_status, "customer_id": customer_id},
        )

    def dismiss_booking(self, booking_id: int) -> dict:
        return self._call("POST", f"/_sandbox/bookings/{int(booking_id)}/dismiss", {})

    def job(self, job_id: int) -> dict:
        return self._call("GET", f"/_sandbox/jobs/{int(job_id)}")

    def job_history(self, job_id: int) -> list[dict]:
        return self._call("GET", f"/_sandbox/jobs/{int(job_id)}/history")

    def set_job_status(self, job_id: int, status: str, *, at: str | int | None = None) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/status", {"status": status, "at": at})

    def complete_job(self, job_id: int, *, total: float | str | None = None, at: str | int | None = None) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/complete", {"total": total, "at": at})

    def cancel_job(
        self, job_id: int, *, reason_id: int = 1, memo: str | None = None, at: str | int | None = None
    ) -> dict:
        return self._call(
            "POST", f"/_sandbox/jobs/{int(job_id)}/cancel", {"reason_id": reason_id, "memo": memo, "at": at}
        )

    def uncancel_job(self, job_id: int) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/uncancel", {})

    def set_job_total(self, job_id: int, total: float | str) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/total", {"total": total})

    def age_job(self, job_id: int, days: float) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/age", {"days": days})

    def set_modified_on(self, kind: str, record_id: int, modified_on: str | int) -> dict:
        return self._call(
            "POST", f"/_sandbox/{quote(kind, safe='')}s/{int(record_id)}/modified-on", {"modified_on": modified_on}
        )

    def add_customer(self, name: str, **fields: Any) -> dict:
        return self._call("POST", "/_sandbox/customers", {"name": name, **fields})

    def add_customers(self, n: int) -> list[dict]:
        return self._call("POST", "/_sandbox/customers/batch", {"n": n})

    def modify_customer(self, customer_id: int, **changes: Any) -> dict:
        return self._call("PATCH", f"/_sandbox/customers/{int(customer_id)}", changes)

    def delete_custom_field_type(self, name: str) -> None:
        self._call("DELETE", f"/_sandbox/custom-field-types/{quote(name, safe='')}")

    def add_leads(
        self,
        n: int,
        *,
        campaign_id: int | None = None,
        referrer_id: int | None = None,
        referrer_email: str | None = None,
        signed_up_at: str | None = None,
    ) -> list[dict]:
        body = {"n": n, "campaign_id": campaign_id, "referrer_id": referrer_id, "referrer_email": referrer_email,
                "signed_up_at": signed_up_at}
        return self._call("POST", "/_sandbox/leads", body)

    def pause_campaign(self, campaign_id: int) -> dict:
        return self._call("POST", f"/_sandbox/campaigns/{int(campaign_id)}/pause", {})

    def expire_tokens(self) -> None:
        self._call("POST", "/_sandbox/tokens/expire", {})

    def rotate_client_secret(self) -> str:
        return self._call("POST", "/_sandbox/client-secret/rotate", {})["client_secret"]

    def rotate_rf_api_key(self) -> str:
        return self._call("POST", "/_sandbox/rf-api-key/rotate", {})["rf_api_key"]

    def block_ips(self) -> None:
        self._call("POST", "/_sandbox/ips/block", {})

    def unblock_ips(self) -> None:
        self._call("POST", "/_sandbox/ips/unblock", {})
