"""Admin operations over HTTP (``/_sandbox/…``, JSON both ways) and a client for them.

Tests and the demo drive an in-process sandbox through ``Sandbox`` methods; a sandbox in
another process (``stsync sandbox``) is driven through these routes, or through
``RemoteSandbox(base_url)``, which has the same method names.

| Method | Path | Body → answer |
|---|---|---|
| GET | /_sandbox/state | → snapshot |
| GET | /_sandbox/credentials | → credentials |
| GET, DELETE | /_sandbox/requests | → request log / clears it |
| POST | /_sandbox/bookings/{id}/convert | ``{job_status?, customer_id?}`` → job |
| POST | /_sandbox/bookings/{id}/dismiss | → booking |
| POST | /_sandbox/jobs/{id}/status | ``{status}`` → job |
| POST | /_sandbox/customers | ``{name, type?, email?, phone?, active?, address?}`` → customer |
| POST | /_sandbox/customers/batch | ``{n}`` → customers |
| PATCH | /_sandbox/customers/{id} | ``{name?, email?, active?}`` → customer |
| POST | /_sandbox/leads | ``{n, campaign_id?, referrer_id?}`` → users |
| GET, PUT | /_sandbox/faults | ``Faults`` fields → faults |
| POST | /_sandbox/tokens/expire, /_sandbox/client-secret/rotate, /_sandbox/rf-api-key/rotate, /_sandbox/ips/unblock | |
| POST | /_sandbox/campaigns/{id}/pause | → campaign |
| DELETE | /_sandbox/custom-field-types/{name} | |
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from stsync.sandbox.faults import Faults
from stsync.sandbox.server import Request, Response, Router

if TYPE_CHECKING:
    from stsync.sandbox.simulator import Sandbox


def admin_router(sb: Sandbox) -> Router:
    router = Router()
    add = router.add

    def ok(body: Any = None) -> Response:
        return Response(200, {"ok": True} if body is None else body)

    add("GET", "/_sandbox/state", lambda r, b: ok(sb.snapshot()))
    add("GET", "/_sandbox/credentials", lambda r, b: ok({**sb.credentials.to_dict(), "env": sb.env()}))
    add("GET", "/_sandbox/requests", lambda r, b: ok([x.to_dict() for x in sb.request_log]))
    add("DELETE", "/_sandbox/requests", lambda r, b: ok(sb.clear_request_log()))
    add(
        "POST",
        "/_sandbox/bookings/{id:int}/convert",
        lambda r, b, id: ok(
            sb.convert_booking_to_job(int(id), b.get("job_status", "Scheduled"), customer_id=b.get("customer_id"))
        ),
    )
    add("POST", "/_sandbox/bookings/{id:int}/dismiss", lambda r, b, id: ok(sb.dismiss_booking(int(id))))
    add("POST", "/_sandbox/jobs/{id:int}/status", lambda r, b, id: ok(sb.set_job_status(int(id), b["status"])))
    add(
        "POST",
        "/_sandbox/customers",
        lambda r, b: ok(
            sb.add_customer(
                b["name"],
                type=b.get("type", "Residential"),
                email=b.get("email"),
                phone=b.get("phone"),
                active=b.get("active", True),
                address=b.get("address"),
            )
        ),
    )
    add("POST", "/_sandbox/customers/batch", lambda r, b: ok(sb.add_customers(int(b["n"]))))
    add(
        "PATCH",
        "/_sandbox/customers/{id:int}",
        lambda r, b, id: ok(
            sb.modify_customer(int(id), name=b.get("name"), email=b.get("email"), active=b.get("active"))
        ),
    )
    add(
        "POST",
        "/_sandbox/leads",
        lambda r, b: ok(
            sb.add_leads(int(b.get("n", 1)), campaign_id=b.get("campaign_id"), referrer_id=b.get("referrer_id"))
        ),
    )
    add("GET", "/_sandbox/faults", lambda r, b: ok(sb.faults.to_dict()))

    def put_faults(request: Request, body: dict) -> Response:
        sb.set_faults(Faults.from_dict(body))
        return ok(sb.faults.to_dict())

    add("PUT", "/_sandbox/faults", put_faults)
    add("POST", "/_sandbox/tokens/expire", lambda r, b: ok(sb.expire_tokens()))
    add("POST", "/_sandbox/client-secret/rotate", lambda r, b: ok({"client_secret": sb.rotate_client_secret()}))
    add("POST", "/_sandbox/rf-api-key/rotate", lambda r, b: ok({"rf_api_key": sb.rotate_rf_api_key()}))
    add("POST", "/_sandbox/ips/unblock", lambda r, b: ok(sb.unblock_ips()))
    add("POST", "/_sandbox/campaigns/{id:int}/pause", lambda r, b, id: ok(sb.pause_campaign(int(id))))
    add(
        "DELETE",
        "/_sandbox/custom-field-types/{name}",
        lambda r, b, name: ok(sb.delete_custom_field_type(unquote(name))),
    )
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

    def snapshot(self) -> dict:
        return self._call("GET", "/_sandbox/state")

    def credentials(self) -> dict:
        return self._call("GET", "/_sandbox/credentials")

    def request_log(self) -> list[dict]:
        return self._call("GET", "/_sandbox/requests")

    def clear_request_log(self) -> None:
        self._call("DELETE", "/_sandbox/requests")

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

    def set_job_status(self, job_id: int, status: str) -> dict:
        return self._call("POST", f"/_sandbox/jobs/{int(job_id)}/status", {"status": status})

    def add_customer(self, name: str, **fields: Any) -> dict:
        return self._call("POST", "/_sandbox/customers", {"name": name, **fields})

    def add_customers(self, n: int) -> list[dict]:
        return self._call("POST", "/_sandbox/customers/batch", {"n": n})

    def modify_customer(self, customer_id: int, **changes: Any) -> dict:
        return self._call("PATCH", f"/_sandbox/customers/{int(customer_id)}", changes)

    def add_leads(self, n: int, *, campaign_id: int | None = None, referrer_id: int | None = None) -> list[dict]:
        return self._call("POST", "/_sandbox/leads", {"n": n, "campaign_id": campaign_id, "referrer_id": referrer_id})

    def set_faults(self, faults: Faults | None) -> dict:
        return self._call("PUT", "/_sandbox/faults", (faults or Faults()).to_dict())

    def expire_tokens(self) -> None:
        self._call("POST", "/_sandbox/tokens/expire", {})

    def rotate_client_secret(self) -> str:
        return self._call("POST", "/_sandbox/client-secret/rotate", {})["client_secret"]

    def pause_campaign(self, campaign_id: int) -> dict:
        return self._call("POST", f"/_sandbox/campaigns/{int(campaign_id)}/pause", {})

    def delete_custom_field_type(self, name: str) -> None:
        self._call("DELETE", f"/_sandbox/custom-field-types/{quote(name, safe='')}")
