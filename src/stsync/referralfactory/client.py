"""Referral Factory API v2 client: campaigns, users (referrers and leads), qualification.

Thread-safe. Every call passes the shared per-minute rate limiter (counted across processes)
and the shared retry loop (``stsync.http``).

**429 and the IP block: a shared fate.** Referral Factory blocks the caller's IP after
repeated abuse of its limit, counted per IP whichever process caused it, so a 429 is never
flow control here. Each one is counted in the connection's shared rate-limit state
(``RateLimiter.record_rate_limited``): the first episode of the hour halves the rate of
every process for an hour and is retried after Retry-After (a minute when unsaid); the
second starts a cool-down during which no process of the connection sends anything to
Referral Factory (``CoolingDown``, exit 6, saying when it is safe again, in local time and
UTC). A 403 whose text says "blocked" is the IP block itself: a longer cool-down, same error.
``on_cool_down`` hears of each cool-down this client starts (for notifications).

**403.** "blocked" → the IP block (above). On an endpoint that answered earlier in this
client's life → ``TemporaryError`` (exit 6): the key was accepted minutes ago, so a refusal
now is Referral Factory's passing state, not a missing permission. Otherwise →
``AuthError`` (exit 4): the errors page's "admin-only resource".

**404.** Referral Factory's own JSON not-found → ``NotFound`` (with the URL). A 404 that is
not JSON (a proxy's or a web server's HTML page) never proves anything about a record: it is
a ``ConfigError`` (exit 3, quoting the URL: ``referral_factory.api_url`` does not point at
the API) while nothing has answered yet, a ``TemporaryError`` (exit 6) once the API has
answered in this client's life. Whether a ``NotFound`` proves a deletion is decided in one
place, ``confirm_deleted``: only when the campaign read of the same run succeeded (it reads
the campaign once if nothing has yet).

Other errors: 401 → ``AuthError`` (exit 4, key rotated); the documented ``{code, message,
errors}`` body — each ``errors[field]`` item a string or a ``{field, message}`` object — →
``ReferralFactoryApiError``; a 422 saying the e-mail already exists → ``DuplicateEmail``.

**Paging** (api/referral-factory.md §4, §11 "paging"): ``links.next`` is followed as given
(the same POST body for a search), keeping its parameters — only our ``per_page`` is added
when the link lacks it, since Laravel builds links without the request's query unless told
to, and an offset page of another size would repeat or skip rows. ``page=N`` is used only
when an answer has no next link but says (``meta.current_page`` < ``meta.last_page``) that
more pages exist; ``meta.next_cursor`` without a link is sent as ``cursor``. A list that
cannot be followed to its end — a page repeated, a page other than the one asked for, a
link to a page already read or outside the API — raises ``IncompleteListing`` (exit 6):
never a silent part of the list. A row met twice in one listing (offsets shifting under
page-number paging) is yielded once.

**Search** (``POST /users/search``): ``GET /users`` ignores ``campaign_id`` (§4), so users
of a campaign are found by search only, and every row is re-checked. A search that refuses
a filter field the contract has never seen in use (``type``) or its page size with a 422 is
retried once without it — that field checked on the client side, a smaller page — and what
worked is remembered per connection (``search_shape``), said at ``-v``; never a failed run.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from stsync import __version__
from stsync.errors import (
    AnswerLost,
    AuthError,
    ConfigError,
    DuplicateEmail,
    IncompleteListing,
    NotFound,
    ReferralFactoryApiError,
    StsyncError,
    TemporaryError,
    stops_run,
)
from stsync.http import RetryPolicy, is_json_answer, response_json, route_not_found, send_with_retries, shared_ssl_context
from stsync.logs import get_logger, register_secret
from stsync.ratelimit import CoolDown, RateLimiter, cooling_down_error
from stsync.referralfactory.models import Campaign, User
from stsync.referralfactory.search_shape import SearchShape, SearchShapeStore

log = get_logger(__name__)

SERVICE = "Referral Factory"
MAX_PER_PAGE = 250  # api/referral-factory.md §4
# Seen in use as search fields (api/referral-factory.md §11 "search fields"): a 422 naming
# one of these is about its value, never a reason to search without it.
CONFIRMED_SEARCH_FIELDS = frozenset({"email", "campaign_id", "id", "code"})
# Empty pages that still point at a next one, in a row, before the listing is given up.
MAX_EMPTY_PAGES = 5
# Laravel's "must not be greater than 100", "may not be greater than 100", "max: 100", ...
_MAXIMUM_IN_TEXT = re.compile(
    r"(?:greater than|more than|exceed\w*|at most|maximum(?: of| is)?|max(?:imum)?:?)\s*(\d+)", re.IGNORECASE
)
_FILTER_INDEX = re.compile(r"^filters?(?:\.value)?\.(\d+)(?:\.|$)")
_ADMIN_HINT = "use the API key of a Referral Factory account admin and run `stsync connect`"
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
        search_shape_file: Path | None = None,
        on_cool_down: Callable[[CoolDown], None] | None = None,
    ) -> None:
        """``search_shape_file``: where the search shape that worked is remembered (None: in
        memory only). ``on_cool_down``: told of each cool-down this client starts (the IP
        block, the second 429 episode) — the hook for notifications."""
        api_key = api_key.strip()  # a CR/LF around a pasted key would make a bad header
        register_secret(api_key)
        self.api_url = api_url.rstrip("/")
        self._base = httpx.URL(self.api_url + "/")
        self._limiter = limiter
        limiter.service = SERVICE  # the limiter is this service's: its cool-down message names it
        self._retry = retry
        self._search_shapes = SearchShapeStore(search_shape_file)
        self._search_shape: SearchShape | None = None
        self._on_cool_down = on_cool_down
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
        # What answered in this client's life (one run): the evidence 403s and 404s are read by.
        self._answered = False
        self._endpoints_answered: set[str] = set()
        self._campaigns_read: set[int] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """The HTTP connections, and the limiter's descriptors of the shared rate state."""
        self._http.close()
        self._limiter.close()

    def __enter__(self) -> ReferralFactoryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- campaigns ---------------------------------------------------------------------
    def get_campaign(self, id_or_code: int | str) -> Campaign:
        """One campaign by id or code; a missing one → ``NotFound``."""
        path = f"/campaigns/{_segment(id_or_code)}"
        campaign = self._parse(Campaign, _unwrap(self._call("GET", path)), "GET", path)
        with self._lock:
            self._campaigns_read.add(campaign.id)
        return campaign

    def list_campaigns(self) -> Iterator[Campaign]:
        for row in self._paged("GET", "/campaigns", per_page=MAX_PER_PAGE):
            yield self._parse(Campaign, row, "GET", "/campaigns")

    # -- 404s ---------------------------------------------------------------------------
    def confirm_deleted(self, not_found: NotFound, *, campaign_id: int) -> None:
        """Return when ``not_found`` proves that the record was deleted; raise otherwise.

        The one rule for every caller that reads a 404 as "gone" (qualify, push, the customer
        sync, serve's worker): it is the API's own JSON not-found (the only kind ``NotFound``
        is) **and** the campaign read of this run succeeded — read now if none was. A
        campaign that is not found either means a wrong ``api_url`` or ``campaign_id``
        (``ConfigError``, exit 3); a campaign read that fails otherwise leaves the 404
        unproven (``TemporaryError``, exit 6, or the read's own run-stopping error). Either
        way the caller records nothing as final.
        """
        wanted = int(campaign_id)
        with self._lock:
            if wanted in self._campaigns_read:
                return
        try:
            self.get_campaign(wanted)
        except NotFound as missing:
            raise ConfigError(
                f"Referral Factory answered HTTP 404 to {not_found.url}, and also to this connection's campaign "
                f"{wanted} ({missing.url}): the API URL or the campaign ID is wrong, so the 404 proves no deletion",
                key_path="referral_factory.campaign_id",
                hint="check referral_factory.campaign_id (Edit Campaign → Integration tab → API) and "
                "referral_factory.api_url; nothing was recorded as deleted",
            ) from None
        except StsyncError as failed:
            if stops_run(failed):
                raise
            raise TemporaryError(
                f"Referral Factory answered HTTP 404 to {not_found.url}, but reading campaign {wanted} to confirm "
                f"that the API is otherwise answering failed ({failed.message}): the 404 proves no deletion yet",
                hint="retry later; nothing was recorded as deleted",
            ) from None
        log.debug("404 for %s confirmed as a deletion: campaign %s reads fine", not_found.url, wanted)

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
        """POST /users/search with every condition ANDed; ``campaign_id`` — and every
        condition the search refused (see the module docstring) — re-checked on each row."""
        wanted = [(str(field), str(value)) for field, value in conditions]
        shape = self._known_search_shape()
        for _ in range(3):  # at most one retry per thing the search can refuse (a field, the page size)
            sent = [(field, value) for field, value in wanted if field not in shape.refused_fields]
            checked_here = [(field, value) for field, value in wanted if field in shape.refused_fields or field == "campaign_id"]
            page_size = shape.page_size(per_page)
            body = {
                "filters": {
                    "operator": "AND",
                    "value": [{"field": field, "value": value, "operator": "="} for field, value in sent],
                }
            }
            returned_any = False
            try:
                for row in self._paged("POST", "/users/search", json=body, per_page=page_size):
                    returned_any = True
                    user = self._parse(User, row, "POST", "/users/search")
                    if not all(_user_has(user, field, value) for field, value in checked_here):
                        log.debug("search returned user %s, which does not match the search; skipped", user.id)
                        continue
                    yield user
                return
            except ReferralFactoryApiError as exc:
                if returned_any or exc.status != 422 or isinstance(exc, DuplicateEmail):
                    raise
                learnt = _search_refusal(exc, sent, page_size)
                if learnt is None or shape.merged(learnt) == shape:
                    raise
                shape = self._remember_search_shape(learnt, exc)
        raise AssertionError("unreachable: each retry learns something new, and there are two things to learn")

    def _known_search_shape(self) -> SearchShape:
        with self._lock:
            if self._search_shape is None:
                self._search_shape = self._search_shapes.load()
                if self._search_shape.learnt():
                    log.info("Referral Factory search: using the shape remembered for this connection (%s)",
                             _describe_shape(self._search_shape))
            return self._search_shape

    def _remember_search_shape(self, learnt: SearchShape, refusal: ReferralFactoryApiError) -> SearchShape:
        merged = self._search_shapes.remember(learnt)
        with self._lock:
            self._search_shape = merged
        log.info(
            "Referral Factory search refused %s (HTTP 422: %s); searching again with %s, and remembering it for "
            "this connection",
            _describe_refusal(learnt),
            refusal.title or refusal.message,
            _describe_shape(merged),
        )
        return merged

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
            body["campaign_id"] = campaign_id
        data = _unwrap(self._call("PUT", "/users/qualification", json=body))
        try:
            return User.model_validate(data)
        except ValidationError:
            return None

    # -- plumbing ----------------------------------------------------------------------
    def _notify_cool_down(self, cool_down: CoolDown) -> None:
        if self._on_cool_down is None:
            return
        try:
            self._on_cool_down(cool_down)
        except Exception:  # a notification must never change what the run does
            log.warning("the cool-down notification failed", exc_info=True)

    def _on_rate_limited(self, response: httpx.Response) -> None:
        try:
            sent_at = self._limiter.wall_clock() - response.elapsed.total_seconds()
        except RuntimeError:  # elapsed is set once the answer is read; without it, "now"
            sent_at = None
        episode = self._limiter.record_rate_limited(sent_at=sent_at)
        if episode.cool_down is not None:
            self._notify_cool_down(episode.cool_down)
            raise cooling_down_error(SERVICE, episode.cool_down)

    def _url(self, path: str) -> httpx.URL:
        return httpx.URL(self.api_url + path)

    def _send(
        self, method: str, url: httpx.URL, *, params: dict | None = None, json: Any = None, idempotent: bool | None = None
    ) -> httpx.Response:
        request = self._http.build_request(method, url, params=params, json=json)
        return send_with_retries(
            self._http,
            request,
            service=SERVICE,
            policy=self._retry,
            limiter=self._limiter,
            idempotent=idempotent,
            on_rate_limited=self._on_rate_limited,
            # Referral Factory counts per minute: without a Retry-After, wait out a window.
            unsaid_rate_limit_wait=self._limiter.window,
        )

    def _call(
        self, method: str, path: str, *, params: dict | None = None, json: Any = None, idempotent: bool | None = None
    ) -> Any:
        return self._call_url(method, self._url(path), params=params, json=json, idempotent=idempotent)[0]

    def _call_url(
        self, method: str, url: httpx.URL, *, params: dict | None = None, json: Any = None, idempotent: bool | None = None
    ) -> tuple[Any, httpx.URL]:
        """The decoded answer and the URL it came from (with its query)."""
        response = self._send(method, url, params=params, json=json, idempotent=idempotent)
        path = self._relative_path(response.request.url)
        if not response.is_success:
            raise self._error_for(response, method, path)
        with self._lock:
            self._answered = True
            self._endpoints_answered.add(_endpoint(method, path))
        return response_json(response), response.request.url

    def _relative_path(self, url: httpx.URL) -> str:
        """``/users/5`` for ``…/api/v2/users/5``: how messages and logs name a request."""
        base = self._base.path.rstrip("/")
        path = url.path
        return path[len(base) :] if base and path.startswith(base + "/") else path

    def _parse(self, model: type[ModelT], data: Any, method: str, path: str) -> ModelT:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]  # a ValidationError holds at least one
            where = ".".join(str(part) for part in first["loc"])
            raise ReferralFactoryApiError(
                f"Referral Factory answered {method} {path} with something that is not a "
                f"{model.__name__} ({where}: {first['msg']})",
                status=200,
                title="unexpected response shape",
                method=method,
                path=path,
            ) from None

    def _paged(self, method: str, path: str, *, json: Any = None, per_page: int | None = MAX_PER_PAGE) -> Iterator[dict]:
        """Rows of a paginated list to its end (see "Paging" in the module docstring); a body
        without a next link, ``meta`` page numbers or a cursor is one page."""
        size = max(1, min(MAX_PER_PAGE, int(per_page))) if per_page is not None else None
        sized: dict[str, Any] = {"per_page": size} if size is not None else {}
        first_url = self._url(path)
        url = first_url
        params: dict[str, Any] | None = {"page": 1, **sized}
        page_number = 1
        read: set[str] = set()
        seen_ids: set[Any] = set()
        previous_ids: tuple | None = None
        empty_in_a_row = 0

        def cannot_continue(why: str) -> IncompleteListing:
            return IncompleteListing(
                f"Referral Factory's paging of {method} {path} cannot be followed to its end: {why}. "
                f"Stopped after {len(read)} page(s) rather than act on part of the list",
                hint="retry later; if it persists, report it to Referral Factory with this message",
            )

        while True:
            # A search is a POST that changes nothing: safe to retry.
            body, fetched = self._call_url(method, url, params=params, json=json, idempotent=True)
            read.add(str(fetched))
            rows = _rows(body)
            if rows is None:
                raise ReferralFactoryApiError(
                    f"Referral Factory answered {method} {path} without a list of rows",
                    status=200,
                    title="unexpected response shape",
                    method=method,
                    path=path,
                )
            rows = [row for row in rows if isinstance(row, dict)]
            ids = tuple(row.get("id") for row in rows)
            if rows and ids == previous_ids:
                raise cannot_continue(f"page {len(read)} repeated the page before it")
            previous_ids = ids
            empty_in_a_row = 0 if rows else empty_in_a_row + 1
            for row in rows:
                row_id = row.get("id")
                if row_id is not None:
                    if row_id in seen_ids:
                        continue
                    seen_ids.add(row_id)
                yield row

            meta = body.get("meta") if isinstance(body, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            next_link = _next_link(body)
            if next_link is not None:
                url = self._follow(next_link, fetched, size, cannot_continue)
                params = None
                if str(url) in read:
                    raise cannot_continue(f"links.next points at a page already read ({url})")
                if empty_in_a_row >= MAX_EMPTY_PAGES:
                    raise cannot_continue(f"{empty_in_a_row} empty pages in a row still point at a next one")
                continue
            current, last = meta.get("current_page"), meta.get("last_page")
            if _is_int(current) and _is_int(last):
                if current >= last:
                    return
                if current != page_number:
                    raise cannot_continue(f"asked for page {page_number}, it answered page {current} of {last}")
                if not rows:
                    raise cannot_continue(f"page {current} of {last} is empty")
                page_number += 1
                url, params = first_url, {"page": page_number, **sized}
                continue
            cursor = meta.get("next_cursor")
            if isinstance(cursor, str) and cursor:
                url, params = first_url, {"cursor": cursor, **sized}
                if str(self._http.build_request(method, url, params=params).url) in read:
                    raise cannot_continue("meta.next_cursor points at a page already read")
                continue
            return

    def _follow(self, link: str, current: httpx.URL, size: int | None, cannot_continue) -> httpx.URL:
        """The URL to send for a ``links.next``: the link as given (relative ones resolved),
        sent to this client's API origin — the API key never goes to another host or scheme —
        with our ``per_page`` added when the link lacks it."""
        try:
            target = current.join(link)
        except (httpx.InvalidURL, ValueError):
            raise cannot_continue(f"links.next is not a URL ({link[:200]!r})") from None
        base_path = self._base.path
        if not (target.path + "/").startswith(base_path):
            raise cannot_continue(f"links.next leads outside the API ({target.copy_with(query=None)})")
        if (target.scheme, target.host, target.port) != (self._base.scheme, self._base.host, self._base.port):
            log.debug("links.next names %s://%s; sent to %s://%s", target.scheme, target.host, self._base.scheme, self._base.host)
            target = target.copy_with(scheme=self._base.scheme, host=self._base.host, port=self._base.port)
        if size is not None and "per_page" not in target.params:
            target = target.copy_add_param("per_page", str(size))
        return target

    def _error_for(self, response: httpx.Response, method: str, path: str) -> Exception:
        status = response.status_code
        error = parse_error(response, method=method, path=path)
        url = str(response.request.url.copy_with(query=None))
        if status == 401:
            return AuthError(
                f"Referral Factory rejected the API key (HTTP 401 to {method} {path}): it was revoked or replaced",
                hint=_KEY_HINT,
            )
        if status == 403:
            return self._forbidden(response, error, method, path)
        if status == 404:
            if not is_json_answer(response):
                return self._route_not_found(method, url)
            return NotFound(
                error.message,
                url=url,
                title=error.title,
                errors=error.errors,
                method=method,
                path=path,
            )
        return error

    def _forbidden(self, response: httpx.Response, error: ReferralFactoryApiError, method: str, path: str) -> Exception:
        if "blocked" in _text_of(response).casefold():
            # Not a permissions problem: the IP was blocked for abusing the per-minute limit,
            # for every process of this connection (and anything else on this machine).
            cool_down = self._limiter.record_ip_blocked()
            self._notify_cool_down(cool_down)
            return cooling_down_error(SERVICE, cool_down)
        said = f": {error.title}" if error.title else ""
        with self._lock:
            worked_before = _endpoint(method, path) in self._endpoints_answered
        if worked_before:
            return TemporaryError(
                f"Referral Factory refused {method} {path} (HTTP 403{said}), which it answered earlier in this run: "
                "a passing refusal, not a missing permission",
                hint="retry later; if it persists, check the API key's account in Referral Factory",
            )
        return AuthError(
            f"Referral Factory refused {method} {path} (HTTP 403{said}): this needs an account admin's API key",
            hint=_ADMIN_HINT,
        )

    def _route_not_found(self, method: str, url: str) -> StsyncError:
        with self._lock:
            answered = self._answered
        return route_not_found(
            SERVICE, method, url, answered_before=answered, config_key="referral_factory.api_url",
            example="https://referral-factory.com/api/v2 (it ends in /api/v2)",
        )


def _endpoint(method: str, path: str) -> str:
    """``GET /users/{id}`` for ``GET /users/5``: the endpoint a 403 is judged by."""
    parts = [part for part in path.split("/") if part]
    if not parts:
        return f"{method} /"
    shape = [parts[0]]
    if len(parts) > 1:
        shape.append(parts[1] if parts[1] in ("search", "qualification") else "{id}")
    return f"{method} /" + "/".join(shape)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _next_link(body: Any) -> str | None:
    links = body.get("links") if isinstance(body, dict) else None
    link = links.get("next") if isinstance(links, dict) else None
    return link.strip() if isinstance(link, str) and link.strip() else None


def _text_of(response: httpx.Response) -> str:
    try:
        return response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""


def _user_has(user: User, field: str, value: str) -> bool:
    """Does ``user`` satisfy the search condition ``field = value`` (compared as the search
    does: text, case-insensitively)?"""
    have = getattr(user, field, None)
    if have is None:
        return False
    return str(have).strip().casefold() == value.strip().casefold()


def _search_refusal(error: ReferralFactoryApiError, sent: list[tuple[str, str]], page_size: int | None) -> SearchShape | None:
    """What a search's 422 refused, as the shape to search with instead; None when it is not
    about a filter field or the page size (then it is the record's own refusal)."""
    refused: set[str] = set()
    about_page_size = False
    about_filters = False
    maximum: int | None = None
    sent_fields = [field for field, _ in sent]
    items = list(error.errors.items()) or [("", [error.title or error.message])]
    for key, messages in items:
        text = " ".join(messages)
        normal_key = key.replace("_", " ").casefold()
        if "per page" in normal_key or "per page" in text.replace("_", " ").casefold():
            about_page_size = True
            found = _MAXIMUM_IN_TEXT.search(text)
            if found:
                maximum = int(found.group(1))
            continue
        index = _FILTER_INDEX.match(key)
        if index is not None and int(index.group(1)) < len(sent_fields):
            refused.add(sent_fields[int(index.group(1))])
        elif key in sent_fields:
            refused.add(key)
        elif key.startswith("filter") or "field" in text.casefold():
            about_filters = True
    if about_filters and not refused:
        # Refused without saying which: the suspects are the fields never seen in use.
        refused = {field for field in sent_fields if field not in CONFIRMED_SEARCH_FIELDS}
    refused -= CONFIRMED_SEARCH_FIELDS
    max_per_page: int | None = None
    if about_page_size and page_size is not None:
        # The maximum it said, if smaller than what was sent; else no per_page at all (its default).
        max_per_page = maximum if maximum is not None and 0 < maximum < page_size else 0
    if not refused and max_per_page is None:
        return None
    return SearchShape(frozenset(refused), max_per_page)


def _describe_refusal(learnt: SearchShape) -> str:
    parts = [f"the filter field(s) {', '.join(sorted(learnt.refused_fields))}"] if learnt.refused_fields else []
    if learnt.max_per_page is not None:
        parts.append("the page size")
    return " and ".join(parts)


def _describe_shape(shape: SearchShape) -> str:
    parts = []
    if shape.refused_fields:
        parts.append(f"{', '.join(sorted(shape.refused_fields))} checked by stsync instead of by the search")
    if shape.max_per_page == 0:
        parts.append("the search's default page size")
    elif shape.max_per_page is not None:
        parts.append(f"at most {shape.max_per_page} users a page")
    return "; ".join(parts) or "the documented shape"


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
