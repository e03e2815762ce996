"""The webhook endpoint without a socket: ``screen(head)`` and ``handle(Request) -> Response``.

Any HTTP server can sit in front of it (``http_server`` does): the adapter calls ``screen``
as soon as a request's head (method, target, headers) is in, answers at once when it
returns a response — *without reading the body* — and otherwise reads the body and calls
``handle``. Everything a sender can observe — status codes, JSON answers, dedupe, stats —
is decided here. ``handle`` screens again (an adapter may skip ``screen``) and never
raises: a bug is a 500 with no detail for the sender and the trace in the log.

**Routes.** ``/hooks/<token>[/<event>]``, or ``/hooks[/<event>]`` with the token in a
header (``tokens``) → the delivery. ``GET /healthz`` → 200 ``{"ok": true}`` (503 while
stopping); the queue depth only for a request carrying the token in a header. Extra GET
routes (``routes`` / ``add_route``: ``/metrics``) answer only a request with the token in a
header. Other paths 404.

**Screened from the head alone** (the body is never read): a missing or wrong token 401 —
the token segment is compared *as sent*, so a percent-encoded token is not the token — a
delivery while stopping 503 (the sender retries later), another method 405, a declared
body over ``max_body`` 413, an unknown path 404.

**Accepted.** A delivery is parsed and classified (``payload``) and its leads read
(``leads_from_json`` with ``pointer_only``: a Referral Factory id or referral code without
an e-mail is enough, the worker reads the user back). Each lead is recorded in the ledger
with what it says (``Ledger.admit_delivery``, one synced transaction) *before* it is
answered: 202 when at least one lead is queued — new, or recorded earlier and still
without an outcome (a process that died, a restart), or failed before and sent again — and
200 for a duplicate (it has an outcome) or an event stsync does not use.

**Threads.** ``screen`` runs on the server's I/O thread, ``handle`` on its request threads.
The ledger keeps one SQLite connection per thread until it is closed, so requests record
deliveries through one long-lived thread owned here (``close()`` ends it): a server
running for months holds a fixed number of connections, whatever its request threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from stsync.errors import InvalidRecord, StsyncError, UsageError
from stsync.leads import leads_from_json
from stsync.logs import get_logger
from stsync.mapping.booking import external_id_for
from stsync.storage.states import DeliveryAdmission, DeliveryOutcome
from stsync.webhooks.deliveries import Delivery, DeliveryEvent, Observer, ServeStats, report
from stsync.webhooks.payload import (
    EVENT_HEADER,
    REWARD_ISSUED,
    WebhookRejected,
    apply_key_aliases,
    classify,
    delivery_key,
    event_from_text,
    key_aliases,
    parse_payload,
)
from stsync.webhooks.tokens import header_token_matches, token_matches

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.leads import Lead

log = get_logger(__name__)

HOOKS_PREFIX = "hooks"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1_000_000
UNAUTHORIZED = "missing or wrong token"
DELIVERY_METHODS = ("POST", "PUT", "GET")


@dataclass(frozen=True)
class Request:
    """One HTTP request as the handler sees it: header names lower-cased, the target as sent
    (not percent-decoded), the body read (empty for ``screen``)."""

    method: str
    target: str  # path and query, as sent: "/hooks/<token>/lead-created?email=..."
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str | None = None  # the sender's address (a trusted proxy's X-Forwarded-For applied)

    @classmethod
    def build(
        cls, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b"", *, client: str | None = None
    ) -> Request:
        return cls(method.upper(), target, {name.casefold(): value for name, value in headers}, body, client)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.casefold())

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def declared_length(self) -> int | None:
        """The Content-Length the sender declared (None: absent or not a number)."""
        raw = self.header("Content-Length")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Response:
    """Status and JSON object of one answer."""

    status: int
    body: dict[str, Any]
    content_type = "application/json"

    def encoded(self) -> bytes:
        return (json.dumps(self.body, default=str) + "\n").encode()


@dataclass(frozen=True)
class TextResponse(Response):
    """A text answer (``/metrics``): ``text`` as it is, with its own content type."""

    text: str = ""
    content_type: str = "text/plain; charset=utf-8"

    def encoded(self) -> bytes:
        return self.text.encode("utf-8")


# An extra GET route (``/metrics``): the request → its answer. Only a request carrying the
# token in a header (X-Stsync-Token, or Authorization: Bearer) reaches it.
Route = Callable[[Request], Response]


def rejection(status: int, message: str) -> Response:
    return Response(status, {"ok": False, "error": message})


def body_too_large(length: int, limit: int) -> Response:
    return rejection(413, f"body too large ({length} bytes; at most {limit})")


def loggable_target(target: str) -> str:
    """The target for an access log: the segment after ``/hooks/`` (a token, right or
    wrong, maybe percent-encoded) replaced by ``***`` unless it names an event; no query."""
    segments = urlsplit(target).path.split("/")
    if len(segments) > 2 and segments[1] == HOOKS_PREFIX and segments[2] and not _names_event(segments[2]):
        segments[2] = "***"
    return "/".join(segments) + ("?…" if "?" in target else "")


def _names_event(segment: str) -> bool:
    return event_from_text(unquote(segment)) is not None


class Endpoint(Protocol):
    """What an HTTP server needs of the handler (``WebhookHandler``)."""

    def screen(self, head: Request) -> Response | None: ...

    def refused(self, head: Request, answer: Response) -> None: ...

    def handle(self, request: Request) -> Response: ...


class DeliveryQueue(Protocol):
    """Where accepted deliveries go (``pool.DeliveryPool``)."""

    def submit(self, delivery: Delivery) -> bool: ...

    @property
    def pending(self) -> int: ...


class WebhookHandler:
    """Answers requests (see the module docstring) and queues accepted deliveries."""

    def __init__(
        self,
        conn: Connection,
        *,
        token: str,
        queue: DeliveryQueue,
        stats: ServeStats,
        observer: Observer | None = None,
        max_body: int = MAX_BODY_BYTES,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.conn = conn
        self.token = token
        self.queue = queue
        self.stats = stats
        self.observer = observer
        self.max_body = max_body
        self.routes: dict[str, Route] = {}
        for name, route in (routes or {}).items():
            self.add_route(name, route)
        self._aliases = key_aliases(conn.config.webhook.aliases)
        self._stopping = threading.Event()
        self._ledger_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsync-webhook-ledger")

    def add_route(self, name: str, route: Route) -> None:
        """Answer ``GET /<name>`` (e.g. ``metrics``) with ``route(request)``, for a request
        carrying the token in a header."""
        name = name.strip("/")
        if not name or "/" in name or f"/{name}" == HEALTH_PATH or name == HOOKS_PREFIX:
            raise ValueError(f"/{name} is not a route serve can add")
        self.routes[name] = route

    def authorized(self, request: Request) -> bool:
        """The token is in ``X-Stsync-Token`` or ``Authorization: Bearer``."""
        return header_token_matches(request.header, self.token)

    def stop_accepting(self) -> None:
        """From now on deliveries are answered 503 (the sender retries later)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        """End the ledger thread, once no request is in flight any more."""
        self._ledger_thread.shutdown(wait=True)

    # -- the head ---------------------------------------------------------------------------------
    def screen(self, head: Request) -> Response | None:
        """The answer a request gets from its head alone, or None: read the body, then ``handle``.

        Decides only (the server's I/O thread calls it): ``refused`` records the answer."""
        path = head.path
        if path == HEALTH_PATH:
            return self._too_large(head)
        route = self._route_name(path)
        if route is not None:
            if not self.authorized(head):
                needs = f"/{route} needs the X-Stsync-Token (or Authorization: Bearer) header"
                return rejection(401, f"missing or wrong token: {needs}")
            if head.method != "GET":
                return rejection(405, f"method {head.method} not allowed on /{route}")
            return self._too_large(head)
        segments = [s for s in path.split("/") if s]
        if not segments or segments[0] != HOOKS_PREFIX:
            return rejection(404, f"not found; webhooks are posted to /{HOOKS_PREFIX}/<token>")
        if not (len(segments) > 1 and token_matches(segments[1], self.token)) and not self.authorized(head):
            return rejection(401, UNAUTHORIZED)
        if self._stopping.is_set():
            return rejection(503, "stsync is shutting down; deliver again later")
        if head.method not in DELIVERY_METHODS:
            return rejection(405, f"method {head.method} not allowed; Referral Factory sends POST")
        return self._too_large(head)

    def refused(self, head: Request, answer: Response) -> None:
        """Count and report a request ``screen`` answered (a 401 on /hooks is a rejected delivery)."""
        if answer.status == 401 and self._route_name(head.path) is None:
            self._rejected(401, UNAUTHORIZED, head)

    def _route_name(self, path: str) -> str | None:
        name = path.strip("/")
        return name if name in self.routes and path == f"/{name}" else None

    def _too_large(self, head: Request) -> Response | None:
        declared = head.declared_length
        if declared is not None and declared > self.max_body:
            return body_too_large(declared, self.max_body)
        return None

    # -- one request ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Answer one request. Never raises."""
        try:
            if len(request.body) > self.max_body:
                return body_too_large(len(request.body), self.max_body)
            early = self.screen(request)
            if early is not None:
                self.refused(request, early)
                return early
            path = request.path
            if path == HEALTH_PATH:
                return self._health(request)
            route = self._route_name(path)
            if route is not None:
                return self._route(route, request)
            return self._delivery(request)
        except Exception as exc:  # a bug must not kill the server or show a trace to the sender
            log.exception("serve: unexpected error handling a request")
            self._rejected(500, f"internal error: {type(exc).__name__}", request)
            return rejection(500, "internal error; details are in stsync's log")

    def _route(self, name: str, request: Request) -> Response:
        try:
            return self.routes[name](request)
        except Exception as exc:
            log.exception("serve: /%s failed", name)
            return rejection(500, f"internal error ({type(exc).__name__}); details are in stsync's log")

    def _health(self, request: Request) -> Response:
        if self._stopping.is_set():
            return Response(503, {"ok": False, "stopping": True})
        if self.authorized(request):
            return Response(200, {"ok": True, "queued": self.queue.pending})
        return Response(200, {"ok": True})

    def _delivery(self, request: Request) -> Response:
        parts = urlsplit(request.target)
        rest = [s for s in parts.path.split("/") if s][1:]
        if rest and token_matches(rest[0], self.token):
            rest = rest[1:]
        try:
            if len(rest) > 1:
                raise WebhookRejected(404, "not found; use /hooks/<token> or /hooks/<token>/<event>")
            path_event = unquote(rest[0]) if rest else None
            return self._accept(path_event, parts.query if request.method == "GET" else "", request)
        except WebhookRejected as exc:
            return self._rejected(exc.status, exc.message, request)

    def _accept(self, path_event: str | None, query: str, request: Request) -> Response:
        payload = apply_key_aliases(parse_payload(request.body, request.header("Content-Type"), query), self._aliases)
        if not isinstance(payload, (dict, list)):
            raise WebhookRejected(400, f"expected a JSON object describing the user, got {type(payload).__name__}")
        event = classify(payload, path_event=path_event, header_event=request.header(EVENT_HEADER))
        if event == REWARD_ISSUED:
            report(
                DeliveryEvent("received", 200, event, None, None, DeliveryOutcome.IGNORED, "rewards are not used by stsync",
                              client=request.client),
                self.observer,
            )
            return Response(200, {"ok": True, "event": event, "outcome": DeliveryOutcome.IGNORED})
        try:
            leads = leads_from_json(payload, pointer_only=True)
        except (UsageError, InvalidRecord) as exc:
            raise WebhookRejected(400, exc.message) from None
        # One lead: the key may use the payload's own fields; several: each lead's own.
        answers = [
            self._enqueue(event, lead, payload if len(leads) == 1 else asdict(lead), request.client) for lead in leads
        ]
        status = 202 if any(a["outcome"] == DeliveryOutcome.QUEUED for a in answers) else 200
        if len(answers) == 1:
            return Response(status, {"ok": True, "event": event, **answers[0]})
        return Response(status, {"ok": True, "event": event, "deliveries": answers})

    def _enqueue(self, event: str, lead: Lead, payload: Any, client: str | None) -> dict[str, Any]:
        key = delivery_key(event, lead, payload)
        external_id = self._external_id(lead)
        admission = self._ledger_thread.submit(
            self.conn.ledger.admit_delivery, key, event=event, external_id=external_id, lead=asdict(lead), payload=payload
        ).result()
        duplicate = admission == DeliveryAdmission.DONE
        self.stats.count_received(duplicate=duplicate)
        if duplicate:
            report(
                DeliveryEvent("received", 200, event, key, lead.describe(), DeliveryOutcome.DUPLICATE,
                              "already received and processed; not processed again", client=client),
                self.observer,
            )
            return {"outcome": DeliveryOutcome.DUPLICATE, "delivery": key}
        queued = self.queue.submit(Delivery(key=key, event=event, lead=lead, external_id=external_id, received_at=time.time()))
        message = {
            DeliveryAdmission.NEW: "queued",
            DeliveryAdmission.RETRY: "failed before; queued again",
        }.get(admission, "received before, not processed yet; queued" if queued else "received before; already queued")
        queued_event = DeliveryEvent("received", 202, event, key, lead.describe(), DeliveryOutcome.QUEUED, message, client=client)
        report(queued_event, self.observer)
        return {"outcome": DeliveryOutcome.QUEUED, "delivery": key}

    def _external_id(self, lead: Lead) -> str | None:
        try:
            return external_id_for(lead, self.conn.config.leads)
        except StsyncError:
            return lead.referral_code

    def _rejected(self, status: int, message: str, request: Request) -> Response:
        self.stats.count_rejected()
        rejected = DeliveryEvent("received", status, None, None, None, DeliveryOutcome.REJECTED, message, client=request.client)
        report(rejected, self.observer)
        return rejection(status, message)
