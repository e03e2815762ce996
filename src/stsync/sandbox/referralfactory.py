"""Referral Factory API v2 as the sandbox serves it: users, qualification, campaigns.

Follows ``api/referral-factory.md``. Where that contract says "unconfirmed", the strict
reading is taken and written here:

- Auth: ``Authorization: Bearer <key>``; anything else → 401 ``{"message": "Unauthenticated."}``.
  An ``Accept`` header that excludes JSON → 406.
- Errors: ``{"code", "message", "errors": {field: [{"field", "message"}]}}`` for 422s;
  ``{"code", "message"}`` for the rest. An unknown path under ``/api/v2`` is the API's own
  JSON 404 ``{"code": 404, "message": "Not Found"}``; a missing record says which
  ("User not found.").
- Lists use Laravel's paginator (``data``, ``links``, ``meta``); ``per_page`` defaults to
  25 and may not exceed 250 (422 above it) — for ``POST /users/search`` too; ``page``
  starts at 1.
- ``GET /users`` **ignores** ``campaign_id`` and every other filter (the observed quirk):
  it pages through every user of the account.
- ``POST /users/search`` takes ``{"filters": {"operator": "AND"|"OR", "value": [{field,
  value, operator}]}}``; fields ``id``, ``campaign_id``, ``email``, ``code``,
  ``first_name``, ``type``, ``source``, ``referrer_id``; operators ``=``, ``!=``, ``like``;
  string comparison is case-insensitive (MySQL's default collation); answers a Laravel page.
- ``POST /users``: ``campaign_id``, ``first_name``, ``email`` required; the campaign must
  exist and be launched; an e-mail already in the campaign → 422 "The email already
  exists in this campaign."; an unknown referrer → 422. ``referrer`` makes a
  ``person_invited`` lead. Answers 201 ``{"data": user}``. The e-mail must be an ASCII
  dot-atom (local part ≤ 64 characters) at an ASCII domain with a dot: ``josé@…`` and
  ``a,b@…`` are 422 "The email must be a valid email address." (the strict reading of
  Laravel's ``email`` rule; also on ``PUT``). ``meta[].value`` is text or a number (stored as
  text).
- ``GET /users/{identifier}``: an id (digits), else an e-mail or a code.
- ``PUT /users/qualification``: exactly one of ``id``, ``code``, or ``email`` +
  ``campaign_id``; only referred users (``person_invited``) can be qualified → else 422.
- Rate limit: ``per_minute`` per API key → 429 ``{"message": "Too Many Attempts."}`` with
  ``Retry-After``; after ``block_after`` such refusals the caller's IP is blocked: every
  further request → 403 "Your IP address has been blocked for abusing the API rate
  limit." (the block's text says "blocked"; ``Sandbox.block_ips`` blocks every caller at
  once). The admin-only 403 of the errors page says "This action is unauthorized." (the
  ``rf_admin_403_path`` fault).
- Reads see a write at once (read-after-write), unless the ``lookup_lag_seconds`` variant
  says otherwise.

Variants (``variants.py``; each off by default; ``docs/sandbox.md`` has their sources):

- ``rf_cursor_paging``: lists and search answer Laravel's cursor paginator: ``links.next``
  (and ``prev``) hold a URL with an opaque ``cursor`` (the request's other query parameters
  kept), ``links.first``/``last`` are null, ``meta`` is ``{path, per_page, next_cursor,
  prev_cursor}`` (no ``current_page``, ``last_page``, ``total``). ``page=N`` is **ignored**
  (every ``page`` is the first page), as Laravel's cursor paginator does; an unreadable
  cursor reads as none. A search's next page is a ``POST`` of the same body to
  ``links.next``.
- ``rf_search_refuses_type``: a search filter on ``type`` → 422
  (``filters.value.N.field``: "The selected filters.value.N.field is invalid.").
- ``rf_search_max_per_page``: a search with ``per_page`` above N → 422 "The per page must
  not be greater than N." (``GET /users`` keeps 250).
- ``rf_mixed_meta``: the seeded users that carry list or object ``meta[].value`` show them,
  and ``POST``/``PUT /users`` accept and keep list and object values.
- ``lookup_lag_seconds``: a user created by ``POST /users`` is not found by ``POST
  /users/search`` until N seconds after the create committed (``GET /users/{id}`` and the
  duplicate-e-mail 422 see it at once).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import random
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from stsync.sandbox.faults import Decision
from stsync.sandbox.limits import AbuseTracker, SlidingWindow, retry_after_header
from stsync.sandbox.server import BadJson, HttpError, NoRoute, Request, Response, Router
from stsync.sandbox.variants import VariantSwitch

API_PREFIX = "/api/v2"
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 250
PERSON_REFERRING = "person_referring"
PERSON_INVITED = "person_invited"
SEARCH_FIELDS = ("id", "campaign_id", "email", "code", "first_name", "type", "source", "referrer_id")
# What Laravel's ``email`` rule lets through, read strictly: an ASCII dot-atom local part of
# at most 64 characters (no comma, no "josé"), an ASCII domain with a dot.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL = re.compile(
    rf"^(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{{2,}})$"
)
ADMIN_ONLY_MESSAGE = "This action is unauthorized."
IP_BLOCKED_MESSAGE = "Your IP address has been blocked for abusing the API rate limit."
_CODE_ALPHABET = string.ascii_letters + string.digits


def valid_email(text: str) -> bool:
    found = _EMAIL.fullmatch(text)
    return found is not None and len(found.group("local")) <= 64 and len(text) <= 254


def rf_error(status: int, message: str, *, headers: dict | None = None) -> HttpError:
    return HttpError(Response(status, {"code": status, "message": message}, dict(headers or {})))


def validation_error(errors: dict[str, str], message: str = "Validation errors in your request") -> HttpError:
    return HttpError(
        Response(
            422,
            {
                "code": 422,
                "message": message,
                "errors": {field: [{"field": field, "message": text}] for field, text in errors.items()},
            },
        )
    )


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class ReferralFactory:
    def __init__(
        self,
        *,
        api_key: str,
        per_minute: int,
        block_after: int,
        base_url: Callable[[], str],
        rng_seed: int,
        variants: VariantSwitch | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.variants = variants or VariantSwitch()
        self.api_key = api_key
        self.rate = SlidingWindow(per_minute, 60.0)
        self.abuse = AbuseTracker(block_after)
        self._base_url = base_url
        self._random = random.Random(rng_seed)
        self.campaigns: dict[int, dict] = {}
        self.users: dict[int, dict] = {}
        self.users_by_code: dict[str, int] = {}
        self.users_by_email: dict[tuple[int, str], int] = {}  # (campaign_id, email.casefold())
        self._next_user_id = 3001
        self.router = Router()
        self._routes()

    # ------------------------------------------------------------------ routing
    def _routes(self) -> None:
        add = self.router.add
        p = API_PREFIX
        add("GET", p + "/users", self._list_users)
        add("POST", p + "/users", self._create_user)
        add("POST", p + "/users/search", self._search_users)
        add("PUT", p + "/users/qualification", self._qualification)
        add("GET", p + "/users/{identifier}", self._get_user)
        add("PUT", p + "/users/{identifier}", self._update_user)
        add("DELETE", p + "/users/{identifier}", self._delete_user)
        add("GET", p + "/campaigns", self._list_campaigns)
        add("GET", p + "/campaigns/{identifier}", self._get_campaign)

    def handle(self, request: Request, decision: Decision) -> Response:
        """IP block → auth → rate limit → faults → the endpoint (→ commit-then-500)."""
        try:
            if self.abuse.blocked(request.client_ip):
                raise rf_error(403, IP_BLOCKED_MESSAGE)
            header = request.header("authorization") or ""
            with self.lock:
                key = self.api_key
            if not header.startswith("Bearer ") or header[len("Bearer ") :].strip() != key:
                raise rf_error(401, "Unauthenticated.")
            accept = (request.header("accept") or "").lower()
            if accept and "json" not in accept and "*/*" not in accept and "application/*" not in accept:
                raise rf_error(406, "You requested a format that isn't in JSON format.")
            if decision.forbidden:
                raise rf_error(403, ADMIN_ONLY_MESSAGE)
            if decision.throttle:  # a burst: another app on the key spent the minute's budget
                self.abuse.refused(request.client_ip)
                raise rf_error(429, "Too Many Attempts.", headers={"Retry-After": str(decision.retry_after)})
            wait = self.rate.admit(key)
            if wait is not None:
                self.abuse.refused(request.client_ip)
                raise rf_error(429, "Too Many Attempts.", headers={"Retry-After": retry_after_header(wait)})
            if decision.fail_before:
                raise rf_error(503, "Service Unavailable")
            try:
                handler, params = self.router.match(request.method, request.path)
            except NoRoute as missing:
                if missing.method_not_allowed:
                    raise rf_error(405, f"The {request.method} method is not supported for this route.") from None
                raise rf_error(404, "Not Found") from None
            with self.lock:
                response = handler(request, **params)
        except HttpError as refused:
            return refused.response
        if decision.fail_after and 200 <= response.status < 300:
            return Response(500, {"code": 500, "message": "Server Error"})
        return response

    # ------------------------------------------------------------------ helpers
    def _json_body(self, request: Request) -> dict:
        try:
            body = request.json() if request.body.strip() else {}
        except BadJson:
            raise rf_error(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise rf_error(400, "The request body must be a JSON object.")
        return body

    def _paging(self, request: Request, *, max_per_page: int = MAX_PER_PAGE, cursor: bool = False) -> tuple[int, int]:
        errors = {}
        # Laravel's cursor paginator never reads ``page``: it is ignored, not refused.
        page = 1 if cursor else _positive_int(request.query_value("page"), 1)
        per_page = _positive_int(request.query_value("per_page"), DEFAULT_PER_PAGE)
        if page is None:
            errors["page"] = "The page must be an integer of at least 1."
        if per_page is None:
            errors["per_page"] = "The per page must be an integer of at least 1."
        elif per_page > max_per_page:
            errors["per_page"] = f"The per page must not be greater than {max_per_page}."
        if errors:
            raise validation_error(errors, message=next(iter(errors.values())))
        return page or 1, per_page or DEFAULT_PER_PAGE

    def _laravel_page(
        self,
        request: Request,
        rows: list[dict],
        render: Callable[[dict], dict],
        *,
        max_per_page: int = MAX_PER_PAGE,
    ) -> dict:
        """One page of ``rows`` (sorted by id) as Laravel's paginator, or its cursor paginator
        with the ``rf_cursor_paging`` variant."""
        if self.variants.current.rf_cursor_paging:
            return self._cursor_page(request, rows, render, max_per_page=max_per_page)
        page, per_page = self._paging(request, max_per_page=max_per_page)
        total = len(rows)
        last_page = max(1, -(-total // per_page))
        start = (page - 1) * per_page
        chosen = rows[start : start + per_page]
        path = self._base_url() + request.path

        def link(number: int) -> str:
            return f"{path}?{urlencode({'page': number, 'per_page': per_page})}"

        return {
            "data": [render(row) for row in chosen],
            "links": {
                "first": link(1),
                "last": link(last_page),
                "prev": link(page - 1) if page > 1 else None,
                "next": link(page + 1) if page < last_page else None,
            },
            "meta": {
                "current_page": page,
                "from": start + 1 if chosen else None,
                "last_page": last_page,
                "path": path,
                "per_page": per_page,
                "to": start + len(chosen) if chosen else None,
                "total": total,
            },
        }

    def _cursor_page(
        self, request: Request, rows: list[dict], render: Callable[[dict], dict], *, max_per_page: int
    ) -> dict:
        """Laravel's ``cursorPaginate``: ``links.next``/``prev`` carry an opaque ``cursor``;
        ``first``/``last`` are null and ``meta`` has no ``current_page``, ``last_page`` or
        ``total``. ``page`` is ignored; an unreadable cursor reads as none (the first page)."""
        _, per_page = self._paging(request, max_per_page=max_per_page, cursor=True)
        position = _decode_cursor(request.query_value("cursor") or "")
        ids = [row["id"] for row in rows]
        if position is None:
            start = 0
        elif position[1]:  # the items after an id
            start = bisect.bisect_right(ids, position[0])
        else:  # the page before an id
            start = max(0, bisect.bisect_left(ids, position[0]) - per_page)
        chosen = rows[start : start + per_page]
        path = self._base_url() + request.path
        kept = {k: v[0] for k, v in request.query.items() if k not in ("cursor", "page") and v}

        def link(cursor: str | None) -> str | None:
            return None if cursor is None else f"{path}?{urlencode({**kept, 'cursor': cursor})}"

        next_cursor = _encode_cursor(chosen[-1]["id"], True) if chosen and start + per_page < len(rows) else None
        prev_cursor = _encode_cursor(chosen[0]["id"], False) if chosen and start > 0 else None
        return {
            "data": [render(row) for row in chosen],
            "links": {"first": None, "last": None, "prev": link(prev_cursor), "next": link(next_cursor)},
            "meta": {"path": path, "per_page": per_page, "next_cursor": next_cursor, "prev_cursor": prev_cursor},
        }

    # ------------------------------------------------------------------ campaigns
    def add_campaign(self, campaign: dict) -> dict:
        self.campaigns[campaign["id"]] = campaign
        return campaign

    def campaign_out(self, campaign: dict) -> dict:
        return _copy(campaign)

    def _find_campaign(self, identifier: str) -> dict:
        if identifier.isdigit() and int(identifier) in self.campaigns:
            return self.campaigns[int(identifier)]
        for campaign in self.campaigns.values():
            if campaign["code"] == identifier:
                return campaign
        raise rf_error(404, "Campaign not found.")

    def _list_campaigns(self, request: Request) -> Response:
        return Response(200, self._laravel_page(request, list(self.campaigns.values()), self.campaign_out))

    def _get_campaign(self, request: Request, identifier: str) -> Response:
        return Response(200, {"data": self.campaign_out(self._find_campaign(identifier))})

    # ------------------------------------------------------------------ users
    def user_out(self, user: dict) -> dict:
        """The API shape of a stored user (with the ``rf_mixed_meta`` variant, the users the
        seed gave list or object values show them)."""
        out = {k: _copy(v) for k, v in user.items() if not k.startswith("_")}
        if user.get("_mixed_meta") is not None and self.variants.current.rf_mixed_meta:
            out["meta"] = _copy(user["_mixed_meta"])
        return out

    def new_code(self) -> str:
        while True:
            code = "".join(self._random.choice(_CODE_ALPHABET) for _ in range(8))
            if code not in self.users_by_code:
                return code

    def add_user_record(
        self,
        *,
        campaign_id: int,
        first_name: str,
        email: str,
        type: str,
        source: str,
        referrer_id: int | None = None,
        meta: list[dict] | None = None,
        signed_up_at: str | None = None,
        qualified_at: str | None = None,
    ) -> dict:
        campaign = self.campaigns[campaign_id]
        code = self.new_code()
        user_id = self._next_user_id
        self._next_user_id += 1
        # The campaign's join link is <origin>/<campaign code>; a user's link is <origin>/<user code>.
        share_url = f"{campaign['url'].rsplit('/', 1)[0]}/{code}"
        user = {
            "id": user_id,
            "campaign_id": campaign_id,
            "referrer_id": referrer_id,
            "first_name": first_name,
            "email": email,
            "code": code,
            "url": share_url,
            "type": type,
            "source": source,
            "reach": "0",
            "ip": "203.0.113." + str(user_id % 250 + 1),
            "signed_up_at": signed_up_at or today(),
            "qualified_at": qualified_at,
            "unsubscribed_at": None,
            "meta": [dict(m) for m in meta or []],
            "sharing": {
                "socials": [
                    {"social": "facebook", "url": f"https://www.facebook.com/sharer/sharer.php?u={share_url}"},
                    {"social": "whatsapp", "url": f"https://wa.me/?text={share_url}"},
                ],
                "subject": f"Join me at {campaign['name']}",
                "text": f"Use my link: {share_url}",
            },
            "qr": {"src": f"{share_url}/qr.png", "download": f"{share_url}/qr.png?download=1"},
        }
        self.users[user_id] = user
        self.users_by_code[code] = user_id
        self.users_by_email.setdefault((campaign_id, email.casefold()), user_id)
        return user

    def _find_user(self, identifier: str) -> dict:
        if identifier.isdigit() and int(identifier) in self.users:
            return self.users[int(identifier)]
        user_id = self.users_by_code.get(identifier)
        if user_id is not None:
            return self.users[user_id]
        if "@" in identifier:
            wanted = identifier.casefold()
            for user in self.users.values():  # an e-mail may be in several campaigns: the oldest wins
                if user["email"].casefold() == wanted:
                    return user
        raise rf_error(404, "User not found.")

    def _list_users(self, request: Request) -> Response:
        # The quirk: campaign_id (and any other filter) is ignored.
        return Response(200, self._laravel_page(request, list(self.users.values()), self.user_out))

    def _get_user(self, request: Request, identifier: str) -> Response:
        return Response(200, {"data": self.user_out(self._find_user(identifier))})

    def _create_user(self, request: Request) -> Response:
        body = self._json_body(request)
        errors: dict[str, str] = {}
        campaign_id = body.get("campaign_id")
        campaign = None
        if campaign_id in (None, ""):
            errors["campaign_id"] = "The campaign id field is required."
        else:
            number = _as_int(campaign_id)
            campaign = self.campaigns.get(number) if number is not None else None
            if campaign is None:
                errors["campaign_id"] = "The selected campaign id is invalid."
            elif campaign["status"] != "launched":
                errors["campaign_id"] = (
                    f"The campaign is {campaign['status']}: users can only join a launched campaign."
                )
        first_name = body.get("first_name")
        if not isinstance(first_name, str) or not first_name.strip():
            errors["first_name"] = "The first name field is required."
        email = body.get("email")
        if not isinstance(email, str) or not email.strip():
            errors["email"] = "The email field is required."
        elif not valid_email(email.strip()):
            errors["email"] = "The email must be a valid email address."
        elif campaign is not None and (campaign["id"], email.strip().casefold()) in self.users_by_email:
            errors["email"] = "The email already exists in this campaign."
        meta = body.get("meta", [])
        if meta is None:
            meta = []
        if not self._meta_ok(meta):
            errors["meta"] = "The meta must be a list of {field, value} objects."
        if "notify" in body and not isinstance(body["notify"], bool):
            errors["notify"] = "The notify field must be true or false."
        referrer = None
        if body.get("referrer") is not None:
            spec = body["referrer"]
            if (
                not isinstance(spec, dict)
                or spec.get("field") not in ("id", "code", "email")
                or spec.get("value") in (None, "")
            ):
                errors["referrer"] = "The referrer must be {field: id|code|email, value}."
            elif campaign is not None:
                referrer = self._referrer(campaign["id"], spec["field"], str(spec["value"]))
                if referrer is None:
                    errors["referrer"] = "The selected referrer is invalid."
        if errors:
            raise validation_error(errors)
        assert campaign is not None and isinstance(first_name, str) and isinstance(email, str)
        user = self.add_user_record(
            campaign_id=campaign["id"],
            first_name=first_name.strip(),
            email=email.strip(),
            type=PERSON_INVITED if referrer else PERSON_REFERRING,
            source="Api",
            referrer_id=referrer["id"] if referrer else None,
            meta=[{"field": m["field"], "value": self._meta_value(m.get("value"))} for m in meta],
        )
        user["_committed_at"] = time.time()  # the lookup_lag variant hides it from search for a while
        return Response(201, {"data": self.user_out(user)})

    def _meta_ok(self, meta: Any) -> bool:
        """``meta`` is ``[{field, value}]``; a value is text or a number, or with the
        ``rf_mixed_meta`` variant also a list or an object (the documented *mixed* type)."""
        kinds: tuple[type, ...] = (str, int, float)
        if self.variants.current.rf_mixed_meta:
            kinds += (list, dict)
        return isinstance(meta, list) and all(
            isinstance(m, dict)
            and isinstance(m.get("field"), str)
            and (m.get("value") is None or isinstance(m.get("value"), kinds))
            for m in meta
        )

    @staticmethod
    def _meta_value(value: Any) -> Any:
        if value is None or isinstance(value, (list, dict)):
            return _copy(value)
        return str(value)

    def _referrer(self, campaign_id: int, field: str, value: str) -> dict | None:
        if field == "id":
            user = self.users.get(_as_int(value) or -1)
        elif field == "code":
            user_id = self.users_by_code.get(value)
            user = self.users.get(user_id) if user_id is not None else None
        else:
            user_id = self.users_by_email.get((campaign_id, value.casefold()))
            user = self.users.get(user_id) if user_id is not None else None
        return user if user is not None and user["campaign_id"] == campaign_id else None

    def _update_user(self, request: Request, identifier: str) -> Response:
        user = self._find_user(identifier)
        body = self._json_body(request)
        errors: dict[str, str] = {}
        if "first_name" in body and (not isinstance(body["first_name"], str) or not body["first_name"].strip()):
            errors["first_name"] = "The first name field must be a non-empty string."
        if "email" in body:
            email = body["email"]
            if not isinstance(email, str) or not valid_email(email.strip()):
                errors["email"] = "The email must be a valid email address."
            else:
                owner = self.users_by_email.get((user["campaign_id"], email.strip().casefold()))
                if owner is not None and owner != user["id"]:
                    errors["email"] = "The email already exists in this campaign."
        if "meta" in body and not self._meta_ok(body["meta"]):
            errors["meta"] = "The meta must be a list of {field, value} objects."
        if errors:
            raise validation_error(errors)
        if "first_name" in body:
            user["first_name"] = body["first_name"].strip()
        if "email" in body:
            old = (user["campaign_id"], user["email"].casefold())
            if self.users_by_email.get(old) == user["id"]:
                del self.users_by_email[old]
            user["email"] = body["email"].strip()
            self.users_by_email[(user["campaign_id"], user["email"].casefold())] = user["id"]
        if "meta" in body:
            for key in ("meta", "_mixed_meta"):  # the mixed copy shown by rf_mixed_meta follows the update too
                if user.get(key) is None:
                    continue
                merged = {m["field"]: m for m in user[key]}
                for item in body["meta"]:
                    merged[item["field"]] = {"field": item["field"], "value": self._meta_value(item.get("value"))}
                user[key] = list(merged.values())
        return Response(200, {"data": self.user_out(user)})

    def _delete_user(self, request: Request, identifier: str) -> Response:
        user = self._find_user(identifier)
        del self.users[user["id"]]
        self.users_by_code.pop(user["code"], None)
        key = (user["campaign_id"], user["email"].casefold())
        if self.users_by_email.get(key) == user["id"]:
            del self.users_by_email[key]
        return Response(200, {"code": 200, "message": "User deleted."})

    def _search_users(self, request: Request) -> Response:
        body = self._json_body(request)
        filters = body.get("filters")
        if not isinstance(filters, dict) or not isinstance(filters.get("value"), list):
            raise validation_error(
                {"filters": "The filters field is required: {operator, value: [{field, value, operator}]}."}
            )
        combine = str(filters.get("operator") or "AND").upper()
        if combine not in ("AND", "OR"):
            raise validation_error({"filters.operator": "The filters operator must be AND or OR."})
        variants = self.variants.current
        conditions = []
        for i, condition in enumerate(filters["value"]):
            if not isinstance(condition, dict):
                raise validation_error({f"filters.value.{i}": "Each filter must be {field, value, operator}."})
            field = condition.get("field")
            operator = str(condition.get("operator") or "=").lower()
            if field not in SEARCH_FIELDS or (field == "type" and variants.rf_search_refuses_type):
                key = f"filters.value.{i}.field"
                raise validation_error({key: f"The selected {key} is invalid."})
            if operator not in ("=", "!=", "like"):
                raise validation_error({f"filters.value.{i}.operator": f"The operator {operator!r} is not supported."})
            conditions.append((field, operator, condition.get("value")))
        rows = self._matching_users(conditions, combine)
        if variants.lookup_lag_seconds:
            hidden_after = time.time() - variants.lookup_lag_seconds
            rows = [u for u in rows if u.get("_committed_at") is None or u["_committed_at"] <= hidden_after]
        max_per_page = variants.rf_search_max_per_page or MAX_PER_PAGE
        return Response(200, self._laravel_page(request, rows, self.user_out, max_per_page=max_per_page))

    def _matching_users(self, conditions: list[tuple[str, str, Any]], combine: str) -> list[dict]:
        candidates: list[dict] | None = None
        if combine == "AND":
            # An equality on a unique key narrows the search to one row (no scan for the hot path).
            for field, operator, value in conditions:
                if operator != "=" or value is None:
                    continue
                if field == "id":
                    user = self.users.get(_as_int(value) or -1)
                    candidates = [user] if user else []
                    break
                if field == "code":
                    user_id = self.users_by_code.get(str(value))
                    candidates = [self.users[user_id]] if user_id is not None else []
                    break
                if field == "email":
                    wanted = str(value).casefold()
                    campaign = next((v for f, o, v in conditions if f == "campaign_id" and o == "="), None)
                    if campaign is not None:
                        user_id = self.users_by_email.get((_as_int(campaign) or -1, wanted))
                        candidates = [self.users[user_id]] if user_id is not None else []
                        # users_by_email keeps the first user per (campaign, email); later
                        # duplicates can only come from an update and are found by the scan.
                        candidates += [
                            u for u in self.users.values() if u["email"].casefold() == wanted and u["id"] != user_id
                        ]
                    break
        rows = list(self.users.values()) if candidates is None else candidates
        tests = [_condition(field, operator, value) for field, operator, value in conditions]
        if combine == "AND":
            matched = [u for u in rows if all(test(u) for test in tests)]
        else:
            matched = [u for u in rows if any(test(u) for test in tests)]
        return sorted(matched, key=lambda u: u["id"])

    def _qualification(self, request: Request) -> Response:
        body = self._json_body(request)
        qualified = body.get("qualified")
        errors: dict[str, str] = {}
        if not isinstance(qualified, bool):
            errors["qualified"] = "The qualified field is required and must be true or false."
        given = [key for key in ("id", "code", "email") if body.get(key) not in (None, "")]
        if len(given) != 1:
            errors["id"] = "Identify the user by exactly one of: id, code, or email with campaign_id."
        elif given == ["email"] and body.get("campaign_id") in (None, ""):
            errors["campaign_id"] = "The campaign id field is required when email is present."
        if errors:
            raise validation_error(errors)
        if given == ["id"]:
            user = self.users.get(_as_int(body["id"]) or -1)
        elif given == ["code"]:
            user_id = self.users_by_code.get(str(body["code"]))
            user = self.users.get(user_id) if user_id is not None else None
        else:
            user_id = self.users_by_email.get((_as_int(body["campaign_id"]) or -1, str(body["email"]).casefold()))
            user = self.users.get(user_id) if user_id is not None else None
        if user is None:
            raise rf_error(404, "User not found.")
        if user["type"] != PERSON_INVITED:
            raise validation_error({given[0]: "This user was not referred: only referred users can be qualified."})
        if qualified and user["qualified_at"] is None:
            user["qualified_at"] = timestamp()
        elif not qualified:
            user["qualified_at"] = None
        return Response(200, {"data": self.user_out(user)})

    def rotate_api_key(self) -> str:
        with self.lock:
            self.api_key = secrets.token_urlsafe(30)
            return self.api_key


def _condition(field: str, operator: str, value: Any) -> Callable[[dict], bool]:
    def text(v: Any) -> str:
        return "" if v is None else str(v).casefold()

    wanted = text(value)
    if operator == "like":
        pattern = re.compile("^" + ".*".join(re.escape(part) for part in wanted.split("%")) + "$", re.DOTALL)
        return lambda user: bool(pattern.match(text(user.get(field))))
    if operator == "!=":
        return lambda user: text(user.get(field)) != wanted
    return lambda user: text(user.get(field)) == wanted


def _encode_cursor(user_id: int, forward: bool) -> str:
    raw = json.dumps({"users.id": user_id, "_pointsToNextItems": forward}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, bool] | None:
    if not text:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode())
        user_id, forward = data["users.id"], data["_pointsToNextItems"]
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if isinstance(user_id, bool) or not isinstance(user_id, int) or not isinstance(forward, bool):
        return None
    return user_id, forward


def _positive_int(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 1 else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
