"""ServiceTitan API v2 client: bookings through the booking provider, customers, exports, jobs.

Thread-safe: services call one client from a pool of workers. Every call carries
``Authorization: Bearer <token>`` and ``ST-App-Key``, passes the shared rate limiter (the
per-second limit, counted across processes) and the shared retry loop (``stsync.http``).

Errors:
- ``AuthError`` (exit 4) for a 401 that survives one token renewal, a 401 or 403 naming the
  app key — the API gateway calls it the "subscription key" (api/servicetitan.md §11) — a 403
  (tenant not accessible or a scope missing) and a wrong booking provider value;
- ``ConfigError`` (exit 3, quoting the URL) for a 404 that is not ServiceTitan's JSON while
  nothing has answered yet: ``servicetitan.api_url`` points elsewhere (a proxy's HTML page);
  ``TemporaryError`` for one once the API has answered;
- ``ServiceTitanApiError`` for every other refusal, with the ApiErrorResponse's title,
  per-field messages verbatim, traceId, method and path;
- ``TemporaryError`` / ``RateLimited`` (exit 6) past the retry budget, ``IncompleteListing``
  (exit 6) for a list or feed that says more follows but cannot be followed (never a silent
  part of it), and ``AnswerLost`` when the answer to a booking create never came (look it up
  by externalId first).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from stsync import __version__
from stsync.errors import AnswerLost, AuthError, IncompleteListing, ServiceTitanApiError
from stsync.http import RetryPolicy, is_json_answer, response_json, route_not_found, send_with_retries, shared_ssl_context
from stsync.logs import get_logger, register_secret
from stsync.ratelimit import RateLimiter
from stsync.servicetitan.auth import BearerTokenAuth, TokenProvider
from stsync.servicetitan.models import (
    Booking,
    BookingProviderTag,
    Customer,
    CustomerContact,
    CustomFieldType,
    ExportPage,
    Job,
    JobHistory,
)

log = get_logger(__name__)

SERVICE = "ServiceTitan"
MAX_IDS_PER_REQUEST = 50  # api/servicetitan.md §4: `ids` takes at most 50
# "subscription key": the Azure API Management gateway's word for the ST-App-Key (api/servicetitan.md §11).
_APP_KEY_WORDS = ("app key", "app-key", "appkey", "application key", "st-app-key", "subscription key")
_APP_KEY_HINT = (
    "check the App Key (ST-App-Key, ak1.…) of your ServiceTitan app: the developer portal → My Apps → your app → "
    "Application Key; set STSYNC_ST_APP_KEY or run `stsync connect --app-key …`"
)
_BOOKING_PROVIDER_HINT = (
    "You can find the correct value in your ServiceTitan account under Settings → Integrations → "
    "API Application Access → your Referral Factory app details (shown as \"Allowed 'booking_provider' "
    "value\"); then run `stsync connect --booking-provider <value>`"
)

ModelT = TypeVar("ModelT", bound=BaseModel)


class ServiceTitanClient:
    def __init__(
        self,
        *,
        auth_url: str,
        api_url: str,
        tenant_id: int,
        client_id: str,
        client_secret: str,
        app_key: str,
        token_cache: Path | None,
        limiter: RateLimiter,
        retry: RetryPolicy,
        page_size: int = 200,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        # A CR/LF or space around a pasted secret would make a bad header or a refused grant.
        client_secret, app_key = client_secret.strip(), app_key.strip()
        register_secret(client_secret)
        register_secret(app_key)
        self.tenant_id = int(tenant_id)
        self.api_url = api_url.rstrip("/")
        self.auth_url = auth_url.rstrip("/")
        self.page_size = max(1, int(page_size))
        self._app_key = app_key
        self._limiter = limiter
        self._retry = retry
        # One httpx client (thread-safe connection pool) for the API and the token endpoint.
        self._http = httpx.Client(
            transport=transport,
            verify=shared_ssl_context() if transport is None else True,
            timeout=timeout,
            headers={"Accept": "application/json", "User-Agent": f"stsync/{__version__}"},
        )
        self._tokens = TokenProvider(
            http=self._http,
            auth_url=self.auth_url,
            tenant_id=self.tenant_id,
            client_id=client_id,
            client_secret=client_secret,
            cache_path=token_cache,
            retry=retry,
        )
        self._auth = BearerTokenAuth(self._tokens, before_resend=limiter.acquire)
        self._sent = itertools.count()
        self._sent_so_far = 0
        self._answered = False  # any API request answered in this client's life (how a 404 is read)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """The HTTP connections, and the limiter's descriptors of the shared rate state."""
        self._http.close()
        self._limiter.close()

    def __enter__(self) -> ServiceTitanClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connection checks -------------------------------------------------------------
    def verify_token(self) -> None:
        """Fetch a fresh token: proves the Client ID / Client Secret work now (AuthError if not)."""
        self._tokens.fetch_new()

    def check_booking_provider(self, bp: int | str) -> None:
        """The booking provider value is valid for this app and tenant (AuthError if not)."""
        path = self._bookings_path(bp)
        response = self._send("GET", path, params={"page": 1, "pageSize": 1})
        status = response.status_code
        if status == 404 and not is_json_answer(response):
            raise self._route_not_found(response, "GET")
        if status == 404 or (status == 403 and not _mentions_app_key(response)):
            also = " (a 403 can also mean the app lacks the CRM bookings scope)" if status == 403 else ""
            raise AuthError(
                f"Booking Provider Value is incorrect: ServiceTitan answered HTTP {status} for booking "
                f"provider {bp} on tenant {self.tenant_id}{also}",
                hint=_BOOKING_PROVIDER_HINT,
            )
        self._decode(response, "GET", path)

    # -- bookings ----------------------------------------------------------------------
    def list_bookings(
        self,
        bp: int | str,
        *,
        external_id: str | None = None,
        ids: Iterable[int] | None = None,
        modified_on_or_after: datetime | str | None = None,
        **filters: Any,
    ) -> Iterator[Booking]:
        """The provider's bookings, paged; ``ids`` are sent in batches of 50."""
        params = {"externalId": external_id, "modifiedOnOrAfter": modified_on_or_after, **_camel(filters)}
        path = self._bookings_path(bp)
        if ids is None:
            yield from self._paged(path, params, Booking)
            return
        for batch in _batches(ids):
            yield from self._paged(path, {**params, "ids": batch}, Booking)

    def find_bookings_by_external_id(self, bp: int | str, external_id: str) -> list[Booking]:
        """Every booking of this provider whose externalId is exactly ``external_id``."""
        return [b for b in self.list_bookings(bp, external_id=external_id) if b.external_id == external_id]

    def get_bookings(self, bp: int | str, ids: Iterable[int]) -> list[Booking]:
        return list(self.list_bookings(bp, ids=ids))

    def get_booking(self, bp: int | str, id: int) -> Booking:
        path = f"{self._bookings_path(bp)}/{int(id)}"
        return self._parse(Booking, self._call("GET", path), "GET", path)

    def create_booking(self, bp: int | str, body: dict) -> Booking:
        """POST a booking. Never retried blindly: a lost answer raises ``AnswerLost``."""
        path = self._bookings_path(bp)
        data = self._call("POST", path, json=body)
        try:
            return Booking.model_validate(data)
        except ValidationError:
            # The booking exists (200) but its answer is unreadable: the caller must find it.
            raise AnswerLost(
                f"ServiceTitan accepted POST {path} but its answer was not a booking",
                hint="stsync looks the booking up by its externalId before writing it again; rerun the command",
            ) from None

    def list_booking_provider_tags(self) -> Iterator[BookingProviderTag]:
        yield from self._paged(self._crm("/booking-provider-tags"), {}, BookingProviderTag)

    # -- customers ---------------------------------------------------------------------
    def get_customer(self, id: int) -> Customer:
        path = self._crm(f"/customers/{int(id)}")
        return self._parse(Customer, self._call("GET", path), "GET", path)

    def get_customers(self, ids: Iterable[int]) -> list[Customer]:
        """Customers by id, inactive and merged ones included (``active=Any``)."""
        path = self._crm("/customers")
        found: list[Customer] = []
        for batch in _batches(ids):
            found.extend(self._paged(path, {"ids": batch, "active": "Any"}, Customer))
        return found

    def update_customer(self, id: int, body: dict) -> Customer:
        """PATCH a customer (idempotent: retried). Send the full customFields list (§6.6)."""
        path = self._crm(f"/customers/{int(id)}")
        return self._parse(Customer, self._call("PATCH", path, json=body), "PATCH", path)

    def list_custom_field_types(self) -> list[CustomFieldType]:
        return list(self._paged(self._crm("/customers/custom-fields"), {}, CustomFieldType))

    def list_customer_contacts(self, customer_ids: Iterable[int]) -> Iterator[CustomerContact]:
        path = self._crm("/customers/contacts")
        for batch in _batches(customer_ids):
            yield from self._paged(path, {"customerIds": batch}, CustomerContact)

    def export_customers(self, start: str | None) -> Iterator[ExportPage[Customer]]:
        """The customer export feed from ``start`` (a continueFrom token, a date, or None)."""
        yield from self._export(self._crm("/export/customers"), start, ExportPage[Customer])

    def export_customer_contacts(self, start: str | None) -> Iterator[ExportPage[CustomerContact]]:
        yield from self._export(self._crm("/export/customers/contacts"), start, ExportPage[CustomerContact])

    # -- jobs --------------------------------------------------------------------------
    def get_job(self, id: int) -> Job:
        path = self._jpm(f"/jobs/{int(id)}")
        return self._parse(Job, self._call("GET", path), "GET", path)

    def get_jobs(self, ids: Iterable[int]) -> list[Job]:
        path = self._jpm("/jobs")
        found: list[Job] = []
        for batch in _batches(ids):
            found.extend(self._paged(path, {"ids": batch}, Job))
        return found

    def get_job_history(self, id: int) -> JobHistory:
        """Every history entry of one job (``GET jobs/{id}/history``)."""
        path = self._jpm(f"/jobs/{int(id)}/history")
        history = self._parse(JobHistory, self._call("GET", path), "GET", path)
        return history.model_copy(update={"job_id": int(id)})

    def export_jobs(self, start: str | None) -> Iterator[ExportPage[Job]]:
        """The tenant's job export feed from ``start`` (a continueFrom token, a date, or None)."""
        yield from self._export(self._jpm("/export/jobs"), start, ExportPage[Job])

    def export_job_history(self, start: str | None) -> Iterator[ExportPage[JobHistory]]:
        """The tenant's job-history export feed: a row per job whose history changed, with all
        of that job's entries (scope ``tn.jpm.jobhistory:r``)."""
        yield from self._export(self._jpm("/export/job-history"), start, ExportPage[JobHistory])

    def list_jobs(
        self,
        *,
        booking_id: int | None = None,
        job_status: str | None = None,
        modified_on_or_after: datetime | str | None = None,
        **filters: Any,
    ) -> Iterator[Job]:
        params = {
            "bookingId": booking_id,
            "jobStatus": job_status,
            "modifiedOnOrAfter": modified_on_or_after,
            **_camel(filters),
        }
        yield from self._paged(self._jpm("/jobs"), params, Job)

    # -- plumbing ----------------------------------------------------------------------
    def _crm(self, rest: str) -> str:
        return f"/crm/v2/tenant/{self.tenant_id}{rest}"

    def _jpm(self, rest: str) -> str:
        return f"/jpm/v2/tenant/{self.tenant_id}{rest}"

    def _bookings_path(self, bp: int | str) -> str:
        return self._crm(f"/booking-provider/{bp}/bookings")

    @property
    def requests_made(self) -> int:
        """API requests sent so far by this client (retries and the token endpoint not counted)."""
        return self._sent_so_far

    def _send(self, method: str, path: str, *, params: dict | None = None, json: Any = None) -> httpx.Response:
        self._sent_so_far = next(self._sent) + 1  # itertools.count is atomic under the GIL
        request = self._http.build_request(
            method,
            self.api_url + path,
            params=_query(params or {}),
            json=json,
            headers={"ST-App-Key": self._app_key},
        )
        return send_with_retries(
            self._http,
            request,
            service=SERVICE,
            policy=self._retry,
            limiter=self._limiter,
            auth=self._auth,
            before_attempt=self._tokens.get,
            on_rate_limited=self._on_rate_limited,
        )

    def _on_rate_limited(self, response: httpx.Response) -> None:
        # Someone else shares the tenant's per-app budget: leave them room for a while.
        self._limiter.slow_down()

    def _call(self, method: str, path: str, *, params: dict | None = None, json: Any = None) -> Any:
        return self._decode(self._send(method, path, params=params, json=json), method, path)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        if not response.is_success:
            raise self._error_for(response, method, path)
        self._answered = True
        return response_json(response)

    def _route_not_found(self, response: httpx.Response, method: str) -> Exception:
        return route_not_found(
            SERVICE,
            method,
            str(response.request.url.copy_with(query=None)),
            answered_before=self._answered,
            config_key="servicetitan.api_url",
            example="https://api.servicetitan.io (servicetitan.environment sets it)",
        )

    def _parse(self, model: type[ModelT], data: Any, method: str, path: str) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _unexpected_shape(model.__name__, exc, method, path) from None

    def _paged(self, path: str, params: dict, model: type[ModelT]) -> Iterator[ModelT]:
        page = 1
        while True:
            body = self._call("GET", path, params={**params, "page": page, "pageSize": self.page_size})
            rows = body.get("data") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise _unexpected_shape(f"page of {model.__name__}", None, "GET", path)
            for row in rows:
                yield self._parse(model, row, "GET", path)
            if not body.get("hasMore"):
                return
            if not rows:
                # hasMore with nothing in it would loop for ever; stopping quietly would act on
                # part of the list as if it were all of it.
                raise _incomplete("GET", path, f"page {page} is empty but says more pages follow")
            page += 1

    def _export(self, path: str, start: str | None, page_model: type[ExportPage]) -> Iterator[ExportPage]:
        position = start
        while True:
            body = self._call("GET", path, params={"from": position, "includeRecentChanges": True})
            page = self._parse(page_model, body, "GET", path)
            yield page
            if not page.has_more:
                return
            if not page.continue_from or (page.continue_from == position and not page.data):
                raise _incomplete("GET", path, "the feed says more follows but gives no new position to continue from")
            position = page.continue_from

    def _error_for(self, response: httpx.Response, method: str, path: str) -> Exception:
        status = response.status_code
        if status == 404 and not is_json_answer(response):
            return self._route_not_found(response, method)
        error = parse_api_error(response, method=method, path=path)
        if status == 401 and _mentions_app_key(response):
            return AuthError(
                f"ServiceTitan refused {method} {path}: wrong ST-App-Key ({error.title or 'HTTP 401'})",
                hint=_APP_KEY_HINT,
            )
        if status == 401:
            return AuthError(
                f"ServiceTitan rejected a freshly issued access token for tenant {self.tenant_id} "
                f"({method} {path})",
                hint="check that the app is connected to this tenant (ServiceTitan → Settings → Integrations → "
                "API Application Access), that the Client ID belongs to this environment and that the app key "
                "is your app's; then run `stsync connect`",
            )
        if status == 403:
            if _mentions_app_key(response):
                return AuthError(
                    f"ServiceTitan refused {method} {path}: wrong ST-App-Key ({error.title or 'HTTP 403'})",
                    hint=_APP_KEY_HINT,
                )
            return AuthError(
                f"ServiceTitan refused access to tenant {self.tenant_id} ({method} {path}, HTTP 403"
                f"{': ' + error.title if error.title else ''})",
                hint=f"make sure the app is connected to tenant {self.tenant_id} and has the API scopes stsync "
                "needs (CRM bookings, booking provider tags, customers; JPM jobs): ServiceTitan → Settings → "
                "Integrations → API Application Access",
            )
        return error


def parse_api_error(response: httpx.Response, *, method: str, path: str) -> ServiceTitanApiError:
    """An ApiErrorResponse (type, title, status, traceId, errors, data) as an exception.

    Per-field messages are kept verbatim; a body of another shape still gives a useful error.
    """
    body = response_json(response)
    title: str | None = None
    trace_id: str | None = None
    errors: dict[str, list[str]] = {}
    if isinstance(body, dict):
        title = _text(body.get("title")) or _text(body.get("message")) or _text(body.get("error"))
        trace_id = _text(body.get("traceId"))
        raw_errors = body.get("errors")
        if isinstance(raw_errors, dict):
            for field, messages in raw_errors.items():
                if isinstance(messages, list):
                    errors[str(field)] = [m if isinstance(m, str) else str(m) for m in messages]
                elif messages is not None:
                    errors[str(field)] = [messages if isinstance(messages, str) else str(messages)]
    elif body is None and response.content:
        text = response.text.strip()
        title = text[:300] if text else None
    message = f"ServiceTitan answered HTTP {response.status_code} to {method} {path}"
    if title:
        message += f": {title}"
    if errors:
        details = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items())
        message += f" ({details})"
    return ServiceTitanApiError(
        message,
        status=response.status_code,
        title=title,
        errors=errors,
        trace_id=trace_id,
        method=method,
        path=path,
    )


def _incomplete(method: str, path: str, why: str) -> IncompleteListing:
    return IncompleteListing(
        f"ServiceTitan's paging of {method} {path} cannot be followed to its end: {why}. "
        "Stopped rather than act on part of the list",
        hint="retry later; if it persists, report it to ServiceTitan with this message",
    )


def _unexpected_shape(what: str, exc: ValidationError | None, method: str, path: str) -> ServiceTitanApiError:
    detail = ""
    if exc is not None and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        detail = f" ({where}: {first.get('msg')})"
    return ServiceTitanApiError(
        f"ServiceTitan answered {method} {path} with something that is not a {what}{detail}",
        status=200,
        title="unexpected response shape",
        method=method,
        path=path,
    )


def _mentions_app_key(response: httpx.Response) -> bool:
    try:
        text = response.text.casefold()
    except UnicodeDecodeError:
        return False
    return any(word in text for word in _APP_KEY_WORDS)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _batches(ids: Iterable[int]) -> Iterator[list[int]]:
    unique = list(dict.fromkeys(int(i) for i in ids))
    for start in range(0, len(unique), MAX_IDS_PER_REQUEST):
        yield unique[start : start + MAX_IDS_PER_REQUEST]


def _camel(filters: dict[str, Any]) -> dict[str, Any]:
    return {to_camel(key): value for key, value in filters.items()}


def _query(params: dict[str, Any]) -> dict[str, str]:
    """Query parameters as ServiceTitan reads them: RFC 3339 UTC dates, lowercase booleans,
    comma-separated lists; None means "not sent"."""
    query: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            query[key] = "true" if value else "false"
        elif isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            query[key] = moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        elif isinstance(value, date):
            query[key] = value.isoformat()
        elif isinstance(value, (list, tuple, set, frozenset)):
            query[key] = ",".join(str(v) for v in value)
        else:
            query[key] = str(value)
    return query
