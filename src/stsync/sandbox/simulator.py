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
from typing import Any

from stsync.sandbox import seed as seeding
from stsync.sandbox.admin import admin_router
from stsync.sandbox.clock import Clock
from stsync.sandbox.faults import FaultInjector, Faults
from stsync.sandbox.referralfactory import PERSON_INVITED, PERSON_REFERRING, ReferralFactory
from stsync.sandbox.server import HttpError, HttpServer, NoRoute, Request, RequestLog, RequestRecord, Response, sleep
from stsync.sandbox.servicetitan import AdminError, ServiceTitan, public


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
    if path.startswith("/_sandbox/"):
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
    ) -> None:
        self.seed = seed
        self._random = random.Random(seed)
        ident = seeding.identity(self._random)
        self._faults = FaultInjector(faults, base_latency=latency)
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
        )
        self.rf = ReferralFactory(
            api_key=ident.rf_api_key,
            per_minute=rf_per_minute,
            block_after=block_ip_after_429s,
            base_url=lambda: self.base_url if self._started else "http://127.0.0.1",
            rng_seed=seed,
        )
        self._campaign_id = ident.campaign_id
        self._paused_campaign_id = ident.paused_campaign_id
        self._admin = admin_router(self)
        self._started = False
        with self.st.lock:
            seeding.seed_servicetitan(self.st, self._random, customers)
        with self.rf.lock:
            seeding.seed_referral_factory(self.rf, self._random, ident, leads=leads, referrers=referrers)
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
                response = Response(404, {"message": f"The sandbox serves no {request.path}"})
            else:
                decision = self._faults.decide(
                    method=request.method, path=request.path, servicetitan_api=service == "servicetitan"
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

    def _handle_admin(self, request: Request) -> Response:
        try:
            handler, params = self._admin.match(request.method, request.path)
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
            return [public(j) for j in self.st.jobs.values()]

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
                int(booking_id), job_status=job_status, customer_id=customer_id, address=seeding.address(self._random)
            )
            return public(job)

    def set_job_status(self, job_id: int, status: str) -> dict:
        with self.st.lock:
            return public(self.st.set_job_status(int(job_id), status))

    def dismiss_booking(self, booking_id: int) -> dict:
        with self.st.lock:
            return self.st._booking_out(self.st.dismiss_booking(int(booking_id)))

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
        self, customer_id: int, *, name: str | None = None, email: str | None = None, active: bool | None = None
    ) -> dict:
        """A change made in ServiceTitan's UI: bumps ``modifiedOn`` (and the e-mail contact's)."""
        with self.st.lock:
            customer = self.st.customers.get(int(customer_id))
            if customer is None:
                raise AdminError(f"customer {customer_id} does not exist", status=404)
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

    def add_leads(self, n: int, *, campaign_id: int | None = None, referrer_id: int | None = None) -> list[dict]:
        """``n`` new referred leads (``person_invited``), credited round-robin to the campaign's
        referrers unless ``referrer_id`` is given."""
        with self.rf.lock:
            campaign = int(campaign_id) if campaign_id is not None else self._campaign_id
            if campaign not in self.rf.campaigns:
                raise AdminError(f"campaign {campaign} does not exist", status=404)
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
                    self.rf, self._random, self._lead_counter + i, campaign_id=campaign, referrer_id=referrer
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
