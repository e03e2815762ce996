"""Referral Factory API v2 client: campaigns, users (referrers and leads), qualification.

Thread-safe. Every call passes the shared per-minute rate limiter (counted across processes)
and the shared retry loop (``stsync.http``). Referral Factory blocks the caller's IP after
repeated abuse of its limit, so a 429 is never flow control here: the first one slows the
limiter down (persisted, so the next run starts slower) and is retried after Retry-After;
the second in this client's lifetime stops all calls to Referral Factory (``RateLimited``,
exit 6, "retry later").

Errors: 401/403 → ``AuthError`` (exit 4); the documented ``{code, message, errors}`` body —
each ``errors[field]`` item a string or a ``{field, message}`` object — →
``ReferralFactoryApiError``; a 422 saying the e-mail already exists → ``DuplicateEmail``.

``GET /users`` ignores ``campaign_id`` (api/referral-factory.md §4): users of a campaign are
found with ``POST /users/search`` only, and every row is re-checked.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from stsync import __version__
from stsync.errors import AnswerLost, AuthError, DuplicateEmail, IpBlocked, RateLimited, ReferralFactoryApiError
from stsync.http import RetryPolicy, response_json, send_with_retries, shared_ssl_context
from stsync.logs import get_logger, register_secret
from stsync.ratelimit import RateLimiter
from stsync.referralfactory.models import Campaign, User

log = get_logger(__name__)

SERVICE = "Referral Factory"
MAX_PER_PAGE = 250  # api/referral-factory.md §4
_KEY_HINT = (
    "Referral Factory allows one active API key per account: a new key deactivates the old one. "
    "Copy the current key (Campaign Settings → Integrations and API → API & Webhooks → Copy API Key) "
    "and run `stsync connect`"
)
_DUPLICATE_WORDS = re.compile(r"already|exists|taken|in use|duplicate", re.IGNORECASE)

ModelT = TypeVar("ModelT", bound=BaseModel)


class ReferralFactoryClient:
    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        limiter: RateLimiter,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        register_secret(api_key)
        self.api_url = api_url.rstrip("/")
        self._limiter = limiter
        self._retry = retry
        self._http = httpx.Client(
            transport=transport,
            verify=shared_ssl_context() if transport is None else True,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"stsync/{__version__}",
            },
        )
        self._lock = threading.Lock()
        self._rate_limited = 0
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ReferralFactoryClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- campaigns ---------------------------------------------------------------------
    def get_campaign(self, id_or_code: int | str) -> Campaign:
        """One campaign by id or code; 404 → ``ReferralFactoryApiError`` with status 404."""
        path = f"/campaigns/{_segment(id_or_code)}"
        return self._parse(Campaign, _unwrap(self._call("GET", path)), "GET", path)

    def list_campaigns(self) -> Iterator[Campaign]:
        for row in self._paged("GET", "/campaigns", per_page=MAX_PER_PAGE):
            yield self._parse(Campaign, row, "GET", "/campaigns")

    # -- users -------------------------------------------------------------------------
    def create_user(self, body: dict) -> User:
        """POST /users. Not retried blindly: a lost answer raises ``AnswerLost`` (search first)."""
        data = _unwrap(self._call("POST", "/users", json=body))
        try:
            return User.model_validate(data)
        except ValidationError:
            # Created (2xx) but unreadable: the caller must find the user by e-mail.
            raise AnswerLost(
                "Referral Factory accepted POST /users but its answer was not a user",
                hint="stsync searches the campaign for the e-mail before creating it again; rerun the command",
            ) from None

    def get_user(self, identifier: int | str) -> User:
        """One user by id (preferred), e-mail or code."""
        path = f"/users/{_segment(identifier)}"
        return self._parse(User, _unwrap(self._call("GET", path)), "GET", path)

    def update_user(self, id: int, body: dict) -> User:
        """PUT /users/{id} (idempotent: retried). Reads the user back if the answer lacks it."""
        path = f"/users/{int(id)}"
        data = _unwrap(self._call("PUT", path, json=body))
        try:
            return User.model_validate(data)
        except ValidationError:
            return self.get_user(int(id))

    def search_users(self, conditions: list[tuple[str, Any]], *, per_page: int = MAX_PER_PAGE) -> Iterator[User]:
        """POST /users/search with every condition ANDed; ``campaign_id`` re-checked on each row."""
        body = {
            "filters": {
                "operator": "AND",
                "value": [{"field": field, "value": str(value), "operator": "="} for field, value in conditions],
            }
        }
        campaigns = {str(value) for field, value in conditions if field == "campaign_id"}
        for row in self._paged("POST", "/users/search", json=body, per_page=per_page):
            user = self._parse(User, row, "POST", "/users/search")
            if campaigns and any(str(user.campaign_id) != wanted for wanted in campaigns):
                log.debug("search returned user %s of campaign %s; skipped", user.id, user.campaign_id)
                continue
            yield user

    def find_user_by_email(self, campaign_id: int, email: str) -> User | None:
        """The campaign's user with this e-mail (compared case-insensitively), or None."""
        given = email.strip()
        wanted = given.casefold()
        # The server may compare exactly; a lowercase retry finds "Jane@X.com" stored as "jane@x.com".
        for candidate in dict.fromkeys([given, given.lower()]):
            for user in self.search_users([("campaign_id", campaign_id), ("email", candidate)]):
                if user.email is not None and user.email.strip().casefold() == wanted:
                    return user
        return None

    def find_user_by_code(self, campaign_id: int, code: str) -> User | None:
        for user in self.search_users([("campaign_id", campaign_id), ("code", code)]):
            if user.code == code:
                return user
        return None

    def set_qualification(
        self,
        qualified: bool,
        *,
        id: int | None = None,
        code: str | None = None,
        email: str | None = None,
        campaign_id: int | None = None,
    ) -> User | None:
        """PUT /users/qualification for one lead, named by exactly one of: ``id``, ``code``,
        ``email`` + ``campaign_id``. Returns the user when the answer includes it."""
        forms = [id is not None, code is not None, email is not None]
        if sum(forms) != 1 or (email is None) != (campaign_id is None):
            raise ValueError("set_qualification needs exactly one of: id, code, or email with campaign_id")
        body: dict[str, Any] = {"qualified": bool(qualified)}
        if id is not None:
            body["id"] = int(id)
        elif code is not None:
            body["code"] = code
        else:
            body["email"] = email
            body["campaign_id"] = int(campaign_id)  # type: ignore[arg-type]
        data = _unwrap(self._call("PUT", "/users/qualification", json=body))
        try:
            return User.model_validate(data)
        except ValidationError:
            return None

    # -- plumbing ----------------------------------------------------------------------
    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise self._stop_error()

    def _stop_error(self) -> RateLimited:
        return RateLimited(
            "Referral Factory rate-limited stsync twice in this run (HTTP 429): stopped calling it, "
            "because repeated abuse gets this machine's IP blocked",
            hint="retry later; the next run starts at a slower rate. If another integration uses the same "
            "Referral Factory account, lower [limits] referral_factory_per_minute",
        )

    def _on_rate_limited(self, response: httpx.Response) -> None:
        with self._lock:
            self._rate_limited += 1
            stop = self._rate_limited >= 2
            if stop:
                self._stopped = True
        # Persisted either way: the rest of this run, and the next run, go slower.
        self._limiter.slow_down()
        if stop:
            raise self._stop_error()

    def _send(
        self, method: str, path: str, *, params: dict | None = None, json: Any = None, idempotent: bool | None = None
    ) -> httpx.Response:
        request = self._http.build_request(method, self.api_url + path, params=params, json=json)
        return send_with_retries(
            self._http,
            request,
            service=SERVICE,
            policy=self._retry,
            limiter=self._limiter,
            idempotent=idempotent,
            before_attempt=self._check_not_stopped,
            on_rate_limited=self._on_rate_limited,
            # Referral Factory counts per minute: without a Retry-After, wait out a window.
            unsaid_rate_limit_wait=self._limiter.window,
        )

    def _call(
        self, method: str, path: str, *, params: dict | None = None, json: Any = None, idempotent: bool | None = None
    ) -> Any:
        response = self._send(method, path, params=params, json=json, idempotent=idempotent)
        if not response.is_success:
            raise _error_for(response, method, path)
        return response_json(response)

    def _parse(self, model: type[ModelT], data: Any, method: str, path: str) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise ReferralFactoryApiError(
                f"Referral Factory answered {method} {path} with something that is not a "
                f"{model.__name__} ({where}: {first.get('msg')})",
                status=200,
                title="unexpected response shape",
                method=method,
                path=path,
            ) from None

    def _paged(self, method: str, path: str, *, json: Any = None, per_page: int = MAX_PER_PAGE) -> Iterator[dict]:
        """Rows of a Laravel-paginated list, page by page; a body without links/meta is one page."""
        per_page = max(1, min(MAX_PER_PAGE, int(per_page)))
        page = 1
        previous_first: Any = object()
        while True:
            # A search is a POST that changes nothing: safe to retry.
            body = self._call(method, path, params={"page": page, "per_page": per_page}, json=json, idempotent=True)
            rows = _rows(body)
            if rows is None:
                raise ReferralFactoryApiError(
                    f"Referral Factory answered {method} {path} without a list of rows",
                    status=200,
                    title="unexpected response shape",
                    method=method,
                    path=path,
                )
            first = rows[0].get("id") if rows and isinstance(rows[0], dict) else None
            if rows and first is not None and first == previous_first:
                log.warning("Referral Factory %s %s repeated page %d; stopping", method, path, page - 1)
                return
            previous_first = first
            yield from (row for row in rows if isinstance(row, dict))
            if not rows or not _has_next_page(body, page):
                return
            page += 1


def _has_next_page(body: Any, page: int) -> bool:
    if not isinstance(body, dict):
        return False
    meta = body.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("current_page"), int) and isinstance(meta.get("last_page"), int):
        if meta["current_page"] != page:
            # The server ignored `page`: following on would read the same page for ever.
            return False
        return meta["current_page"] < meta["last_page"]
    links = body.get("links")
    if isinstance(links, dict):
        return bool(links.get("next"))
    return False


def _rows(body: Any) -> list | None:
    if isinstance(body, list):
        return body
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return body["data"]
    return None


def _unwrap(body: Any) -> Any:
    """``{"data": {...}}`` → ``{...}``; an unwrapped object as is."""
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return body["data"]
    return body


def _segment(value: int | str) -> str:
    # An e-mail or code in the path: keep "@", escape anything that would change the URL.
    return quote(str(value).strip(), safe="@")


def parse_error(response: httpx.Response, *, method: str, path: str) -> ReferralFactoryApiError:
    """``{code, message, errors}`` as an exception; each errors item a string or ``{field, message}``."""
    body = response_json(response)
    message: str | None = None
    errors: dict[str, list[str]] = {}

    def add(field: str, item: Any) -> None:
        if isinstance(item, dict):
            text = item.get("message")
            field = str(item.get("field") or field)
            text = text if isinstance(text, str) else str(item)
        else:
            text = item if isinstance(item, str) else str(item)
        errors.setdefault(field, []).append(text)

    if isinstance(body, dict):
        if isinstance(body.get("message"), str) and body["message"]:
            message = body["message"]
        raw = body.get("errors")
        if isinstance(raw, dict):
            for field, items in raw.items():
                for item in items if isinstance(items, list) else [items]:
                    if item is not None:
                        add(str(field), item)
        elif isinstance(raw, list):
            for item in raw:
                add("_", item)
    elif body is None and response.content:
        text = response.text.strip()
        message = text[:300] or None
    text = f"Referral Factory answered HTTP {response.status_code} to {method} {path}"
    if message:
        text += f": {message}"
    if errors:
        text += " (" + "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()) + ")"
    duplicate = _is_duplicate_email(response.status_code, message, errors)
    error_class = DuplicateEmail if duplicate else ReferralFactoryApiError
    return error_class(text, status=response.status_code, title=message, errors=errors, method=method, path=path)


def _is_duplicate_email(status: int, message: str | None, errors: dict[str, list[str]]) -> bool:
    if status != 422:
        return False
    email_messages = [m for field, msgs in errors.items() if "email" in field.casefold() for m in msgs]
    if email_messages:
        return any(_DUPLICATE_WORDS.search(m) for m in email_messages)
    # Only a top-level message, e.g. "email already exists".
    return bool(message and "email" in message.casefold() and _DUPLICATE_WORDS.search(message))


def _error_for(response: httpx.Response, method: str, path: str) -> Exception:
    status = response.status_code
    error = parse_error(response, method=method, path=path)
    if status == 401:
        return AuthError(
            f"Referral Factory rejected the API key (HTTP 401 to {method} {path}): it was revoked or replaced",
            hint=_KEY_HINT,
        )
    if status == 403 and "blocked" in f"{error.title or ''} {error.message}".casefold():
        # Not a permissions problem: the IP was blocked for abusing the per-minute limit.
        return IpBlocked(
            f"Referral Factory blocked this machine's IP address for exceeding its rate limit ({method} {path})",
            hint="wait before running stsync again (the block is temporary) and make sure no other tool shares "
            "this API key's budget; lower [limits] referral_factory_per_minute if it happens again",
        )
    if status == 403:
        return AuthError(
            f"Referral Factory refused {method} {path} (HTTP 403{': ' + error.title if error.title else ''}): "
            "this needs an account admin's API key",
            hint="use the API key of a Referral Factory account admin and run `stsync connect`",
        )
    return error
