"""ServiceTitan v2 as the sandbox serves it: the token endpoint, CRM v2 and JPM v2.

State lives here (customers, contacts, custom-field types, bookings, jobs, tags, tokens),
indexed for O(1) lookups by id and externalId and, for the export feeds, by
``(modifiedOn, id)``. Every public method takes the state lock; handlers run under it.

Behaviour follows ``api/servicetitan.md`` and the v2 specs. Where the contract says
"unconfirmed", the sandbox takes the strict reading (a careful client must survive it):

- Auth: ``Authorization: Bearer <token>`` only (a bare token is refused); missing, unknown
  or expired token → 401 with ``WWW-Authenticate``; missing or wrong ``ST-App-Key`` →
  403 naming the app key; a tenant the token was not issued for → 403; an unknown booking
  provider → 404. Token endpoint: bad credentials → 400 ``{"error": "invalid_client"}``.
- Bodies are validated against the spec (see ``schemas.py``), plus the documented rule
  "a name and either an address or a phone/email" for bookings, plus ``customerType``
  limited to Residential/Commercial.
- ``externalId`` is **not** unique: a second booking with the same externalId is created
  (uniqueness is undocumented, so the client is the one who must prevent duplicates).
- A booking created without ``start`` gets ``start = createdOn`` (the response requires it).
- Customer PATCH: ``customFields`` **replaces** the whole list (fields left out lose their
  values); ``active`` is refused with 400 ("you cannot deactivate or reactivate customer
  records with an API"); every PATCH bumps ``modifiedOn``, so the customer reappears in
  the export feed.
- Customer custom fields (api/servicetitan.md §6.6, §11 "values the tenant no longer allows
  may be refused"): a ``typeId`` given twice → 400; an unknown ``typeId`` → 400; a **new or
  changed** value is refused (400, ``CustomFields[i].Value`` naming the field) when it is
  empty, not one of a Dropdown's ``dataTypeOptions`` (case-sensitive), or not a number for a
  Numeric field, and (``CustomFields[i].TypeId``) when its type is no longer listed by
  ``GET /customers/custom-fields``. **Default reading:** a value the customer already holds,
  sent back unchanged, is accepted whatever it is (the seed has customers holding ``""``, a
  retired Dropdown option and a retired type's value); the
  ``refuse_invalid_existing_custom_fields`` variant refuses those echoes too.
- Query parameters and paging: see ``query.py`` (typed, case-insensitive names, enum values
  case-sensitive: ``jobStatus=completed`` → 400, strict limits).
- Export feeds: ``continueFrom`` is an opaque token for the last ``(modifiedOn, id)``
  returned; ``from`` may also be a date (``modifiedOn`` ≥ date). Without
  ``includeRecentChanges=true`` rows modified in the last ``export_lag_seconds`` are held
  back. A row modified after it was exported comes again later in the feed. Seeded records
  may share a ``modifiedOn`` (ties are ordered by id).
- ``GET /customers/contacts`` without ``customerIds``, ``modifiedBefore`` or
  ``modifiedOnOrAfter`` → 400.
- Booking PATCH of a converted or dismissed booking → 409 ("Some conflict occurred").
- The dismiss endpoint exists only in the 2026 spec (unconfirmed): not served, so it is a
  404 ("not supported"); the admin operation ``dismiss_booking`` plays the CSR instead.
- Fault 503s carry no ``Retry-After`` (a client backs off by its own policy); 429s do,
  with an ApiErrorResponse titled "Rate limit is exceeded. Try again in N seconds.".
- The token endpoint is not throttled by default (the docs say it is, with no figure).
- No API turns a booking into a job: the sandbox's admin operations do (a CSR's work).
  Jobs, their history and cancellations: see ``jpm.py``.

Variants (``variants.py``; each off by default; ``docs/sandbox.md`` has their sources):

- ``st_429``: ``"apim-body"`` — a 429 without ``Retry-After`` whose body is Azure API
  Management's ``{"statusCode": 429, "message": "Rate limit is exceeded. Try again in N
  seconds."}``; ``"bare"`` — a 429 with neither header nor body.
- ``st_gateway_401``: a missing or wrong ``ST-App-Key`` is refused by the gateway before the
  token is looked at: 401 ``{"statusCode": 401, "message": "Access denied due to invalid
  subscription key. …"}`` (APIM's wording; "missing subscription key" when absent).
- ``token_per_minute``: more than N token requests of one client id in a rolling minute →
  **429** ``{"error": "too_many_requests", "error_description": "Too many token requests.
  Try again in N seconds."}`` with ``Retry-After`` (429, not 400: a throttled client is not
  misconfigured; IdentityServer's 400 stays for bad credentials).
- ``lookup_lag_seconds``: a booking created through the API is not listed by
  ``?externalId=`` until N seconds after its create committed (other reads see it at once).
- ``refuse_invalid_existing_custom_fields``: see the custom-field rules above.
- Faults (``faults.py``): ``maintenance_rate`` answers 409 "The service is suspended for
  maintenance" (an ApiErrorResponse, nothing applied).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from stsync.sandbox.clock import Clock, iso_ms, now_ms, to_ms
from stsync.sandbox.errors import AdminError
from stsync.sandbox.faults import Decision, FaultInjector
from stsync.sandbox.feeds import ModifiedIndex, decode_position, encode_position
from stsync.sandbox.jpm import JOB_STATUSES, JobBook
from stsync.sandbox.limits import SlidingWindow, retry_after_header
from stsync.sandbox.problems import VALIDATION_TITLE, fail, problem
from stsync.sandbox.query import Query, date_filter, ordered, page_of
from stsync.sandbox.schemas import parse_query_datetime, validator
from stsync.sandbox.server import BadJson, HttpError, NoRoute, Request, Response, Router
from stsync.sandbox.variants import VariantSwitch

CONTACT_TYPES = ("Phone", "MobilePhone", "Email", "Fax")
PHONE_TYPES = ("Phone", "MobilePhone")
CUSTOMER_TYPES = ("Residential", "Commercial")
MAINTENANCE_TITLE = "The service is suspended for maintenance"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass
class _Token:
    tenant_id: int
    client_id: str
    expires_at: float  # time.time()
    uses_left: int | None = None  # Faults.token_uses: requests it may still authenticate


def public(record: dict) -> dict:
    """The API shape of a stored record: private ``_keys`` dropped, nested values copied."""
    return {k: _copy(v) for k, v in record.items() if not k.startswith("_")}


class ServiceTitan:
    def __init__(
        self,
        *,
        tenant_id: int,
        client_id: str,
        client_secret: str,
        app_key: str,
        booking_provider: int,
        token_ttl: float,
        per_second: int,
        faults: FaultInjector,
        clock: Clock,
        export_batch_size: int = 500,
        export_lag_seconds: float = 900.0,
        variants: VariantSwitch | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.variants = variants or VariantSwitch()
        self._token_windows: dict[int, SlidingWindow] = {}
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.app_key = app_key
        self.booking_provider = booking_provider
        self.token_ttl = token_ttl
        self.faults = faults
        self.clock = clock
        self.export_batch_size = export_batch_size
        self.export_lag_seconds = export_lag_seconds
        self.rate = SlidingWindow(per_second, 1.0)
        self.validator = validator()

        self.tokens: dict[str, _Token] = {}
        self.customers: dict[int, dict] = {}
        self.customer_index = ModifiedIndex()
        self.contacts: dict[int, dict] = {}
        self.contacts_by_customer: dict[int, list[int]] = {}
        self.contact_index = ModifiedIndex()
        self.field_types: dict[int, dict] = {}
        self.bookings: dict[int, dict] = {}
        self.bookings_by_external_id: dict[tuple[int, str], list[int]] = {}
        self.booking_index = ModifiedIndex()
        self.jpm = JobBook(self)
        self.jobs = self.jpm.jobs
        self.tags: dict[int, dict] = {}
        self.job_types: dict[int, dict] = {}
        self._next_ids = {
            "customer": 10_001,
            "contact": 50_001,
            "booking": 5_550_001,
            "booking_contact": 80_001,
        }

        self.router = Router()
        self._routes()

    # ------------------------------------------------------------------ ids and time
    def next_id(self, kind: str) -> int:
        value = self._next_ids[kind]
        self._next_ids[kind] = value + 1
        return value

    # ------------------------------------------------------------------ routing
    def _routes(self) -> None:
        crm = "/crm/v2/tenant/{tenant:int}"
        jpm = "/jpm/v2/tenant/{tenant:int}"
        bp = crm + "/booking-provider/{bp:int}/bookings"
        add = self.router.add
        add("GET", bp, self._list_provider_bookings)
        add("POST", bp, self._create_booking)
        add("GET", bp + "/{id:int}", self._get_provider_booking)
        add("PATCH", bp + "/{id:int}", self._patch_booking)
        add("GET", bp + "/{id:int}/contacts", self._list_provider_booking_contacts)
        add("POST", bp + "/{id:int}/contacts", self._create_booking_contact)
        add("GET", crm + "/bookings", self._list_tenant_bookings)
        add("GET", crm + "/bookings/{id:int}", self._get_tenant_booking)
        add("GET", crm + "/bookings/{id:int}/contacts", self._list_tenant_booking_contacts)
        add("GET", crm + "/booking-provider-tags", self._list_tags)
        add("GET", crm + "/booking-provider-tags/{id:int}", self._get_tag)
        add("GET", crm + "/customers", self._list_customers)
        add("GET", crm + "/customers/custom-fields", self._list_field_types)
        add("GET", crm + "/customers/contacts", self._list_all_customer_contacts)
        add("GET", crm + "/customers/{id:int}", self._get_customer)
        add("PATCH", crm + "/customers/{id:int}", self._patch_customer)
        add("GET", crm + "/customers/{id:int}/contacts", self._list_customer_contacts)
        add("POST", crm + "/customers/{id:int}/contacts", self._create_customer_contact)
        add("PATCH", crm + "/customers/{id:int}/contacts/{contact_id:int}", self._patch_customer_contact)
        add("DELETE", crm + "/customers/{id:int}/contacts/{contact_id:int}", self._delete_customer_contact)
        add("GET", crm + "/export/customers", self._export_customers)
        add("GET", crm + "/export/customers/contacts", self._export_contacts)
        add("GET", crm + "/export/bookings", self._export_bookings)
        self.jpm.routes(add, jpm)

    # ------------------------------------------------------------------ token endpoint
    def handle_token(self, request: Request, decision: Decision) -> Response:
        if decision.fail_before:
            return Response(503, {"error": "temporarily_unavailable"})
        if request.method != "POST":
            return Response(405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"})
        if request.content_type != "application/x-www-form-urlencoded":
            return Response(400, {"error": "invalid_request", "error_description": "expected a form-encoded body"})
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        grant = form.get("grant_type")
        if grant is None:
            return Response(400, {"error": "invalid_request", "error_description": "grant_type is missing"})
        if grant != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type"})
        wait = self._token_throttle(form.get("client_id") or "")
        if wait is not None:
            seconds = retry_after_header(wait)
            return Response(
                429,
                {
                    "error": "too_many_requests",
                    "error_description": f"Too many token requests. Try again in {seconds} seconds.",
                },
                {"Retry-After": seconds},
            )
        with self.lock:
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                return Response(400, {"error": "invalid_client"})
            token = self._issue_token()
        return Response(
            200,
            {
                "access_token": token,
                "expires_in": int(self.token_ttl),
                "token_type": "Bearer",
                "scope": "tn.crm.bookings:rw tn.crm.customers:rw tn.jpm.jobs:r",
            },
            {"Cache-Control": "no-store"},
        )

    def _token_throttle(self, client_id: str) -> float | None:
        """Seconds to wait when the ``token_per_minute`` variant refuses this request."""
        limit = self.variants.current.token_per_minute
        if limit is None:
            return None
        with self.lock:
            window = self._token_windows.get(limit)
            if window is None:
                window = self._token_windows[limit] = SlidingWindow(limit, 60.0)
        return window.admit(client_id)

    def _issue_token(self) -> str:
        header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"at+jwt"}').decode().rstrip("=")
        lifetime = self.faults.token_lifetime(self.token_ttl)
        claims = json.dumps(
            {"client_id": self.client_id, "tenant": str(self.tenant_id), "exp": int(time.time() + self.token_ttl)}
        )
        payload = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
        token = f"{header}.{payload}.{secrets.token_urlsafe(32)}"
        self.tokens[token] = _Token(self.tenant_id, self.client_id, time.time() + lifetime, self.faults.token_uses())
        return token

    def expire_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def rotate_client_secret(self) -> str:
        with self.lock:
            self.client_secret = "cs2." + secrets.token_hex(24)
            return self.client_secret

    # ------------------------------------------------------------------ API pipeline
    def handle(self, request: Request, decision: Decision) -> Response:
        """(Gateway key check →) auth → rate limit → faults → the endpoint (→ commit-then-500)."""
        variants = self.variants.current
        try:
            if variants.st_gateway_401:
                self._gateway_key_check(request)
            tenant = self._authenticate(request)
            if decision.throttle:  # a burst: someone else spent the budget
                self._throttle(self.faults.faults.retry_after, variants.st_429)
            wait = self.rate.admit((self.app_key, tenant))
            if wait is not None:
                self._throttle(int(retry_after_header(wait)), variants.st_429)
            if decision.maintenance:
                raise fail(409, MAINTENANCE_TITLE)
            if decision.fail_before:
                raise fail(503, "Service Unavailable")
            try:
                handler, params = self.router.match(request.method, request.path)
            except NoRoute as missing:
                if missing.method_not_allowed:
                    raise fail(405, "Method Not Allowed", headers={"Allow": ", ".join(missing.allowed)}) from None
                raise fail(404, "Not Found") from None
            with self.lock:
                # Every path parameter here is an int64 (the routes say so); the tenant is checked.
                response = handler(request, **{k: int(v) for k, v in params.items() if k != "tenant"})
        except HttpError as refused:
            return refused.response
        if decision.fail_after and 200 <= response.status < 300:
            return problem(500, "An unexpected error occurred.")
        return response

    @staticmethod
    def _throttle(seconds: int, style: str) -> None:
        text = f"Rate limit is exceeded. Try again in {seconds} seconds."
        if style == "apim-body":  # Azure API Management's own 429: no header, the wait in the text
            raise HttpError(Response(429, {"statusCode": 429, "message": text}))
        if style == "bare":
            raise HttpError(Response(429, None))
        raise fail(429, text, headers={"Retry-After": str(seconds)})

    def _gateway_key_check(self, request: Request) -> None:
        """The ``st_gateway_401`` variant: the API gateway checks the app key before anything
        else and answers as Azure API Management does, speaking of a subscription key."""
        key = request.header("st-app-key")
        if not key:
            message = (
                "Access denied due to missing subscription key. "
                "Make sure to include subscription key when making requests to an API."
            )
        elif key != self.app_key:
            message = (
                "Access denied due to invalid subscription key. "
                "Make sure to provide a valid key for an active subscription."
            )
        else:
            return
        raise HttpError(Response(401, {"statusCode": 401, "message": message}))

    def _authenticate(self, request: Request) -> int:
        header = request.header("authorization") or ""
        if not header.startswith("Bearer "):
            raise fail(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
        with self.lock:
            token = self.tokens.get(header[len("Bearer ") :].strip())
            used_up = token is not None and token.uses_left is not None and token.uses_left <= 0
            if token is not None and token.uses_left is not None:
                token.uses_left -= 1
        if token is None or used_up:
            raise fail(401, "Unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if token.expires_at <= time.time():
            raise fail(
                401,
                "Unauthorized",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token", error_description="The token expired"'},
            )
        if request.header("st-app-key") != self.app_key:
            raise fail(403, "The ST-App-Key header is missing or is not a valid app key for this application.")
        parts = request.path.split("/")
        # /crm/v2/tenant/{tenant}/...
        if len(parts) < 5 or parts[3] != "tenant":
            raise fail(404, "Not Found")
        try:
            tenant = int(parts[4])
        except ValueError:
            raise fail(404, "Not Found") from None
        if tenant != token.tenant_id:
            raise fail(403, f"The application is not authorized to access tenant {tenant}.")
        return tenant

    def _body(self, request: Request, schema: str, parameter: str) -> dict:
        if request.content_type not in ("application/json", "text/json") and not request.content_type.endswith("+json"):
            raise fail(415, "Unsupported Media Type")
        if not request.body.strip():
            raise fail(
                400,
                VALIDATION_TITLE,
                {"": ["A non-empty request body is required."], parameter: [f"The {parameter} field is required."]},
            )
        try:
            body = request.json()
        except BadJson:
            raise fail(
                400,
                VALIDATION_TITLE,
                {
                    "$": ["The JSON value is not valid JSON. Path: $."],
                    parameter: [f"The {parameter} field is required."],
                },
            ) from None
        errors = self.validator.errors(schema, body, parameter=parameter)
        if errors:
            raise fail(400, VALIDATION_TITLE, errors)
        return body

    # ------------------------------------------------------------------ bookings
    def _provider(self, bp: int) -> None:
        tag = self.tags.get(bp)
        if bp != self.booking_provider or tag is None or not tag["active"]:
            raise fail(
                404, "Booking provider not found.", {"booking_provider": [f"Booking provider {bp} was not found."]}
            )

    def _booking_out(self, booking: dict) -> dict:
        return public(booking)

    def _booking_filters(self, query: Query) -> list[Callable[[dict], bool]]:
        return date_filter(query, "created", "_created") + date_filter(query, "modified", "_modified")

    def _list_bookings(self, request: Request, bp: int | None) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        ids = query.ids()
        external_id = query.raw("externalId")
        modified_since = query.moment("modifiedOnOrAfter")
        tests = self._booking_filters(query)
        order = query.sort({"Id": "id", "ModifiedOn": "_modified", "CreatedOn": "_created"})
        query.check()
        candidates: Iterable[dict]
        if ids is not None:
            candidates = [self.bookings[i] for i in dict.fromkeys(ids) if i in self.bookings]
        elif external_id is not None and bp is not None:
            candidates = [self.bookings[i] for i in self.bookings_by_external_id.get((bp, external_id), ())]
        elif modified_since is not None:
            candidates = [self.bookings[i] for i in self.booking_index.ids_since(modified_since)]
        else:
            candidates = self.bookings.values()
        rows = [b for b in candidates if bp is None or b["bookingProviderId"] == bp]
        if external_id is not None:
            rows = [b for b in rows if b["externalId"] == external_id]
            lag = self.variants.current.lookup_lag_seconds
            if lag:
                hidden_after = time.time() - lag
                rows = [b for b in rows if b["_committed_at"] is None or b["_committed_at"] <= hidden_after]
        if tests:
            rows = [b for b in rows if all(test(b) for test in tests)]
        rows = ordered(rows, order)
        return Response(200, page_of(rows, page, page_size, include_total, self._booking_out))

    def _list_provider_bookings(self, request: Request, bp: int) -> Response:
        self._provider(bp)
        return self._list_bookings(request, bp)

    def _list_tenant_bookings(self, request: Request) -> Response:
        return self._list_bookings(request, None)

    def _find_booking(self, booking_id: int, bp: int | None) -> dict:
        booking = self.bookings.get(booking_id)
        if booking is None or (bp is not None and booking["bookingProviderId"] != bp):
            raise fail(404, "Booking not found.", {"id": [f"Booking {booking_id} was not found."]})
        return booking

    def _get_provider_booking(self, request: Request, bp: int, id: int) -> Response:
        self._provider(bp)
        return Response(200, self._booking_out(self._find_booking(id, bp)))

    def _get_tenant_booking(self, request: Request, id: int) -> Response:
        return Response(200, self._booking_out(self._find_booking(id, None)))

    def _create_booking(self, request: Request, bp: int) -> Response:
        self._provider(bp)
        body = self._body(request, "Crm.V2.CreateBookingRequest", "crm.V2.CreateBookingRequest")
        errors: dict[str, list[str]] = {}
        customer_type = body.get("customerType")
        if customer_type is not None and customer_type not in CUSTOMER_TYPES:
            errors["CustomerType"] = [
                f"'{customer_type}' is not a valid customer type. Valid values: Residential, Commercial."
            ]
        contacts = body.get("contacts") or []
        reachable = any(c["type"] in (*PHONE_TYPES, "Email") and c["value"].strip() for c in contacts)
        if not body.get("address") and not reachable:
            errors["Contacts"] = ["A booking needs a name and either an address or a phone number or email contact."]
        if errors:
            raise fail(400, VALIDATION_TITLE, errors)
        booking = self.create_booking_record(bp, body)
        booking["_committed_at"] = time.time()  # the lookup_lag variant hides it from ?externalId= for a while
        return Response(200, self._booking_out(booking))

    def create_booking_record(self, bp: int, body: dict, *, ms: int | None = None) -> dict:
        """A booking from a (valid) CreateBookingRequest body, created now or at ``ms``."""
        if ms is None:
            ms = self.clock.tick()
        else:
            self.clock.observe(ms)
        booking_id = self.next_id("booking")
        address = body.get("address")
        booking = {
            "id": booking_id,
            "source": body["source"],
            "createdOn": iso_ms(ms),
            "name": body["name"],
            "address": _booking_address(address) if address else None,
            "customerType": body.get("customerType"),
            "start": body.get("start") or iso_ms(ms),
            "summary": body.get("summary"),
            "campaignId": body.get("campaignId"),
            "businessUnitId": body.get("businessUnitId"),
            "isFirstTimeClient": body.get("isFirstTimeClient"),
            "uploadedImages": list(body.get("uploadedImages") or []),
            "isSendConfirmationEmail": body.get("isSendConfirmationEmail"),
            "status": "New",
            "dismissingReasonId": None,
            "jobId": None,
            "externalId": body["externalId"],
            "priority": body.get("priority"),
            "jobTypeId": body.get("jobTypeId"),
            "bookingProviderId": bp,
            "modifiedOn": iso_ms(ms),
            "_created": ms,
            "_modified": ms,
            "_contacts": [],
            "_committed_at": None,
        }
        for contact in body.get("contacts") or []:
            booking["_contacts"].append(self._booking_contact(contact, ms))
        self.bookings[booking_id] = booking
        self.bookings_by_external_id.setdefault((bp, booking["externalId"]), []).append(booking_id)
        self.booking_index.put(booking_id, ms)
        return booking

    def _booking_contact(self, contact: dict, ms: int) -> dict:
        return {
            "id": self.next_id("booking_contact"),
            "type": contact["type"],
            "value": contact["value"],
            "memo": contact.get("memo") or "",
            "modifiedOn": iso_ms(ms),
        }

    def touch_booking(self, booking: dict, *, ms: int | None = None) -> None:
        if ms is None:
            ms = self.clock.tick()
        else:
            self.clock.observe(ms)
        booking["_modified"] = ms
        booking["modifiedOn"] = iso_ms(ms)
        self.booking_index.put(booking["id"], ms)

    def _patch_booking(self, request: Request, bp: int, id: int) -> Response:
        self._provider(bp)
        booking = self._find_booking(id, bp)
        body = self._body(request, "Crm.V2.UpdateBookingRequest", "crm.V2.UpdateBookingRequest")
        if booking["status"] in ("Converted", "Dismissed"):
            raise fail(409, f"Booking {id} is {booking['status'].lower()} and can no longer be changed.")
        for key, value in body.items():
            if key == "externalId":
                old = (bp, booking["externalId"])
                self.bookings_by_external_id[old].remove(id)
                self.bookings_by_external_id.setdefault((bp, value), []).append(id)
            booking[key] = _booking_address(value) if key == "address" else value
        self.touch_booking(booking)
        return Response(200, self._booking_out(booking))

    def _booking_contacts_page(self, request: Request, booking: dict) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        query.check()
        return Response(200, page_of(booking["_contacts"], page, page_size, include_total, dict))

    def _list_provider_booking_contacts(self, request: Request, bp: int, id: int) -> Response:
        self._provider(bp)
        return self._booking_contacts_page(request, self._find_booking(id, bp))

    def _list_tenant_booking_contacts(self, request: Request, id: int) -> Response:
        return self._booking_contacts_page(request, self._find_booking(id, None))

    def _create_booking_contact(self, request: Request, bp: int, id: int) -> Response:
        self._provider(bp)
        booking = self._find_booking(id, bp)
        body = self._body(request, "Crm.V2.ContactCreateRequest", "crm.V2.ContactCreateRequest")
        if body["type"] not in CONTACT_TYPES:
            raise fail(400, VALIDATION_TITLE, {"Type": [f"'{body['type']}' is not a valid contact type."]})
        ms = self.clock.tick()
        contact = self._booking_contact(body, ms)
        booking["_contacts"].append(contact)
        self.touch_booking(booking)
        return Response(200, dict(contact))

    # ------------------------------------------------------------------ tags
    def _list_tags(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        ids = query.ids()
        name = query.raw("name")
        tests = date_filter(query, "created", "_created") + date_filter(query, "modified", "_modified")
        order = query.sort({"Id": "id", "ModifiedOn": "_modified", "CreatedOn": "_created"})
        query.check()
        rows = [
            t
            for t in self.tags.values()
            if (ids is None or t["id"] in ids)
            and (name is None or t["tagName"] == name)
            and all(test(t) for test in tests)
        ]
        return Response(200, page_of(ordered(rows, order), page, page_size, include_total, public))

    def _get_tag(self, request: Request, id: int) -> Response:
        tag = self.tags.get(id)
        if tag is None:
            raise fail(404, "Booking provider tag not found.")
        return Response(200, public(tag))

    # ------------------------------------------------------------------ customers
    def customer_out(self, customer: dict, *, application_guid: str | None = None) -> dict:
        out = public(customer)
        out["customFields"] = [
            {"typeId": f["typeId"], "name": self.field_types[f["typeId"]]["name"], "value": f["value"]}
            for f in customer["customFields"]
            if f["typeId"] in self.field_types
        ]
        out["externalData"] = [dict(e) for e in customer["_externalData"].get(application_guid or "", [])]
        return out

    def _find_customer(self, customer_id: int) -> dict:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise fail(404, "Customer not found", {"id": [f"Customer {customer_id} was not found."]})
        return customer

    def _list_customers(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        ids = query.ids()
        active = query.choice("active", ("True", "Any", "False")) or "True"
        name = query.raw("name")
        phone = query.raw("phone")
        guid = query.raw("externalDataApplicationGuid")
        address_filters = {part: query.raw(part) for part in ("street", "unit", "city", "state", "zip", "country")}
        query.boolean("excludeAccountingChangesFromModifiedDateRange")
        modified_since = query.moment("modifiedOnOrAfter")
        tests = date_filter(query, "created", "_created") + date_filter(query, "modified", "_modified")
        order = query.sort({"Id": "id", "ModifiedOn": "_modified", "CreatedOn": "_created"})
        query.check()
        candidates: Iterable[dict]
        if ids is not None:
            candidates = [self.customers[i] for i in dict.fromkeys(ids) if i in self.customers]
        elif modified_since is not None:
            candidates = [self.customers[i] for i in self.customer_index.ids_since(modified_since)]
        else:
            candidates = self.customers.values()
        wanted_name = name.casefold() if name else None
        wanted_phone = _digits(phone) if phone else None
        rows = []
        for customer in candidates:
            if active == "True" and not customer["active"]:
                continue
            if active == "False" and customer["active"]:
                continue
            if wanted_name and wanted_name not in customer["name"].casefold():
                continue
            if any(
                v is not None and (customer["address"].get(k) or "").casefold() != v.casefold()
                for k, v in address_filters.items()
            ):
                continue
            if wanted_phone and not any(
                self.contacts[c]["type"] in PHONE_TYPES and _digits(self.contacts[c]["value"]) == wanted_phone
                for c in self.contacts_by_customer.get(customer["id"], ())
                if self.contacts[c]["_active"]
            ):
                continue
            if all(test(customer) for test in tests):
                rows.append(customer)
        rows = ordered(rows, order)
        return Response(
            200, page_of(rows, page, page_size, include_total, lambda c: self.customer_out(c, application_guid=guid))
        )

    def _get_customer(self, request: Request, id: int) -> Response:
        return Response(200, self.customer_out(self._find_customer(id)))

    def _patch_customer(self, request: Request, id: int) -> Response:
        customer = self._find_customer(id)
        body = self._body(request, "Crm.V2.Customers.UpdateCustomerRequest", "crm.V2.Customers.UpdateCustomerRequest")
        errors: dict[str, list[str]] = {}
        if "active" in body:
            errors["Active"] = ["Customers cannot be deactivated or reactivated through the API."]
        errors.update(self._custom_field_errors(customer, body.get("customFields") or []))
        if errors:
            raise fail(400, VALIDATION_TITLE, errors)
        for key in ("name", "type", "doNotMail", "doNotService"):
            if key in body:
                customer[key] = body[key]
        if "tagTypeIds" in body:
            customer["tagTypeIds"] = list(body["tagTypeIds"])
        if "address" in body:
            customer["address"] = dict(body["address"])
        if "customFields" in body:
            # Replace semantics: the list sent is the whole list (the cautious reading).
            customer["customFields"] = [{"typeId": f["typeId"], "value": f["value"]} for f in body["customFields"]]
        if "externalData" in body:
            update = body["externalData"]
            guid = update["applicationGuid"].lower()
            entries = [{"key": e["key"], "value": e.get("value")} for e in update["externalData"]]
            if (update.get("patchMode") or "Replace") == "Merge":
                merged = {e["key"]: e for e in customer["_externalData"].get(guid, [])}
                merged.update({e["key"]: e for e in entries})
                entries = list(merged.values())
            customer["_externalData"][guid] = entries
        self.touch_customer(customer)
        return Response(200, self.customer_out(customer))

    def _custom_field_errors(self, customer: dict, fields: list[dict]) -> dict[str, list[str]]:
        """What ServiceTitan refuses in a customer's ``customFields`` (see the module docstring):
        a type id given twice or unknown always; a value that is empty, not a Dropdown option,
        not a number for a Numeric field, or of a type no longer listed — when it is new, or
        always with the ``refuse_invalid_existing_custom_fields`` variant."""
        errors: dict[str, list[str]] = {}
        held = {f["typeId"]: f["value"] for f in customer["customFields"]}
        echoes_checked = self.variants.current.refuse_invalid_existing_custom_fields
        first_at: dict[int, int] = {}
        for i, field in enumerate(fields):
            type_id, value = field["typeId"], field["value"]
            if type_id in first_at:
                errors[f"CustomFields[{i}].TypeId"] = [
                    f"Custom field type {type_id} is given more than once (first at CustomFields[{first_at[type_id]}])."
                ]
                continue
            first_at[type_id] = i
            field_type = self.field_types.get(type_id)
            if field_type is None:
                errors[f"CustomFields[{i}].TypeId"] = [f"Custom field type {type_id} was not found."]
                continue
            if type_id in held and held[type_id] == value and not echoes_checked:
                continue  # the default reading: a value the customer holds may be sent back as it is
            if not field_type["_listed"]:
                errors[f"CustomFields[{i}].TypeId"] = [
                    f"Custom field '{field_type['name']}' ({type_id}) is no longer available; "
                    f"it cannot be given the value {value!r}."
                ]
                continue
            problem = _custom_value_problem(field_type, value)
            if problem is not None:
                errors[f"CustomFields[{i}].Value"] = [problem]
        return errors

    def touch_customer(self, customer: dict) -> None:
        ms = self.clock.tick()
        customer["_modified"] = ms
        customer["modifiedOn"] = iso_ms(ms)
        self.customer_index.put(customer["id"], ms)

    def add_customer_record(
        self,
        *,
        name: str,
        type: str,
        address: dict,
        active: bool = True,
        merged_to_id: int | None = None,
        custom_fields: list[dict] | None = None,
        created_ms: int | None = None,
        modified_ms: int | None = None,
        do_not_mail: bool = False,
    ) -> dict:
        created = created_ms if created_ms is not None else self.clock.tick()
        modified = modified_ms if modified_ms is not None else created
        self.clock.observe(modified)
        customer_id = self.next_id("customer")
        customer = {
            "id": customer_id,
            "active": active,
            "name": name,
            "type": type,
            "address": {
                "street": address.get("street"),
                "unit": address.get("unit"),
                "city": address.get("city"),
                "state": address.get("state"),
                "zip": address.get("zip"),
                "country": address.get("country"),
                "latitude": address.get("latitude"),
                "longitude": address.get("longitude"),
            },
            "customFields": [dict(f) for f in custom_fields or []],
            "balance": 0.0,
            "tagTypeIds": [],
            "doNotMail": do_not_mail,
            "doNotService": False,
            "createdOn": iso_ms(created),
            "createdById": 0,
            "modifiedOn": iso_ms(modified),
            "mergedToId": merged_to_id,
            "externalData": [],
            "_created": created,
            "_modified": modified,
            "_externalData": {},
        }
        self.customers[customer_id] = customer
        self.customer_index.put(customer_id, modified)
        return customer

    # ------------------------------------------------------------------ contacts
    def contact_out(self, contact: dict, *, with_customer: bool = False, with_active: bool = False) -> dict:
        out = {
            "id": contact["id"],
            "type": contact["type"],
            "value": contact["value"],
            "memo": contact["memo"],
            "modifiedOn": contact["modifiedOn"],
            "phoneSettings": {
                "phoneNumber": contact["value"] if contact["type"] in PHONE_TYPES else "",
                "doNotText": contact["_doNotText"],
            },
            "createdOn": contact["createdOn"],
        }
        if with_customer:
            out["customerId"] = contact["customerId"]
        if with_active:
            out["active"] = contact["_active"]
        return out

    def add_contact_record(
        self, customer_id: int, type: str, value: str, *, memo: str | None = None, ms: int | None = None
    ) -> dict:
        stamp = ms if ms is not None else self.clock.tick()
        self.clock.observe(stamp)
        contact_id = self.next_id("contact")
        contact = {
            "id": contact_id,
            "customerId": customer_id,
            "type": type,
            "value": value,
            "memo": memo,
            "createdOn": iso_ms(stamp),
            "modifiedOn": iso_ms(stamp),
            "_created": stamp,
            "_modified": stamp,
            "_active": True,
            "_doNotText": False,
        }
        self.contacts[contact_id] = contact
        self.contacts_by_customer.setdefault(customer_id, []).append(contact_id)
        self.contact_index.put(contact_id, stamp)
        return contact

    def touch_contact(self, contact: dict) -> None:
        ms = self.clock.tick()
        contact["_modified"] = ms
        contact["modifiedOn"] = iso_ms(ms)
        self.contact_index.put(contact["id"], ms)

    def active_contacts(self, customer_id: int) -> list[dict]:
        return [self.contacts[c] for c in self.contacts_by_customer.get(customer_id, ()) if self.contacts[c]["_active"]]

    def _list_customer_contacts(self, request: Request, id: int) -> Response:
        self._find_customer(id)
        query = Query(request)
        page, page_size, include_total = query.paging()
        query.check()
        rows = self.active_contacts(id)
        return Response(200, page_of(rows, page, page_size, include_total, self.contact_out))

    def _list_all_customer_contacts(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        customer_ids = query.ids("customerIds")
        modified = date_filter(query, "modified", "_modified")
        created = date_filter(query, "created", "_created")
        if customer_ids is None and not modified and not query.errors:
            query.refuse(
                "customerIds", "One of the filters customerIds, modifiedBefore or modifiedOnOrAfter must be provided."
            )
        query.check()
        if customer_ids is not None:
            candidates = [c for cid in dict.fromkeys(customer_ids) for c in self.active_contacts(cid)]
        else:
            candidates = [c for c in self.contacts.values() if c["_active"]]
        rows = [c for c in candidates if all(test(c) for test in modified + created)]
        return Response(
            200, page_of(rows, page, page_size, include_total, lambda c: self.contact_out(c, with_customer=True))
        )

    def _create_customer_contact(self, request: Request, id: int) -> Response:
        customer = self._find_customer(id)
        body = self._body(
            request, "Crm.V2.Customers.CreateCustomerContactRequest", "crm.V2.Customers.CreateCustomerContactRequest"
        )
        contact = self.add_contact_record(customer["id"], body["type"], body["value"], memo=body.get("memo"))
        return Response(200, self.contact_out(contact))

    def _find_contact(self, customer_id: int, contact_id: int) -> dict:
        self._find_customer(customer_id)
        contact = self.contacts.get(contact_id)
        if contact is None or contact["customerId"] != customer_id or not contact["_active"]:
            raise fail(404, "Contact not found", {"contactId": [f"Contact {contact_id} was not found."]})
        return contact

    def _patch_customer_contact(self, request: Request, id: int, contact_id: int) -> Response:
        contact = self._find_contact(id, contact_id)
        body = self._body(
            request, "Crm.V2.Customers.UpdateCustomerContactRequest", "crm.V2.Customers.UpdateCustomerContactRequest"
        )
        for key in ("type", "value", "memo"):
            if key in body:
                contact[key] = body[key]
        self.touch_contact(contact)
        return Response(200, self.contact_out(contact))

    def _delete_customer_contact(self, request: Request, id: int, contact_id: int) -> Response:
        contact = self._find_contact(id, contact_id)
        contact["_active"] = False
        self.touch_contact(contact)
        return Response(200, None)

    # ------------------------------------------------------------------ custom-field types
    def field_type_out(self, field_type: dict) -> dict:
        return public(field_type)

    def add_field_type(
        self,
        type_id: int,
        name: str,
        data_type: str = "Text",
        options: list[str] | None = None,
        *,
        ms: int,
        listed: bool = True,
    ) -> dict:
        field_type = {
            "id": type_id,
            "name": name,
            "dataType": data_type,
            "dataTypeOptions": list(options or []),
            "createdOn": iso_ms(ms),
            "modifiedOn": iso_ms(ms),
            "_created": ms,
            "_modified": ms,
            "_listed": listed,  # False: retired by the tenant, yet customers still carry values
        }
        self.field_types[type_id] = field_type
        return field_type

    def _list_field_types(self, request: Request) -> Response:
        query = Query(request)
        page, page_size, include_total = query.paging()
        tests = date_filter(query, "created", "_created") + date_filter(query, "modified", "_modified")
        order = query.sort({"Id": "id", "ModifiedOn": "_modified", "CreatedOn": "_created"})
        query.check()
        rows = ordered(
            [t for t in self.field_types.values() if t["_listed"] and all(test(t) for test in tests)], order
        )
        return Response(200, page_of(rows, page, page_size, include_total, self.field_type_out))

    def convert_booking(
        self,
        booking_id: int,
        *,
        job_status: str,
        customer_id: int | None,
        address: dict,
        at_ms: int | None = None,
    ) -> dict:
        """A CSR books a job from the booking (status "Converted", ``jobId`` set); without
        ``customer_id`` the CSR creates the customer from the booking and its contacts.
        ``at_ms`` places it in the past (seeded history); else it happens now."""
        booking = self.bookings.get(booking_id)
        if booking is None:
            raise AdminError(f"booking {booking_id} does not exist", status=404)
        if booking["jobId"] is not None:
            raise AdminError(f"booking {booking_id} is already converted to job {booking['jobId']}", status=409)
        if booking["status"] == "Dismissed":
            raise AdminError(f"booking {booking_id} is dismissed", status=409)
        if job_status not in JOB_STATUSES:
            raise AdminError(f"unknown job status {job_status!r}; one of {', '.join(JOB_STATUSES)}")
        if customer_id is not None and customer_id not in self.customers:
            raise AdminError(f"customer {customer_id} does not exist", status=404)
        if customer_id is None:
            customer = self.add_customer_record(
                name=booking["name"],
                type=booking["customerType"] or "Residential",
                address=booking["address"] or address,
                created_ms=at_ms,
            )
            for contact in booking["_contacts"]:
                self.add_contact_record(
                    customer["id"], contact["type"], contact["value"], memo=contact["memo"] or None, ms=at_ms
                )
        else:
            customer = self.customers[customer_id]
        ms = at_ms if at_ms is not None else self.clock.tick()
        job = self.jpm.create(booking, customer, status=job_status, created_ms=ms)
        booking["jobId"] = job["id"]
        booking["status"] = "Converted"
        self.touch_booking(booking, ms=at_ms)
        return job

    def dismiss_booking(self, booking_id: int, *, reason_id: int = 1, at_ms: int | None = None) -> dict:
        booking = self.bookings.get(booking_id)
        if booking is None:
            raise AdminError(f"booking {booking_id} does not exist", status=404)
        if booking["jobId"] is not None:
            raise AdminError(f"booking {booking_id} is converted to job {booking['jobId']}", status=409)
        if booking["status"] == "Dismissed":
            raise AdminError(f"booking {booking_id} is dismissed already", status=409)
        booking["status"] = "Dismissed"
        booking["dismissingReasonId"] = reason_id
        self.touch_booking(booking, ms=at_ms)
        return booking

    # ------------------------------------------------------------------ exports
    def export(self, request: Request, index: ModifiedIndex, render: Callable[[int], dict]) -> Response:
        query = Query(request)
        start = query.raw("from")
        recent = query.boolean("includeRecentChanges")
        query.check()
        position: tuple[int, int] | None = None
        if start is not None:
            position = decode_position(start)
            if position is None:
                moment = parse_query_datetime(start)
                if moment is None:
                    raise fail(
                        400,
                        VALIDATION_TITLE,
                        {"from": [f"The value '{start}' is not a valid continuation token or date."]},
                    )
                position = (to_ms(moment), -1)  # modifiedOn >= the date
        until = None if recent else now_ms() - int(self.export_lag_seconds * 1000)
        keys, more = index.after(position, limit=self.export_batch_size, until_ms=until)
        last = keys[-1] if keys else position
        token = encode_position(*last) if last is not None else encode_position(0, -1)
        return Response(
            200, {"hasMore": more, "continueFrom": token, "data": [render(record_id) for _, record_id in keys]}
        )

    def _export_customers(self, request: Request) -> Response:
        return self.export(request, self.customer_index, lambda i: self.customer_out(self.customers[i]))

    def _export_contacts(self, request: Request) -> Response:
        return self.export(
            request,
            self.contact_index,
            lambda i: self.contact_out(self.contacts[i], with_customer=True, with_active=True),
        )

    def _export_bookings(self, request: Request) -> Response:
        return self.export(
            request, self.booking_index, lambda i: {**self._booking_out(self.bookings[i]), "active": True}
        )



def _custom_value_problem(field_type: dict, value: str) -> str | None:
    name = f"'{field_type['name']}' ({field_type['id']})"
    if not value.strip():
        return f"The Value field is required: the custom field {name} cannot be given an empty value."
    if field_type["dataType"] == "Dropdown" and value not in field_type["dataTypeOptions"]:
        options = ", ".join(field_type["dataTypeOptions"])
        return f"'{value}' is not an option of the Dropdown custom field {name}. Options: {options}."
    if field_type["dataType"] == "Numeric" and not _NUMBER.match(value.strip()):
        return f"'{value}' is not a number: the custom field {name} is Numeric."
    return None


def _booking_address(address: dict) -> dict:
    return {part: address.get(part) for part in ("street", "unit", "city", "state", "zip", "country")}


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())
