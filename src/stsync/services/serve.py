"""`stsync serve` as a use case: Referral Factory's outbound webhooks → the same exactly-once
paths as the CLI, in one recorded run.

Referral Factory (api/referral-factory.md §9.1) lets a campaign admin point four events at an
https URL — "A new referrer joins", "A new lead is created", "A lead is qualified", "A reward
is issued" — with a configurable payload (keys can be renamed, ``[webhook.aliases]``), up to
three custom headers, no signature, undocumented retries. ``WebhookServer`` composes the
engine in ``stsync.webhooks``: the handler (authentication, parsing, dedupe, 202 as soon as a
delivery is recorded and queued), the worker (one thread, arrival order, each outcome in the
ledger; a new lead becomes a booking through ``services.push.push_lead``, exactly once per
externalId) and an HTTP server in front of the handler.

**Durability.** A delivery whose processing fails is recorded as failed; delivered again, it
is processed again. Run ``stsync push-lead --new`` from cron as well: it finds every lead a
lost or failed webhook missed (Referral Factory promises no delivery, nor any retry).

**Lifecycle.** ``start()`` binds the port (``UsageError`` when taken), records the run
("serve" in the ledger) and serves. ``stop()`` answers 503 from then on, waits for the
requests in flight, lets the worker finish the queue and records the run's outcome
("partial" when a delivery failed) and counts. Signals are the caller's business (the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from stsync.logs import get_logger, register_secret
from stsync.services.push import push_lead, push_target
from stsync.storage.states import DeliveryOutcome, RunJob, RunOutcome
from stsync.vocabulary import Kind
from stsync.webhooks.deliveries import Observer, ServeStats
from stsync.webhooks.handler import HOOKS_PREFIX, MAX_BODY_BYTES, Route, WebhookHandler
from stsync.webhooks.stdlib_server import StdlibServer
from stsync.webhooks.tokens import check_token
from stsync.webhooks.worker import DeliveryWorker, LeadPush, PushFor

if TYPE_CHECKING:
    from stsync.connection import Connection
    from stsync.leads import Lead

log = get_logger(__name__)


def booking_push(conn: Connection) -> PushFor:
    """``push_lead`` on ``conn`` as the worker calls it. What a kind is pushed to
    (``push_target``) is checked once per delivery: "Nothing to action" answers with its notice
    (the delivery is ignored); otherwise one lead is pushed, a failed record raising its error."""

    def push_for(kind: Kind) -> LeadPush | str:
        target = push_target(conn, kind)
        if target.notice is not None:
            return target.notice

        def push(lead: Lead, run_id: int | None) -> tuple[str, str, int | None]:
            result = push_lead(conn, lead, target, run_id=run_id)
            if result.failed and result.exception is not None:
                raise result.exception
            return DeliveryOutcome(result.outcome), result.message or result.outcome, result.booking_id

        return push

    return push_for


class WebhookServer:
    """The handler, its worker and the HTTP server as one run. ``start()`` → ``stop()``."""

    def __init__(
        self,
        conn: Connection,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        observer: Observer | None = None,
        max_body: int = MAX_BODY_BYTES,
        push_for: PushFor | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.conn = conn
        token = check_token(token)
        register_secret(token)
        self.stats = ServeStats()
        self.run_id: int | None = None
        self.worker = DeliveryWorker(conn, push_for=push_for or booking_push(conn), stats=self.stats, observer=observer)
        self.handler = WebhookHandler(
            conn, token=token, queue=self.worker, stats=self.stats, observer=observer, max_body=max_body, routes=routes
        )
        self.http = StdlibServer(self.handler.handle, host=host, port=port, max_body=max_body)
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address

    @property
    def url(self) -> str:
        """Where deliveries go, up to the token: ``http://127.0.0.1:8080/hooks/``."""
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/{HOOKS_PREFIX}/"

    @property
    def pending(self) -> int:
        return self.worker.pending

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery is processed (tests)."""
        return self.worker.wait_idle(timeout)

    def start(self) -> None:
        self.http.bind()
        try:
            self.run_id = self.conn.ledger.start_run(RunJob.SERVE, "serve")
        except BaseException:
            self.http.stop()
            raise
        self.worker.run_id = self.run_id
        self.worker.start()
        self.http.serve()
        log.info("serve: listening on %s:%s (run %s)", *self.address, self.run_id)

    def stop(self) -> None:
        """Stop accepting, finish the queue, record the run. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.handler.stop_accepting()
        self.http.stop()
        self.handler.close()
        self.worker.finish()
        counts = self.stats.as_counts()
        if self.run_id is not None:
            outcome = RunOutcome.PARTIAL if self.stats.failed else RunOutcome.OK
            self.conn.ledger.finish_run(self.run_id, outcome, counts)
        log.info("serve: stopped (%s)", counts)

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
