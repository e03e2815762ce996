"""The one send loop both API clients use: throttling, retries, backoff, a time budget.

What is retried, and how:

- **429** (any method: the server refused without doing anything). Wait as the server asks —
  ``Retry-After`` in seconds or as an HTTP-date, else the "… N seconds" that the Azure API
  gateway in front of ServiceTitan puts in its body ("Rate limit is exceeded. Try again in
  N seconds."), else capped exponential backoff with full jitter (or the caller's floor). A wait that would overrun the budget
  fails at once with ``RateLimited`` instead of sleeping uselessly.
- **5xx** (except 501/505, which are permanent), **a 409 that says the service "is
  suspended for maintenance"** (ServiceTitan's answer during maintenance, api/servicetitan.md
  §11 "409": a 503 in all but its status) and **transport errors** (timeouts,
  resets): retried with capped exponential backoff and full jitter, for idempotent
  requests (GET, PUT, PATCH, DELETE, and POSTs the caller marks idempotent, such as a
  search or a token request).
- **Non-idempotent writes** (a POST that creates) are never retried blindly: once the request
  may have reached the server — a read timeout, a reset, a 5xx — the answer is lost and the
  record may exist, so ``AnswerLost`` is raised and the caller looks the record up by its
  key before writing again. A connection that was never established (connect error or
  timeout, pool timeout) sent nothing, so even a create is retried then.

Any other 409 (a real conflict) is returned to the caller, never retried blindly: re-reading
before writing again is the caller's business (api/servicetitan.md §9).

Every attempt passes the rate limiter first. All waiting happens within
``RetryPolicy.budget_seconds`` per request; past it: ``TemporaryError`` (or ``RateLimited``),
exit 6, naming the service and saying to retry later.

Log lines name the service, method and path only: never headers, query strings or bodies,
which carry tokens, keys and personal data.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

import certifi
import httpx

from stsync import envvars
from stsync.errors import AnswerLost, ConfigError, RateLimited, StsyncError, TemporaryError
from stsync.logs import get_logger

if TYPE_CHECKING:
    from stsync.ratelimit import RateLimiter

log = get_logger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
# 501 Not Implemented and 505 HTTP Version Not Supported will answer the same way again.
PERMANENT_5XX = frozenset({501, 505})
# These mean no byte of the request reached the server, so even a create is safe to resend.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_SECONDS_IN_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:seconds?|secs?)\b", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How long and how often one request may be retried.

    ``budget_seconds`` bounds the time one request may spend waiting and retrying (SPEC
    ``[limits] retry_budget_seconds``). ``jitter()`` returns a fraction in [0, 1] of the
    backoff cap ("full jitter"). ``wall_clock`` reads Retry-After HTTP-dates; ``clock``
    measures the budget. Tests pass fakes for all four.
    """

    budget_seconds: float = 120.0
    max_attempts: int = 12
    base_delay: float = 0.5
    max_delay: float = 30.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random
    wall_clock: Callable[[], float] = time.time

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failure: full jitter under a capped exponential."""
        cap = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        return cap * min(1.0, max(0.0, self.jitter()))


def retry_after_seconds(response: httpx.Response, wall_clock: Callable[[], float] = time.time) -> float | None:
    """How long the server asks us to wait, from ``Retry-After`` or the body; None if unsaid."""
    header = response.headers.get("Retry-After")
    if header:
        value = header.strip()
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
        if seconds is not None and math.isfinite(seconds):
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - wall_clock())
    text = _body_title(response)
    if text:
        match = _SECONDS_IN_TEXT.search(text)
        if match:
            return float(match.group(1))
    return None


def _body_title(response: httpx.Response) -> str:
    """The human sentence of an error body: its ``title``/``message``, else the raw text."""
    try:
        raw = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:1000]
    if isinstance(body, dict):
        for key in ("title", "message", "detail", "error_description"):
            if isinstance(body.get(key), str):
                return body[key]
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return ""


def send_with_retries(
    client: httpx.Client,
    request: httpx.Request,
    *,
    service: str,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
    auth: httpx.Auth | None = None,
    idempotent: bool | None = None,
    before_attempt: Callable[[], object] | None = None,  # what it returns is not used
    on_rate_limited: Callable[[httpx.Response], None] | None = None,
    unsaid_rate_limit_wait: float = 0.0,
) -> httpx.Response:
    """Send ``request`` until it gets an answer worth returning; returns that response.

    Returns every 2xx, 3xx and 4xx other than 429, and 501/505: the caller maps them.
    ``before_attempt`` runs before the limiter (e.g. to have a token ready, so that the slot
    is not spent waiting for one). ``on_rate_limited`` sees each 429 and may raise.
    ``unsaid_rate_limit_wait`` is the least wait after a 429 that names none (a service
    counting per minute wants a minute, not half a second of backoff).
    """
    if idempotent is None:
        idempotent = request.method.upper() in IDEMPOTENT_METHODS
    what = f"{request.method} {request.url.path}"
    started = policy.clock()
    deadline = started + policy.budget_seconds
    attempts = 0
    failures = 0

    def give_up_unless_time_for(delay: float, reason: str, *, rate_limited: bool) -> None:
        elapsed = policy.clock() - started
        out_of_attempts = attempts >= policy.max_attempts
        if not out_of_attempts and policy.clock() + delay <= deadline:
            log.warning("%s %s: %s; retry %d in %.1f s", service, what, reason, attempts, delay)
            policy.sleep(delay)
            return
        if out_of_attempts:
            why = f"{attempts} attempts in {elapsed:.0f} s"
        else:
            why = f"the next retry (in {delay:.0f} s) would pass the retry budget of {policy.budget_seconds:.0f} s"
        budget = f"[limits] retry_budget_seconds = {policy.budget_seconds:.0f} s per request"
        if rate_limited:
            raise RateLimited(
                f"{service} is rate-limiting stsync: {what} failed ({reason}); gave up after {why}",
                hint=f"retry later, when {service} accepts requests again (stsync waits up to {budget})",
            )
        raise TemporaryError(
            f"{service} is unavailable: {what} failed ({reason}); gave up after {why}",
            hint=f"retry later; {service} may be busy or down (stsync retries for up to {budget})",
        )

    while True:
        if before_attempt is not None:
            before_attempt()
        if limiter is not None:
            limiter.acquire()
        attempts += 1
        try:
            response = client.send(request, auth=auth) if auth is not None else client.send(request)
        except httpx.UnsupportedProtocol as exc:
            # A URL no retry can fix (e.g. "htp://"): say so now rather than after the budget.
            raise ConfigError(
                f"{service} URL {str(request.url.copy_with(query=None))!r} is not usable: {exc}",
                hint="check the API URLs in the config (servicetitan.auth_url / api_url, "
                f"referral_factory.api_url) and the {' / '.join(v.name for v in envvars.ENDPOINT_VARIABLES)} "
                "environment variables",
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # DecodingError: an answer came but could not be read — as good as lost.
            reason = _transport_reason(exc)
            if not idempotent and not isinstance(exc, NOT_SENT_ERRORS):
                raise AnswerLost(
                    f"{service} did not answer {what} ({reason}): the write may or may not have been applied",
                    hint="stsync looks the record up by its key before writing it again; rerun the command",
                ) from exc
            failures += 1
            give_up_unless_time_for(policy.backoff(failures), reason, rate_limited=False)
            continue

        status = response.status_code
        log.debug("%s %s: HTTP %d (attempt %d)", service, what, status, attempts)  # -vv: the traffic, no query/headers/body
        if status == 429:
            if on_rate_limited is not None:
                on_rate_limited(response)
            asked = retry_after_seconds(response, policy.wall_clock)
            failures += 1
            if asked is None:
                asked = max(unsaid_rate_limit_wait, policy.backoff(failures))
            give_up_unless_time_for(asked, "HTTP 429 Too Many Requests", rate_limited=True)
            continue
        if (status >= 500 and status not in PERMANENT_5XX) or is_maintenance(response):
            reason = f"HTTP {status}" + (" (suspended for maintenance)" if status == 409 else "")
            if not idempotent:
                raise AnswerLost(
                    f"{service} answered {what} with {reason}: the write may or may not have been applied",
                    hint="stsync looks the record up by its key before writing it again; rerun the command",
                )
            failures += 1
            # A 503 (or maintenance) may say when the service is back; past the budget that fails at once.
            asked = retry_after_seconds(response, policy.wall_clock) if status in (503, 409) else None
            delay = asked if asked is not None else policy.backoff(failures)
            give_up_unless_time_for(delay, reason, rate_limited=False)
            continue
        return response


_MAINTENANCE = re.compile(r"suspended for maintenance|under maintenance|maintenance mode", re.IGNORECASE)


def is_maintenance(response: httpx.Response) -> bool:
    """A 409 that is ServiceTitan's "The service is suspended for maintenance", not a conflict."""
    return response.status_code == 409 and bool(_MAINTENANCE.search(_body_title(response) or ""))


def _transport_reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.DecodingError):
        return "unreadable answer (DecodingError)"
    return f"connection failed ({type(exc).__name__})"


def is_json_answer(response: httpx.Response) -> bool:
    """An API's own JSON answer (a JSON object, said to be JSON) — not a reverse proxy's or a
    web server's page, which is what a wrong base URL or prefix meets (a route-level 404)."""
    content_type = response.headers.get("Content-Type", "").casefold()
    return "json" in content_type and isinstance(response_json(response), dict)


def route_not_found(
    service: str, method: str, url: str, *, answered_before: bool, config_key: str, example: str
) -> StsyncError:
    """A 404 that is not the API's JSON. Nothing has answered yet: the configured URL does not
    point at the API (``ConfigError``, exit 3, quoting the URL). The API answered earlier in this
    run: something in front of it misrouted this request (``TemporaryError``, exit 6). Either
    way it proves nothing about a record."""
    if answered_before:
        return TemporaryError(
            f"{service} answered {method} {url} with HTTP 404 and a page that is not its API's JSON, although "
            "the API answered earlier in this run: something in front of it (a proxy, a load balancer) "
            "misrouted the request",
            hint="retry later; nothing was recorded as deleted",
        )
    variable = next((v.name for v in envvars.ENDPOINT_VARIABLES if v.config_key == config_key), None)
    override = f" (or {variable})" if variable else ""
    return ConfigError(
        f"{url} answered HTTP 404 with a page that is not {service}'s API (no JSON): {config_key} does not "
        "point at the API",
        key_path=config_key,
        hint=f"set {config_key}{override} to {service}'s API base URL, e.g. {example}; nothing was recorded as deleted",
    )


def response_json(response: httpx.Response) -> object | None:
    """The decoded body, or None when empty or not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


_ssl_context: ssl.SSLContext | None = None
_ssl_lock = threading.Lock()


def load_ssl_context_ahead() -> threading.Thread | None:
    """Start building the shared TLS context in a thread of its own, for the first client to
    find it ready (``Connection.open`` calls this). OpenSSL parses the CA bundle (~30 ms)
    with the GIL released, so the command's own start-up — its ledger, run lock and run
    record — goes on meanwhile on another core. → the thread; None when already built."""
    if _ssl_context is not None:
        return None
    # Not a daemon: a process ending meanwhile (a command that built no client) waits for it
    # instead of finalising the interpreter under OpenSSL's feet (it crashed, SIGSEGV).
    thread = threading.Thread(target=shared_ssl_context, name="tls-context")
    thread.start()
    return thread


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process for every client.

    Building one loads the CA bundle (about 50 ms); a command opens two clients and the
    tests open thousands, so they share it. SSLContext is safe to share between threads.
    """
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context(cafile=certifi.where())
        return _ssl_context

