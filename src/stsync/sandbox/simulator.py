"""``Sandbox``: both simulated APIs on one local port, with admin operations and a request log.

One origin serves everything: ``/connect/token`` (ServiceTitan auth), ``/crm/v2/…`` and
``/jpm/v2/…`` (ServiceTitan API), ``/api/v2/…`` (Referral Factory) and ``/_sandbox/…``
(admin operations, JSON, so a sandbox in another process can be driven; see
``admin.py``). Faults and latency apply to the simulated APIs, never to admin calls.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import date
from typing import Any

from stsync.sandbox import seed as seeding
from stsync.sandbox.admin import admin_router
from stsync.sandbox.clock import Clock, iso_ms
from stsync.sandbox.errors import AdminError
from stsync.sandbox.faults import FaultInjector, Faults
from stsync.sandbox.jpm import job_out, moment_ms, money
from stsync.sandbox.referralfactory import PERSON_INVITED, PERSON_REFERRING, ReferralFactory
from stsync.sandbox.server import HttpError, HttpServer, NoRoute, Request, RequestLog, RequestRecord, Response, sleep
from stsync.sandbox.servicetitan import ServiceTitan
from stsync.sandbox.variants import Variants, VariantSwitch

# What a reverse proxy answers for a path behind which no application lives.
HTML_404 = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Credentials:
    tenant_id: int
    client_id: str
    client_secret: str
    app_key: str
    booking_provider: int
    rf_api_key: str
    campaign_id: int
    paused_campaign_id: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def service_of(path: str) -> str | None:
    if path.startswith("/_sandbox/") or path == "/_sandbox":
        return "admin"
    if path.rstrip("/") == "/connect/token":
        return "auth"
    if path.startswith(("/crm/v2/", "/jpm/v2/")):
        return "servicetitan"
    if path.startswith("/api/v2/"):
        return "referral_factory"
    return None


class Sandbox:
    """A stateful, spec-strict simulator of ServiceTitan v2 and Referral Factory v2."""

    def __init__(
        self,
        *,
        seed: int = 0,
        customers: int = 40,
        leads: int = 8,
        referrers: int = 3,
        st_per_second: int = 60,
        rf_per_minute: int = 600,
        latency: float = 0.0,
        token_ttl: float = 900,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        export_batch_size: int = 500,
        export_lag_seconds: float = 900.0,
        block_ip_after_429s: int = 3,
        variants: Variants | None = None,
        bookings: int = 0,
    ) -> None:
        if bookings < 0:
            raise ValueError("bookings must not be negative")
        self.seed = seed
        self._random = random.Random(seed)
        ident = seeding.identity(self._random)
        self._faults = FaultInjector(faults, base_latency=latency)
        self._variants = VariantSwitch(variants)
        self._clock = Clock()
        self._server = HttpServer(self._dispatch, host=host, port=port)
        self._log = RequestLog()
        self.internal_errors: list[str] = []
        self.st = ServiceTitan(
            tenant_id=ident.tenant_id,
            client_id=ident.client_id,
            client_secret=ident.client_secret,
            app_key=ident.app_key,
            booking_provider=ident.booking_provider,
            token_ttl=token_ttl,
            per_second=st_per_second,
            faults=self._faults,
            clock=self._clock,
            export_batch_size=export_batch_size,
            export_lag_seconds=export_lag_seconds,
            variants=self._variants,
        )
        self.rf = ReferralFactory(
            api_key=ident.rf_api_key,
            per_minute=rf_per_minute,
            block_after=block_ip_after_429s,
            base_url=lambda: self.base_url if self._started else "http://127.0.0.1",
            rng_seed=seed,
            variants=self._variants,
        )
        self._campaign_id = ident.campaign_id
        self._paused_campaign_id = ident.paused_campaign_id
        self._admin = admin_router(self)
        self._started = False
        with self.st.lock:
            seeding.seed_servicetitan(self.st, self._random, customers)
        with self.rf.lock:
            seeding.seed_referral_factory(self.rf, self._random, ident, leads=leads, referrers=referrers)
        if bookings:
            with self.st.lock, self.rf.lock:
                seeding.seed_bookings(self.st, self.rf, seed, bookings, campaign_id=ident.campaign_id)
        self._lead_counter = leads
        self._customer_counter = customers

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Sandbox:
        self._server.start()
        self._started = True
        return self

    def stop(self) -> None:
        self._server.stop()
        self._started = False

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses and identity
    @property
    def base_url(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}"

    @property
    def st_auth_url(self) -> str:
        return self.base_url

    @property
    def st_api_url(self) -> str:
        return self.base_url

    @property
    def rf_api_url(self) -> str:
        return self.base_url + "/api/v2"

    @property
    def credentials(self) -> Credentials:
        return Credentials(
            tenant_id=self.st.tenant_id,
            client_id=self.st.client_id,
            client_secret=self.st.client_secret,
            app_key=self.st.app_key,
            booking_provider=self.st.booking_provider,
            rf_api_key=self.rf.api_key,
            campaign_id=self._campaign_id,
            paused_campaign_id=self._paused_campaign_id,
        )

    def env(self) -> dict[str, str]:
        """The endpoint variables that point stsync at this sandbox."""
        return {
            "STSYNC_ST_AUTH_URL": self.st_auth_url,
            "STSYNC_ST_API_URL": self.st_api_url,
            "STSYNC_RF_API_URL": self.rf_api_url,
        }

    def secret_env(self) -> dict[str, str]:
        creds = self.credentials
        return {
            "STSYNC_ST_CLIENT_SECRET": creds.client_secret,
            "STSYNC_ST_APP_KEY": creds.app_key,
            "STSYNC_RF_API_KEY": creds.rf_api_key,
        }

    def connect_args(self) -> list[str]:
        """``stsync connect …`` arguments for this sandbox (with its secrets)."""
        c = self.credentials
        return [
            "connect",
            "--environment", "integration",
            "--tenant-id", str(c.tenant_id),
            "--client-id", c.client_id,
            "--client-secret", c.client_secret,
            "--app-key", c.app_key,
            "--booking-provider", str(c.booking_provider),
            "--rf-api-key", c.rf_api_key,
            "--campaign-id", str(c.campaign_id),
        ]  # fmt: skip

    # ------------------------------------------------------------------ request handling
    def _dispatch(self, request: Request) -> Response:
        service = service_of(request.path)
        try:
            if service == "admin":
                response = self._handle_admin(request)
            elif service is None:
                response = self._no_such_path(request)
            else:
                decision = self._faults.decide(
                    method=request.method,
                    path=request.path,
                    servicetitan_api=service == "servicetitan",
                    referral_factory=service == "referral_factory",
                )
                sleep(decision.delay)
                if service == "auth":
                    response = self.st.handle_token(request, decision)
                elif service == "servicetitan":
                    response = self.st.handle(request, decision)
                else:
                    response = self.rf.handle(request, decision)
        except Exception:  # a sandbox bug: answer 500 and keep it for the tests to see
            text = traceback.format_exc()
            self.internal_errors.append(text)
            print(f"stsync sandbox: internal error on {request.method} {request.path}\n{text}", file=sys.stderr)
            response = Response(500, {"message": "sandbox internal error"})
        self._log.add(
            RequestRecord(
                service=service or "unknown",
                method=request.method,
                path=request.path,
                query=request.query_record(),
                status=response.status,
                at=time.time(),
            )
        )
        return response

    def _no_such_path(self, request: Request) -> Response:
        """A path outside both APIs (a wrong base URL): JSON by default; with the
        ``html_route_404`` variant, the HTML page a reverse proxy answers."""
        if self._variants.current.html_route_404:
            return Response(404, HTML_404, {"Content-Type": "text/html"})
        return Response(404, {"message": f"The sandbox serves no {request.path}"})

    def _handle_admin(self, request: Request) -> Response:
        try:
            path = "/_sandbox/" if request.path == "/_sandbox" else request.path
            handler, params = self._admin.match(request.method, path)
        except NoRoute as missing:
            status = 405 if missing.method_not_allowed else 404
            return Response(status, {"error": f"no admin operation {request.method} {request.path}"})
        try:
            body = request.json() if request.body.strip() else {}
            return handler(request, body, **params)
        except HttpError as refused:
            return refused.response
        except (AdminError, KeyError, ValueError, TypeError) as exc:
            status = exc.status if isinstance(exc, AdminError) else 400
            return Response(status, {"error": str(exc)})

    # ------------------------------------------------------------------ request log
    @property
    def request_log(self) -> list[RequestRecord]:
        return self._log.records()

    def count_requests(
        self, *, service: str | None = None, method: str | None = None, path_contains: str | None = None
    ) -> int:
        return self._log.count(service=service, method=method, path_contains=path_contains)

    def request_log_dicts(self) -> list[dict]:
        return [record.to_dict() for record in self._log.records()]

    def clear_request_log(self) -> None:
        self._log.clear()

    # ------------------------------------------------------------------ faults
    @property
    def faults(self) -> Faults:
        return self._faults.faults

    def set_faults(self, faults: Faults | None) -> None:
        self._faults.set(faults or Faults())

    @property
    def block_ip_after_429s(self) -> int:
        return self.rf.abuse.block_after

    @block_ip_after_429s.setter
    def block_ip_after_429s(self, value: int) -> None:
        self.rf.abuse.block_after = int(value)

    def unblock_ips(self) -> None:
        self.rf.abuse.unblock()
        self.rf.rate.reset()

    def block_ips(self) -> None:
        """Referral Factory blocks every caller's IP now (someone else on the key abused the
        limit): every request answers 403 "… blocked …" until ``unblock_ips``."""
        self.rf.abuse.block_everyone()

    # ------------------------------------------------------------------ variants
    @property
    def variants(self) -> Variants:
        return self._variants.current

    def set_variants(self, variants: Variants | None) -> None:
        """Switch to other readings of the contracts (``Variants()``: the default sandbox)."""
        self._variants.set(variants)

    # ------------------------------------------------------------------ state reads (deep copies, API shape)
    def bookings(self, external_id: str | None = None) -> list[dict]:
        with self.st.lock:
            return [
                self.st._booking_out(b)
                for b in self.st.bookings.values()
                if external_id is None or b["externalId"] == external_id
            ]

    def booking_contacts(self, booking_id: int) -> list[dict]:
        with self.st.lock:
            booking = self.st.bookings.get(booking_id)
            if booking is None:
                raise AdminError(f"booking {booking_id} does not exist", status=404)
            return [dict(c) for c in booking["_contacts"]]

    def jobs(self) -> list[dict]:
        with self.st.lock:
            return [job_out(j) for j in self.st.jobs.values()]

    def job(self, job_id: int) -> dict:
        with self.st.lock:
            return job_out(self._job(job_id))

    def job_history(self, job_id: int) -> list[dict]:
        """The job's history entries as ``GET jobs/{id}/history`` gives them."""
        with self.st.lock:
            return self.st.jpm.history_entries(self._job(job_id), with_memo=True)

    def job_cancel_logs(self, job_id: int | None = None) -> list[dict]:
        with self.st.lock:
            logs = self.st.jpm.cancel_logs.values()
            return [
                {k: v for k, v in log.items() if not k.startswith("_")}
                for log in logs
                if job_id is None or log["jobId"] == int(job_id)
            ]

    def _job(self, job_id: int) -> dict:
        job = self.st.jobs.get(int(job_id))
        if job is None:
            raise AdminError(f"job {job_id} does not exist", status=404)
        return job

    def customers(self) -> list[dict]:
        with self.st.lock:
            return [self.st.customer_out(c) for c in self.st.customers.values()]

    def customer(self, customer_id: int) -> dict:
        with self.st.lock:
            customer = self.st.customers.get(customer_id)
            if customer is None:
                raise AdminError(f"customer {customer_id} does not exist", status=404)
            return self.st.customer_out(customer)

    def contacts(self, customer_id: int | None = None) -> list[dict]:
        with self.st.lock:
            rows = (
                self.st.contacts.values()
                if customer_id is None
                else [self.st.contacts[i] for i in self.st.contacts_by_customer.get(customer_id, ())]
            )
            return [self.st.contact_out(c, with_customer=True, with_active=True) for c in rows]

    def custom_field_types(self) -> list[dict]:
        with self.st.lock:
            return [self.st.field_type_out(t) for t in self.st.field_types.values()]

    def rf_users(self, campaign_id: int | None = None, type: str | None = None) -> list[dict]:
        with self.rf.lock:
            return [
                self.rf.user_out(u)
                for u in self.rf.users.values()
                if (campaign_id is None or u["campaign_id"] == campaign_id) and (type is None or u["type"] == type)
            ]

    def campaigns(self) -> list[dict]:
        with self.rf.lock:
            return [self.rf.campaign_out(c) for c in self.rf.campaigns.values()]

    def snapshot(self) -> dict[str, Any]:
        return {
            "servicetitan": {
                "bookings": self.bookings(),
                "jobs": self.jobs(),
                "customers": self.customers(),
                "contacts": self.contacts(),
                "custom_field_types": self.custom_field_types(),
            },
            "referral_factory": {"users": self.rf_users(), "campaigns": self.campaigns()},
        }

    # ------------------------------------------------------------------ admin operations
    def convert_booking_to_job(
        self, booking_id: int, job_status: str = "Scheduled", *, customer_id: int | None = None
    ) -> dict:
        """What a CSR does on the Calls screen: the booking becomes a job (status "Converted",
        ``jobId`` set). Without ``customer_id`` a customer is created from the booking."""
        with self.st.lock:
            job = self.st.convert_booking(
                int(booking_id),
                job_status=job_status,
                customer_id=None if customer_id is None else int(customer_id),
                address=seeding.address(self._random),
            )
            return job_out(job)

    def set_job_status(self, job_id: int, status: str, *, at: str | int | None = None) -> dict:
        """The job enters ``status``: its history records it at ``at`` (RFC 3339 or epoch ms;
        default now), ``modifiedOn`` is now. Entering Completed sets ``completedOn`` (the first
        time only); entering Canceled writes a cancel log, leaving it deactivates the log."""
        with self.st.lock:
            job = self._job(job_id)
            return job_out(self.st.jpm.set_status(job, status, at_ms=self._at(at)))

    def complete_job(self, job_id: int, *, total: float | str | None = None, at: str | int | None = None) -> dict:
        """The technician completes the job (at ``at``, default now) and the invoice comes to
        ``total`` (a decimal; 0 is a legitimate $0 job; None leaves the total as it is)."""
        amount = None if total is None else money(total)  # checked before anything changes
        with self.st.lock:
            job = self._job(job_id)
            if job["jobStatus"] != "Completed":
                self.st.jpm.set_status(job, "Completed", at_ms=self._at(at))
            if amount is not None:
                self.st.jpm.set_total(job, amount)
            return job_out(job)

    def cancel_job(
        self, job_id: int, *, reason_id: int = 1, memo: str | None = None, at: str | int | None = None
    ) -> dict:
        """The office cancels the job (also after it completed: ``completedOn`` stays)."""
        with self.st.lock:
            job = self._job(job_id)
            if job["jobStatus"] == "Canceled":
                raise AdminError(f"job {job_id} is canceled already", status=409)
            return job_out(
                self.st.jpm.set_status(job, "Canceled", at_ms=self._at(at), reason_id=int(reason_id), memo=memo)
            )

    def uncancel_job(self, job_id: int) -> dict:
        """``PUT jobs/{id}/remove-cancellation``: back to the status the job had before."""
        with self.st.lock:
            return job_out(self.st.jpm.uncancel(self._job(job_id)))

    def set_job_total(self, job_id: int, total: float | str) -> dict:
        """The job's invoice total changes (a refund, an added item): ``modifiedOn`` moves."""
        with self.st.lock:
            return job_out(self.st.jpm.set_total(self._job(job_id), total))

    def age_job(self, job_id: int, days: float) -> dict:
        """Everything that happened to the job happened ``days`` earlier: history dates,
        ``createdOn``, ``completedOn``, ``modifiedOn``, cancel logs (a hold test's "N days later")."""
        with self.st.lock:
            return job_out(self.st.jpm.age(self._job(job_id), days))

    def dismiss_booking(self, booking_id: int) -> dict:
        with self.st.lock:
            return self.st._booking_out(self.st.dismiss_booking(int(booking_id)))

    def set_modified_on(self, kind: str, record_id: int, modified_on: str | int) -> dict:
        """Give a booking, job or customer this ``modifiedOn`` (RFC 3339 or epoch ms), e.g.
        another record's, to make a tie, or an earlier one. The record moves in its export
        feed and ``modifiedOnOrAfter`` filters accordingly."""
        ms = moment_ms(modified_on, what="modified_on")
        with self.st.lock:
            if kind == "job":
                return job_out(self.st.jpm.set_modified(self._job(record_id), ms))
            records = {"booking": self.st.bookings, "customer": self.st.customers}.get(kind)
            if records is None:
                raise AdminError(f"kind must be booking, job or customer, not {kind!r}")
            record = records.get(int(record_id))
            if record is None:
                raise AdminError(f"{kind} {record_id} does not exist", status=404)
            record["_modified"] = ms
            record["modifiedOn"] = iso_ms(ms)
            index = self.st.booking_index if kind == "booking" else self.st.customer_index
            index.put(record["id"], ms)
            self._clock.observe(ms)
            if kind == "booking":
                return self.st._booking_out(record)
            return self.st.customer_out(record)

    @staticmethod
    def _at(at: str | int | None) -> int | None:
        return None if at is None else moment_ms(at)

    def add_customer(
        self,
        name: str,
        *,
        type: str = "Residential",
        email: str | None = None,
        phone: str | None = None,
        active: bool = True,
        address: dict | None = None,
    ) -> dict:
        if type not in ("Residential", "Commercial"):
            raise AdminError(f"customer type must be Residential or Commercial, not {type!r}")
        with self.st.lock:
            customer = self.st.add_customer_record(
                name=name, type=type, address=address or seeding.address(self._random), active=active
            )
            if email is not None:
                self.st.add_contact_record(customer["id"], "Email", email)
            if phone is not None:
                self.st.add_contact_record(customer["id"], "MobilePhone", phone)
            return self.st.customer_out(customer)

    def add_customers(self, n: int) -> list[dict]:
        """``n`` more seeded-style customers (the same mix of special cases), modified now."""
        created = []
        with self.st.lock:
            for _ in range(int(n)):
                plan = seeding.customer_plan(self._customer_counter, self._random, recent=True)
                self._customer_counter += 1
                created.append(self.st.customer_out(seeding.add_planned_customer(self.st, plan)))
        return created

    def modify_customer(
        self,
        customer_id: int,
        *,
        name: str | None = None,
        email: str | None = None,
        active: bool | None = None,
        custom_fields: dict[str, str | None] | None = None,
    ) -> dict:
        """A change made in ServiceTitan's UI: bumps ``modifiedOn`` (and the e-mail contact's).
        ``custom_fields``: custom field name → its new value, or None to clear it (a person
        picks a current Dropdown option, fixes a Numeric value, or clears a retired field)."""
        with self.st.lock:
            customer = self.st.customers.get(int(customer_id))
            if customer is None:
                raise AdminError(f"customer {customer_id} does not exist", status=404)
            for field_name, value in (custom_fields or {}).items():
                type_id = next((t for t, ft in self.st.field_types.items() if ft["name"] == field_name), None)
                if type_id is None:
                    raise AdminError(f"no custom field named {field_name!r}", status=404)
                kept = [f for f in customer["customFields"] if f["typeId"] != type_id]
                customer["customFields"] = kept + ([{"typeId": type_id, "value": str(value)}] if value is not None else [])
            if name is not None:
                customer["name"] = name
            if active is not None:
                customer["active"] = bool(active)
            if email is not None:
                current = next((c for c in self.st.active_contacts(customer["id"]) if c["type"] == "Email"), None)
                if current is None:
                    self.st.add_contact_record(customer["id"], "Email", email)
                else:
                    current["value"] = email
                    self.st.touch_contact(current)
            self.st.touch_customer(customer)
            return self.st.customer_out(customer)

    def add_leads(
        self,
        n: int,
        *,
        campaign_id: int | None = None,
        referrer_id: int | None = None,
        referrer_email: str | None = None,
        signed_up_at: str | None = None,
    ) -> list[dict]:
        """``n`` new referred leads (``person_invited``), credited round-robin to the campaign's
        referrers unless ``referrer_id`` — or ``referrer_email``, the e-mail of one of the
        campaign's referrers (e.g. a ServiceTitan customer that customer sync enrolled) — is
        given. ``signed_up_at`` (``YYYY-MM-DD``): the day they joined (default today)."""
        with self.rf.lock:
            campaign = int(campaign_id) if campaign_id is not None else self._campaign_id
            if campaign not in self.rf.campaigns:
                raise AdminError(f"campaign {campaign} does not exist", status=404)
            if signed_up_at is not None:
                try:
                    date.fromisoformat(str(signed_up_at))
                except ValueError:
                    raise AdminError(f"signed_up_at {signed_up_at!r} is not a date (YYYY-MM-DD)", status=400) from None
            if referrer_email is not None:
                wanted = str(referrer_email).casefold()
                match = next(
                    (
                        u["id"]
                        for u in self.rf.users.values()
                        if u["campaign_id"] == campaign and u["type"] == PERSON_REFERRING and u["email"].casefold() == wanted
                    ),
                    None,
                )
                if match is None:
                    raise AdminError(f"campaign {campaign} has no referrer with e-mail {referrer_email}", status=404)
                referrer_id = match
            if referrer_id is not None:
                referrer = self.rf.users.get(int(referrer_id))
                if referrer is None or referrer["campaign_id"] != campaign:
                    raise AdminError(f"user {referrer_id} is not a referrer of campaign {campaign}", status=404)
                referrers = [referrer["id"]]
            else:
                referrers = [
                    u["id"]
                    for u in self.rf.users.values()
                    if u["campaign_id"] == campaign and u["type"] == PERSON_REFERRING
                ]
            created = []
            for i in range(int(n)):
                referrer = referrers[(self._lead_counter + i) % len(referrers)] if referrers else None
                lead = seeding.new_lead(
                    self.rf,
                    self._random,
                    self._lead_counter + i,
                    campaign_id=campaign,
                    referrer_id=referrer,
                    signed_up_at=signed_up_at,
                )
                created.append(self.rf.user_out(lead))
            self._lead_counter += int(n)
            return created

    def qualified(self, user_id: int) -> bool:
        with self.rf.lock:
            user = self.rf.users.get(int(user_id))
            if user is None:
                raise AdminError(f"user {user_id} does not exist", status=404)
            return user["qualified_at"] is not None and user["type"] == PERSON_INVITED

    def expire_tokens(self) -> None:
        self.st.expire_tokens()

    def rotate_client_secret(self) -> str:
        return self.st.rotate_client_secret()

    def rotate_rf_api_key(self) -> str:
        return self.rf.rotate_api_key()

    def pause_campaign(self, campaign_id: int) -> dict:
        with self.rf.lock:
            campaign = self.rf.campaigns.get(int(campaign_id))
            if campaign is None:
                raise AdminError(f"campaign {campaign_id} does not exist", status=404)
            campaign["status"] = "paused"
            return self.rf.campaign_out(campaign)

    def delete_custom_field_type(self, name: str) -> None:
        """The tenant admin deletes a custom field: its values vanish from every customer."""
        with self.st.lock:
            found = [t for t in self.st.field_types.values() if t["name"] == name]
            if not found:
                raise AdminError(f"no custom field type called {name!r}", status=404)
            for field_type in found:
                del self.st.field_types[field_type["id"]]
