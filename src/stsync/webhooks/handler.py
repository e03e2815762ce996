"""The webhook endpoint without a socket: ``WebhookHandler.handle(Request) -> Response``.

Any HTTP server can sit in front of it (``stdlib_server`` does today): the adapter turns
bytes into a ``Request`` and writes the ``Response`` back; everything a sender can observe —
status codes, JSON answers, dedupe, stats — is decided here. ``handle`` never raises: a bug
is a 500 with no detail for the sender and the trace in the log.

**Routes.** ``GET /healthz`` → 200 with the queue depth. Extra GET routes (``routes``:
``/metrics``) answer only a request with the token in a header. ``/hooks/<token>[/<event>]``, or
``/hooks[/<event>]`` with the token in a header (``tokens``) → the delivery; a missing or
wrong token is 401, checked before the body is parsed. POST and PUT carry a body; a GET
carries the lead in its query string. Other paths 404, other methods 405, a body over
``max_body`` 413, a delivery while stopping 503 (the sender retries later).

**Accepted.** A delivery is parsed and classified (``payload``), its leads read
(``leads_from_json``), and each lead recorded in the ledger (``Ledger.record_delivery``)
before it is handed to the worker: 202 when at least one lead was queued, 200 for a
duplicate (same delivery key; not processed again) or an event stsync does not use. A
delivery whose processing failed is queued again when it is delivered again.

**Threads.** ``handle`` runs on the server's request threads. The ledger keeps one SQLite
connection per thread until it is closed, so requests record deliveries through one
long-lived thread owned here (``close()`` ends it): a server running for months holds a
fixed number of connections, whatever its request threads.
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
from stsync.storage.states import DeliveryOutcome
from stsync.webhooks.deliveries import Delivery, DeliveryEvent, Observer, ServeStats, report
from stsync.webhooks.payload import (
    EVENT_HEADER,
    REWARD_ISSUED,
    WebhookRejected,
    apply_key_aliases,
    classify,
    delivery_key,
    key_aliases,
    parse_payload,
)
from stsync.webhooks.tokens import header_token_matches, token_matches

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.leads import Lead

log = get_logger(__name__)

HOOKS_PREFIX = "hooks"
MAX_BODY_BYTES = 1_000_000


@dataclass(frozen=True)
class Request:
    """One HTTP request as the handler sees it: header names lower-cased, the body read."""

    method: str
    target: str  # path and query, as sent: "/hooks/<token>/lead-created?email=..."
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def build(cls, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> Request:
        return cls(method.upper(), target, {name.casefold(): value for name, value in headers}, body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.casefold())


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
    """The 413 answer; adapters that know the length before reading the body answer it early."""
    return rejection(413, f"body too large ({length} bytes; at most {limit})")


class DeliveryQueue(Protocol):
    """Where accepted deliveries go (``worker.DeliveryWorker``)."""

    def submit(self, delivery: Delivery) -> None: ...

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
        self.routes = dict(routes or {})
        self.queue = queue
        self.stats = stats
        self.observer = observer
        self.max_body = max_body
        self._aliases = key_aliases(conn.config.webhook.aliases)
        self._stopping = threading.Event()
        self._ledger_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsync-webhook-ledger")

    def stop_accepting(self) -> None:
        """From now on deliveries are answered 503 (the sender retries later)."""
        self._stopping.set()

    def close(self) -> None:
        """End the ledger thread, once no request is in flight any more."""
        self._ledger_thread.shutdown(wait=True)

    # -- one request ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """Answer one request. Never raises."""
        if len(request.body) > self.max_body:
            return body_too_large(len(request.body), self.max_body)
        parts = urlsplit(request.target)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if request.method == "GET" and segments == ["healthz"]:
            return Response(200, {"ok": True, "queued": self.queue.pending})
        if len(segments) == 1 and segments[0] in self.routes:
            return self._route(segments[0], request)
        if not segments or segments[0] != HOOKS_PREFIX:
            return rejection(404, f"not found; webhooks are posted to /{HOOKS_PREFIX}/<token>")
        rest = segments[1:]
        if rest and token_matches(rest[0], self.token):
            rest = rest[1:]
        elif not header_token_matches(request.header, self.token):
            self._rejected(401, "missing or wrong token")
            return rejection(401, "missing or wrong token")
        if self._stopping.is_set():
            return rejection(503, "stsync is shutting down; deliver again later")
        if request.method not in ("POST", "PUT", "GET"):
            return rejection(405, f"method {request.method} not allowed; Referral Factory sends POST")
        try:
            return self._accept(rest, parts.query if request.method == "GET" else "", request)
        except WebhookRejected as exc:
            self._rejected(exc.status, exc.message)
            return rejection(exc.status, exc.message)
        except Exception as exc:  # a bug must not kill the server or show a trace to the sender
            log.exception("serve: unexpected error handling a delivery")
            self._rejected(500, f"internal error: {type(exc).__name__}")
            return rejection(500, "internal error; details are in stsync's log")

    def _route(self, name: str, request: Request) -> Response:
        if not header_token_matches(request.header, self.token):
            return rejection(401, f"missing or wrong token: /{name} needs the X-Stsync-Token (or Authorization: Bearer) header")
        if request.method != "GET":
            return rejection(405, f"method {request.method} not allowed on /{name}")
        try:
            return self.routes[name](request)
        except Exception as exc:
            log.exception("serve: /%s failed", name)
            return rejection(500, f"internal error ({type(exc).__name__}); details are in stsync's log")

    def _accept(self, rest: list[str], query: str, request: Request) -> Response:
        if len(rest) > 1:
            raise WebhookRejected(404, "not found; use /hooks/<token> or /hooks/<token>/<event>")
        payload = apply_key_aliases(parse_payload(request.body, request.header("Content-Type"), query), self._aliases)
        if not isinstance(payload, (dict, list)):
            raise WebhookRejected(400, f"expected a JSON object describing the user, got {type(payload).__name__}")
        event = classify(payload, path_event=rest[0] if rest else None, header_event=request.header(EVENT_HEADER))
        if event == REWARD_ISSUED:
            report(
                DeliveryEvent("received", 200, event, None, None, DeliveryOutcome.IGNORED, "rewards are not used by stsync"),
                self.observer,
            )
            return Response(200, {"ok": True, "event": event, "outcome": DeliveryOutcome.IGNORED})
        try:
            leads = leads_from_json(payload)
        except (UsageError, InvalidRecord) as exc:
            raise WebhookRejected(400, exc.message) from None
        # One lead: the key may use the payload's own fields; several: each lead's own.
        answers = [self._enqueue(event, lead, payload if len(leads) == 1 else asdict(lead)) for lead in leads]
        status = 202 if any(a["outcome"] == DeliveryOutcome.QUEUED for a in answers) else 200
        if len(answers) == 1:
            return Response(status, {"ok": True, "event": event, **answers[0]})
        return Response(status, {"ok": True, "event": event, "deliveries": answers})

    def _enqueue(self, event: str, lead: Lead, payload: Any) -> dict[str, Any]:
        key = delivery_key(event, lead, payload)
        external_id = self._external_id(lead)
        new = self._ledger_thread.submit(self._record_delivery, key, event, external_id).result()
        self.stats.count_received(duplicate=not new)
        if not new:
            duplicate = DeliveryEvent(
                "received", 200, event, key, lead.describe(), DeliveryOutcome.DUPLICATE, "already received; not processed again"
            )
            report(duplicate, self.observer)
            return {"outcome": DeliveryOutcome.DUPLICATE, "delivery": key}
        self.queue.submit(Delivery(key=key, event=event, lead=lead, external_id=external_id, received_at=time.time()))
        report(DeliveryEvent("received", 202, event, key, lead.describe(), DeliveryOutcome.QUEUED, "queued"), self.observer)
        return {"outcome": DeliveryOutcome.QUEUED, "delivery": key}

    def _record_delivery(self, key: str, event: str, external_id: str | None) -> bool:
        """True when the delivery must be processed: new, or a redelivery of one that failed."""
        ledger = self.conn.ledger
        if ledger.record_delivery(key, event=event, external_id=external_id):
            return True
        previous = ledger.get_delivery(key)
        if previous is not None and previous.outcome == DeliveryOutcome.FAILED:
            # Referral Factory (or a person) sent it again after it failed: try once more.
            # Marked at once, so a burst of redeliveries queues it only once.
            ledger.finish_delivery(key, DeliveryOutcome.RETRYING, previous.error)
            return True
        return False

    def _external_id(self, lead: Lead) -> str | None:
        try:
            return external_id_for(lead, self.conn.config.leads)
        except StsyncError:
            return lead.referral_code

    def _rejected(self, status: int, message: str) -> None:
        self.stats.count_rejected()
        report(DeliveryEvent("received", status, None, None, None, DeliveryOutcome.REJECTED, message), self.observer)
