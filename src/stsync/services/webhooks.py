"""`serve`: Referral Factory's outbound webhooks → the same exactly-once paths as the CLI.

Referral Factory (api/referral-factory.md §9.1) lets a campaign admin point four events at
an https URL — "A new referrer joins", "A new lead is created", "A lead is qualified",
"A reward is issued" — with a configurable payload (keys can be renamed), up to three
custom headers, no signature, undocumented retries. So:

**Authentication.** A shared token, required, compared in constant time
(``hmac.compare_digest``): in the URL path (``/hooks/<token>``), or in a header
(``X-Stsync-Token: <token>`` or ``Authorization: Bearer <token>``). Anything else: 401.
The token is registered as a secret, so no log line ever shows it.

**Which event.** In order: the URL path after the token (``/hooks/<token>/lead-created``:
one URL per webhook is the robust set-up), a ``X-Stsync-Event`` header, an event key in the
payload (``event``, ``event_name``, ``trigger``, ...; Referral Factory's own names such as
"A new lead is created" are understood), else the user object itself: a ``person_invited``
user is a new lead (a qualified one, when ``qualified_at`` is set), a ``person_referring``
user a new referrer. Events: ``lead_created`` → ``services.push.push_lead`` (kind lead);
``referrer_joined`` → ``push_lead`` kind referrer when ``[referrers] action =
"create_booking"``, else ignored; ``lead_qualified`` → recorded in the ledger (the referral
is then never qualified again by ``qualify``, and ``unqualify_on`` still applies);
``reward_issued`` → ignored. Unknown or malformed payloads: 400 with a message.

**Verified, not trusted.** The payload only says *who*: each lead is read back from
Referral Factory (by id, code or e-mail, the e-mail must agree) and must belong to this
connection's campaign; the booking is made from what Referral Factory says, with its
campaign and referrer.

**Fast and in order.** The HTTP answer is 202 as soon as the delivery is parsed, recorded
(``Ledger.record_delivery``) and queued; one worker thread processes the queue in arrival
order. A delivery already seen (same key) is answered 200 and not processed again; a
repeated "lead created" is harmless anyway, because ``push_lead`` is exactly-once per
externalId. The delivery key is ``event:identity:stamp``: identity is the Referral Factory
user id, else the referral code, else the e-mail; stamp is ``qualified_at`` for a
qualification (a lead qualified, unqualified and qualified again is two events) and
``signed_up_at`` otherwise, else a hash of the body. A send time in the payload is *not*
part of the key: a retry would carry a new one.

**Durability.** A delivery whose processing fails is recorded as failed (the error in the
ledger and the log); if it is delivered again, it is processed again. Run
``stsync push-lead --new`` from cron as well: it finds every lead a lost or failed webhook
missed (Referral Factory promises no delivery, nor any retry).

**Shutdown.** ``stop()`` stops accepting, lets the worker finish the queue, and records the
run; ``serve_until_signalled`` does that on SIGINT / SIGTERM.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from stsync import envvars
from stsync.errors import ApiError, InvalidRecord, StsyncError, UsageError
from stsync.logs import get_logger, redact, register_secret
from stsync.referralfactory.models import PERSON_INVITED, PERSON_REFERRING
from stsync.storage.states import DeliveryOutcome, QualificationAction, QualificationState, QualificationValue, RunJob, RunOutcome
from stsync.vocabulary import Action, Kind

if TYPE_CHECKING:
    from stsync.referralfactory.models import User
    from stsync.services.leads import Lead
    from stsync.connection import Connection

log = get_logger(__name__)

LEAD_CREATED = "lead_created"
LEAD_QUALIFIED = "lead_qualified"
REFERRER_JOINED = "referrer_joined"
REWARD_ISSUED = "reward_issued"
EVENTS = (LEAD_CREATED, LEAD_QUALIFIED, REFERRER_JOINED, REWARD_ISSUED)

TOKEN_HEADER = "X-Stsync-Token"
EVENT_HEADER = "X-Stsync-Event"
HOOKS_PREFIX = "hooks"
MAX_BODY_BYTES = 1_000_000
MIN_TOKEN_LENGTH = 16
# Payload keys that may name the event; Referral Factory publishes no schema (§9.1).
EVENT_KEYS = ("event", "eventname", "eventtype", "trigger", "webhookevent", "topic")



class WebhookRejected(Exception):
    """A request answered with an HTTP error (never a crash): status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- parsing and classification ----------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.casefold())


def event_from_text(text: str, *, user_type: str | None = None) -> str | None:
    """An event name as a person or Referral Factory spells it → one of ``EVENTS``."""
    words = set(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).casefold()))
    if not words:
        return None
    if words & {"reward", "rewards"}:
        return REWARD_ISSUED
    qualifies = bool(words & {"qualified", "qualify", "qualification", "qualifies", "converted"})
    joins = bool(words & {"created", "create", "new", "joined", "joins", "join", "signup", "signed", "added", "add"})
    lead = bool(words & {"lead", "leads", "referral", "referred", "invited", "friend"})
    referrer = bool(words & {"referrer", "referrers", "referring", "advocate", "ambassador"})
    if qualifies and (lead or not referrer):
        return LEAD_QUALIFIED
    if joins and referrer and not lead:
        return REFERRER_JOINED
    if joins and lead:
        return LEAD_CREATED
    if joins and words & {"user", "person", "participant"}:
        # "user created": which kind depends on the user.
        if user_type == PERSON_INVITED:
            return LEAD_CREATED
        if user_type == PERSON_REFERRING:
            return REFERRER_JOINED
    return None


def parse_payload(body: bytes, content_type: str | None, query: str = "") -> Any:
    """The request's data: a JSON body, a form body, or (for a GET) the query string."""
    media = (content_type or "").split(";")[0].strip().casefold()
    if not body.strip():
        if query:
            return dict(parse_qsl(query, keep_blank_values=True))
        raise WebhookRejected(400, "empty body: expected a JSON object describing the user")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "the body is not UTF-8 text") from None
    if media == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WebhookRejected(
            400, f"the body is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None


def apply_key_aliases(payload: Any, aliases: dict[str, str]) -> Any:
    """Rename the sender's keys to lead fields (``[webhook.aliases]``, as ``{key: field}``).

    A ``meta.<label>`` field goes into the object's ``meta`` (as ``{field, value}``).
    """
    if not aliases:
        return payload
    if isinstance(payload, list):
        return [apply_key_aliases(item, aliases) for item in payload]
    if not isinstance(payload, dict):
        return payload
    wanted = {_norm(alias): target for alias, target in aliases.items()}
    renamed: dict[str, Any] = {}
    extra_meta: list[dict[str, Any]] = []
    for key, value in payload.items():
        target = wanted.get(_norm(key)) if isinstance(key, str) else None
        if isinstance(value, (dict, list)):
            value = apply_key_aliases(value, aliases)
        if target is not None and target.startswith("meta."):
            extra_meta.append({"field": target[len("meta.") :], "value": value})
        elif target is not None and target not in payload:
            renamed[target] = value
        else:
            renamed[key] = value
    if extra_meta:
        meta = renamed.get("meta")
        if isinstance(meta, dict):
            meta = [{"field": k, "value": v} for k, v in meta.items()]
        renamed["meta"] = (meta if isinstance(meta, list) else []) + extra_meta
    return renamed


def _user_object(payload: Any) -> dict:
    """The user inside a payload's envelopes, for the fields classification looks at."""
    current = payload
    for _ in range(3):
        if not isinstance(current, dict):
            return {}
        keys = {_norm(k): k for k in current if isinstance(k, str)}
        if any(k in keys for k in ("email", "emailaddress", "code", "referralcode", "firstname")):
            return current
        inner = next((current[keys[k]] for k in ("data", "user", "lead", "referral", "payload") if k in keys), None)
        if isinstance(inner, list):
            inner = inner[0] if inner else None
        current = inner
    return current if isinstance(current, dict) else {}


def _field(obj: dict, *names: str) -> Any:
    wanted = {_norm(name) for name in names}
    for key, value in obj.items():
        if isinstance(key, str) and _norm(key) in wanted:
            return value
    return None


def classify(payload: Any, *, path_event: str | None = None, header_event: str | None = None) -> str:
    """Which event a delivery is (see the module docstring); ``WebhookRejected`` if unknown."""
    user = _user_object(payload)
    user_type = _field(user, "type", "user_type")
    user_type = user_type if isinstance(user_type, str) else None
    for source, text in (("URL path", path_event), (f"{EVENT_HEADER} header", header_event)):
        if text:
            event = event_from_text(text, user_type=user_type)
            if event is None:
                raise WebhookRejected(400, f"unknown event {text!r} in the {source}; use one of {', '.join(EVENTS)}")
            return event
    if isinstance(payload, dict):
        named = {_norm(k): v for k, v in payload.items() if isinstance(k, str)}
        for key in EVENT_KEYS:
            value = named.get(key)
            if isinstance(value, str) and value.strip():
                event = event_from_text(value, user_type=user_type)
                if event is None:
                    raise WebhookRejected(400, f"unknown event {value!r}; stsync handles {', '.join(EVENTS)}")
                return event
    if user_type == PERSON_INVITED:
        return LEAD_QUALIFIED if _field(user, "qualified_at") else LEAD_CREATED
    if user_type == PERSON_REFERRING:
        return REFERRER_JOINED
    raise WebhookRejected(
        400,
        "cannot tell which event this is: no event in the URL (/hooks/<token>/lead-created), no "
        f"{EVENT_HEADER} header, no 'event' key, and no user 'type'",
    )


def delivery_key(event: str, lead: "Lead", payload: Any) -> str:
    """``event:identity:stamp`` (see the module docstring)."""
    if lead.rf_user_id is not None:
        identity = f"id={lead.rf_user_id}"
    elif lead.referral_code:
        identity = f"code={lead.referral_code}"
    else:
        identity = f"email={(lead.email or '').strip().casefold()}"
    user = _user_object(payload)
    stamp = _field(user, "qualified_at") if event == LEAD_QUALIFIED else lead.signed_up_at
    if not stamp:
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        stamp = "sha256=" + hashlib.sha256(canonical.encode()).hexdigest()[:24]
    return f"{event}:{identity}:{stamp}"


@dataclass(frozen=True)
class Delivery:
    """One lead of one accepted request, waiting for the worker."""

    key: str
    event: str
    lead: "Lead"
    external_id: str | None
    received_at: float


@dataclass(frozen=True)
class DeliveryEvent:
    """What the server tells its observer (the CLI prints it): a request answered, or a
    queued delivery processed."""

    stage: str  # "received" | "processed"
    status: int | None
    event: str | None
    key: str | None
    who: str | None
    outcome: str
    message: str
    booking_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServeStats:
    received: int = 0
    rejected: int = 0
    duplicates: int = 0
    processed: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def as_counts(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "processed": self.processed,
            "failed": self.failed,
            **{f"outcome_{name}": n for name, n in sorted(self.outcomes.items())},
        }


def token_matches(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def check_token(token: str | None) -> str:
    """The serve token, or ``UsageError`` when missing; a short token is refused too."""
    if token is None or not token.strip():
        raise UsageError(
            f"serve needs a shared token: --token, or the environment variable {envvars.WEBHOOK_TOKEN.name}",
            hint="generate one, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`, and "
            "put it in the webhook URL (/hooks/<token>) or the X-Stsync-Token header in Referral Factory",
        )
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c in token for c in "/?#% "):
        raise UsageError(
            f"the serve token must be at least {MIN_TOKEN_LENGTH} characters and contain no '/', '?', '#', '%' or spaces",
            hint="generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return token


# -- the service ------------------------------------------------------------------------------


class WebhookServer:
    """The HTTP endpoint, the queue and its one worker. ``start()`` → ``stop()``."""

    def __init__(
        self,
        conn: "Connection",
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        observer: Callable[[DeliveryEvent], None] | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.conn = conn
        self.token = check_token(token)
        register_secret(self.token)
        self.host = host
        self.port = port
        self.max_body = max_body
        self.observer = observer
        self.stats = ServeStats()
        self.run_id: int | None = None
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._httpd: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._worker_thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        # The ledger keeps one SQLite connection per thread until it is closed, and every
        # request has its own short-lived thread: they record deliveries through this one
        # long-lived thread instead, so a server running for months holds three connections.
        self._ledger_thread: ThreadPoolExecutor | None = None
        self._stopped = threading.Event()
        self._aliases = _key_aliases(conn.config)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        assert self._httpd is not None, "start() first"
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/{HOOKS_PREFIX}/"

    def start(self) -> None:
        try:
            httpd = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                hint="choose another --port (or stop what is using it)",
            ) from None
        httpd.webhooks = self
        try:
            self.run_id = self.conn.ledger.start_run(RunJob.SERVE, "serve")
        except BaseException:
            httpd.server_close()
            raise
        self._httpd = httpd
        self._ledger_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stsync-webhook-ledger")
        self._worker_thread = threading.Thread(target=self._work, name="stsync-webhook-worker", daemon=True)
        self._worker_thread.start()
        self._server_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="stsync-webhook-http", daemon=True
        )
        self._server_thread.start()
        log.info("serve: listening on %s:%s (run %s)", *self.address, self.run_id)

    def stop(self) -> None:
        """Stop accepting, finish the queue, record the run. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._worker_thread is not None:
            self._queue.put(None)
            self._worker_thread.join()
        if self._ledger_thread is not None:
            self._ledger_thread.shutdown(wait=True)
        if self.run_id is not None:
            outcome = RunOutcome.PARTIAL if self.stats.failed else RunOutcome.OK
            self.conn.ledger.finish_run(self.run_id, outcome, self.stats.as_counts())
        log.info("serve: stopped (%s)", self.stats.as_counts())

    def __enter__(self) -> "WebhookServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery is processed (tests, demo)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    # -- one request (HTTP threads) ------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict]:
        """Answer one request: (status, JSON object). Never raises."""
        parts = urlsplit(raw_path)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if method == "GET" and segments == ["healthz"]:
            return 200, {"ok": True, "queued": self.pending}
        if not segments or segments[0] != HOOKS_PREFIX:
            return 404, {"ok": False, "error": f"not found; webhooks are posted to /{HOOKS_PREFIX}/<token>"}
        rest = segments[1:]
        if rest and token_matches(rest[0], self.token):
            rest = rest[1:]
        elif not (token_matches(headers.get(TOKEN_HEADER), self.token) or token_matches(_bearer(headers), self.token)):
            self._note(DeliveryEvent("received", 401, None, None, None, DeliveryOutcome.REJECTED, "missing or wrong token"))
            return 401, {"ok": False, "error": "missing or wrong token"}
        if self._stopped.is_set():
            return 503, {"ok": False, "error": "stsync is shutting down; deliver again later"}
        if method not in ("POST", "PUT", "GET"):
            return 405, {"ok": False, "error": f"method {method} not allowed; Referral Factory sends POST"}
        try:
            return self._accept(rest, parts.query if method == "GET" else "", headers, body)
        except WebhookRejected as exc:
            self._note(DeliveryEvent("received", exc.status, None, None, None, DeliveryOutcome.REJECTED, exc.message))
            return exc.status, {"ok": False, "error": exc.message}
        except Exception as exc:  # a bug must not kill the server or show a trace to the sender
            log.exception("serve: unexpected error handling a delivery")
            self._note(DeliveryEvent("received", 500, None, None, None, DeliveryOutcome.REJECTED, f"internal error: {type(exc).__name__}"))
            return 500, {"ok": False, "error": "internal error; details are in stsync's log"}

    def _accept(self, rest: list[str], query: str, headers: Any, body: bytes) -> tuple[int, dict]:
        from stsync.services.leads import leads_from_json

        if len(rest) > 1:
            raise WebhookRejected(404, "not found; use /hooks/<token> or /hooks/<token>/<event>")
        payload = apply_key_aliases(parse_payload(body, headers.get("Content-Type"), query), self._aliases)
        if not isinstance(payload, (dict, list)):
            raise WebhookRejected(400, f"expected a JSON object describing the user, got {type(payload).__name__}")
        event = classify(payload, path_event=rest[0] if rest else None, header_event=headers.get(EVENT_HEADER))
        if event == REWARD_ISSUED:
            self._note(DeliveryEvent("received", 200, event, None, None, DeliveryOutcome.IGNORED, "rewards are not used by stsync"))
            return 200, {"ok": True, "event": event, "outcome": DeliveryOutcome.IGNORED}
        try:
            leads = leads_from_json(payload)
        except (UsageError, InvalidRecord) as exc:
            raise WebhookRejected(400, exc.message) from None
        # One lead: the key may use the payload's own fields; several: each lead's own.
        answers = [self._enqueue(event, lead, payload if len(leads) == 1 else asdict(lead)) for lead in leads]
        accepted = [a for a in answers if a["outcome"] == DeliveryOutcome.QUEUED]
        status = 202 if accepted else 200
        if len(answers) == 1:
            return status, {"ok": True, "event": event, **answers[0]}
        return status, {"ok": True, "event": event, "deliveries": answers}

    def _enqueue(self, event: str, lead: "Lead", payload: Any) -> dict:
        key = delivery_key(event, lead, payload)
        external_id = self._external_id(lead)
        assert self._ledger_thread is not None
        new = self._ledger_thread.submit(self._record_delivery, key, event, external_id).result()
        with self._stats_lock:
            self.stats.received += 1
            if not new:
                self.stats.duplicates += 1
        if not new:
            self._note(DeliveryEvent("received", 200, event, key, lead.describe(), DeliveryOutcome.DUPLICATE, "already received; not processed again"))
            return {"outcome": DeliveryOutcome.DUPLICATE, "delivery": key}
        self._queue.put(Delivery(key=key, event=event, lead=lead, external_id=external_id, received_at=time.time()))
        self._note(DeliveryEvent("received", 202, event, key, lead.describe(), DeliveryOutcome.QUEUED, "queued"))
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

    def _external_id(self, lead: "Lead") -> str | None:
        from stsync.mapping.booking import external_id_for

        try:
            return external_id_for(lead, self.conn.config.leads)
        except StsyncError:
            return lead.referral_code

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            delivery = self._queue.get()
            try:
                if delivery is None:
                    return
                self._process(delivery)
            finally:
                self._queue.task_done()

    def _process(self, delivery: Delivery) -> None:
        outcome, message, error, booking_id = DeliveryOutcome.FAILED, "", None, None
        try:
            outcome, message, booking_id = self._run(delivery)
        except StsyncError as exc:
            error = exc.to_dict() if isinstance(exc, ApiError) else {"type": type(exc).__name__, "message": exc.message}
            message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        except Exception as exc:  # the worker must outlive any one delivery
            log.exception("serve: unexpected error processing %s", delivery.key)
            error = {"type": type(exc).__name__, "message": "unexpected error; see the log"}
            message = f"unexpected error ({type(exc).__name__}); details in stsync's log"
        if outcome == DeliveryOutcome.FAILED and error is None:
            error = {"message": message}
        try:
            self.conn.ledger.finish_delivery(delivery.key, outcome, error)
        except Exception:
            log.exception("serve: could not record the outcome of %s", delivery.key)
        with self._stats_lock:
            self.stats.processed += 1
            self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1
            if outcome == DeliveryOutcome.FAILED:
                self.stats.failed += 1
        self._note(
            DeliveryEvent("processed", None, delivery.event, delivery.key, delivery.lead.describe(), outcome, message, booking_id)
        )

    def _run(self, delivery: Delivery) -> tuple[str, str, int | None]:
        """(outcome, message, booking id) for one delivery; raises for a failure."""
        if delivery.event == REFERRER_JOINED and self.conn.config.referrers.action != Action.CREATE_BOOKING:
            return DeliveryOutcome.IGNORED, f'referrers.action is "{Action.NOTHING}": referrers are not sent to ServiceTitan', None
        if delivery.event == LEAD_CREATED and self.conn.config.leads.action != Action.CREATE_BOOKING:
            return DeliveryOutcome.IGNORED, f'leads.action is "{Action.NOTHING}" ("Nothing to action"): no booking is created', None
        user = verified_user(self.conn, delivery.lead)
        expected = PERSON_REFERRING if delivery.event == REFERRER_JOINED else PERSON_INVITED
        if user.type is not None and user.type != expected:
            raise InvalidRecord(
                f"Referral Factory user {user.id} is a {user.type}, but the delivery says {delivery.event}",
                record=delivery.lead.describe(),
            )
        if delivery.event == LEAD_QUALIFIED:
            return record_reported_qualification(self.conn, user)
        from stsync.services.push import push_lead

        lead = lead_with_context(self.conn, user)
        kind = Kind.REFERRER if delivery.event == REFERRER_JOINED else Kind.LEAD
        result = push_lead(self.conn, lead, kind=kind, run_id=self.run_id)
        if result.failed and result.exception is not None:
            raise result.exception
        return DeliveryOutcome(result.outcome), result.message or result.outcome, result.booking_id

    def _note(self, event: DeliveryEvent) -> None:
        level = 30 if event.outcome in (DeliveryOutcome.REJECTED, DeliveryOutcome.FAILED) else 20
        log.log(level, "serve %s %s %s %s: %s", event.stage, event.status or "-", event.event or "-", event.key or "-", redact(event.message))
        if event.stage == "received" and event.outcome == DeliveryOutcome.REJECTED:
            with self._stats_lock:
                self.stats.rejected += 1
        if self.observer is not None:
            try:
                self.observer(event)
            except Exception:  # rendering must never break serving
                log.exception("serve: the observer failed")


def _bearer(headers: Any) -> str | None:
    value = headers.get("Authorization")
    if isinstance(value, str) and value[:7].casefold() == "bearer ":
        return value[7:].strip()
    return None


def _key_aliases(config: Any) -> dict[str, str]:
    """``[webhook.aliases]`` (lead field → the sender's keys) as ``{sender key: lead field}``."""
    aliases = getattr(getattr(config, "webhook", None), "aliases", None) or {}
    return {str(key): str(field) for field, keys in aliases.items() for key in keys}


# -- what the worker does -----------------------------------------------------------------------


def verified_user(conn: "Connection", lead: "Lead") -> "User":
    """The Referral Factory user a delivery names, read back (id, then code, then e-mail).

    The e-mail in the payload must agree with the user found, and the user must belong to
    this connection's campaign: a payload only says who, Referral Factory says what.
    """
    rf = conn.referral_factory
    campaign_id = conn.campaign_id
    wanted_email = (lead.email or "").strip().casefold()

    def agrees(user: "User | None") -> bool:
        if user is None:
            return False
        return not wanted_email or (user.email or "").strip().casefold() == wanted_email

    candidates: list[User | None] = []
    if lead.rf_user_id is not None:
        try:
            candidates.append(rf.get_user(lead.rf_user_id))
        except ApiError as exc:
            if exc.status != 404:
                raise
    user = next((u for u in candidates if agrees(u)), None)
    if user is None and lead.referral_code:
        found = rf.find_user_by_code(campaign_id, lead.referral_code)
        user = found if agrees(found) else None
    if user is None and lead.email:
        user = rf.find_user_by_email(campaign_id, lead.email)
    if user is None:
        raise InvalidRecord(
            f"Referral Factory campaign {campaign_id} has no user matching {lead.describe()}",
            record=lead.describe(),
            hint="check that the webhook belongs to this connection's campaign (referral_factory.campaign_id)",
        )
    if user.campaign_id is not None and user.campaign_id != campaign_id:
        raise InvalidRecord(
            f"{lead.describe()} belongs to Referral Factory campaign {user.campaign_id}, not {campaign_id}",
            record=lead.describe(),
            hint="point that campaign's webhook at the stsync serving its connection (--config)",
        )
    return user


def lead_with_context(conn: "Connection", user: "User") -> "Lead":
    """The lead as ``push-lead --code`` would read it: with its campaign and its referrer."""
    from stsync.services.leads import lead_from_user

    rf = conn.referral_factory
    campaign = rf.get_campaign(user.campaign_id if user.campaign_id is not None else conn.campaign_id)
    referrer = None
    if user.referrer_id is not None:
        try:
            referrer = rf.get_user(user.referrer_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
    return lead_from_user(user, campaign=campaign, referrer=referrer)


def record_reported_qualification(conn: "Connection", user: "User") -> tuple[str, str, int | None]:
    """"A lead is qualified": note it on the lead's push, so ``qualify`` never sends it again."""
    from stsync.mapping.booking import external_id_for
    from stsync.services.leads import lead_from_user

    if user.qualified_at is None:
        return DeliveryOutcome.IGNORED, f"Referral Factory shows user {user.id} as not qualified (pending): nothing recorded", None
    ledger = conn.ledger
    try:
        external_id = external_id_for(lead_from_user(user), conn.config.leads)
    except StsyncError:
        external_id = user.code
    push = ledger.get_push(external_id) if external_id else None
    if push is None:
        return DeliveryOutcome.IGNORED, f"{user.email} ({user.code}) was never pushed by stsync: nothing to record", None
    if push.qualification == QualificationValue.QUALIFIED:
        return DeliveryOutcome.RECORDED, "already recorded as qualified", push.booking_id
    intent = ledger.record_qualification_intent(
        external_id,
        QualificationAction.QUALIFY,
        rule="referral_factory",
        reason="Referral Factory reported the lead qualified (webhook)",
    )
    ledger.record_qualification_result(intent, state=QualificationState.DONE)
    return DeliveryOutcome.RECORDED, "recorded as qualified (reported by Referral Factory)", push.booking_id


# -- HTTP plumbing ----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # Not daemon threads: server_close() then waits for requests in flight, so none can
    # queue a delivery after the worker was told to finish.
    daemon_threads = False
    webhooks: WebhookServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "stsync-serve"
    sys_version = ""
    timeout = 30  # a slow or silent client cannot hold a thread for ever

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        webhooks = self.server.webhooks
        try:
            body = self._read_body(webhooks.max_body) if method != "GET" else b""
        except WebhookRejected as exc:
            self._answer(exc.status, {"ok": False, "error": exc.message})
            return
        status, answer = webhooks.handle(method, self.path, self.headers, body)
        self._answer(status, answer)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").casefold():
            raise WebhookRejected(411, "send a Content-Length (chunked bodies are not accepted)")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise WebhookRejected(400, "bad Content-Length") from None
        if length < 0:
            raise WebhookRejected(400, "bad Content-Length")
        if length > limit:
            raise WebhookRejected(413, f"body too large ({length} bytes; at most {limit})")
        return self.rfile.read(length)

    def _answer(self, status: int, answer: dict) -> None:
        data = (json.dumps(answer, default=str) + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the sender hung up; its delivery (if accepted) is queued all the same
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds the token: never write it as is.
        log.debug("serve http: %s", redact(format % args))


# -- running until a signal ---------------------------------------------------------------------


def serve_until_signalled(
    server: WebhookServer,
    *,
    stop: threading.Event | None = None,
    on_started: Callable[[WebhookServer], None] | None = None,
) -> None:
    """Run ``server`` until SIGINT/SIGTERM (or ``stop`` is set), then finish the queue.

    Signal handlers can only be installed from the main thread; elsewhere (tests) only
    ``stop`` ends it.
    """
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
        if on_started is not None:
            on_started(server)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            server.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
