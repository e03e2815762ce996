"""`stsync serve` as a use case: Referral Factory's outbound webhooks → the same exactly-once
paths as the CLI, in one recorded run.

Referral Factory (api/referral-factory.md §9.1) lets a campaign admin point four events at an
https URL — "A new referrer joins", "A new lead is created", "A lead is qualified", "A reward
is issued" — with a configurable payload (keys can be renamed, ``[webhook.aliases]``), up to
three custom headers, no signature, undocumented retries. ``WebhookServer`` composes the
engine in ``stsync.webhooks``: the HTTP server (``http_server``: waitress with connection,
size and time limits), the handler (authentication from the head, parsing, dedupe, 202 once
a delivery is recorded), the worker pool (``[webhook] workers`` threads, in order per lead,
paced by the shared rate limiters; a new lead becomes a booking through
``services.push.push_lead``, exactly once per externalId).

**A 202 is a promise.** Every delivery is recorded in the ledger with what it says before
it is answered 202. ``start()`` processes, before anything new, every delivery recorded
and never finished — by a serve that was stopped, or killed — and closes a serve run a dead
process left "running" as interrupted. A delivery sent again while it is still without an
outcome is processed (once); one whose processing failed is processed again. Keep
``stsync push-lead --new`` in cron as well: it finds every lead whose webhook never came
(Referral Factory promises no delivery, nor any retry).

**Lifecycle.** ``start()`` binds the port (``UsageError`` when taken), records the run
("serve" in the ledger) and serves. ``stop()`` answers 503 from then on, closes idle and
slow connections at once, gives requests in flight a moment, lets the workers go on for at
most ``shutdown_grace`` seconds and records the run's outcome ("partial" when a delivery
failed) and counts, ``left_waiting`` among them: deliveries the next start processes.
Signals are the caller's business (the CLI). ``add_route`` serves an extra path (e.g.
``/metrics``) from the same server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from stsync.logs import get_logger, register_secret
from stsync.services.push import push_lead, push_target
from stsync.storage.states import DeliveryOutcome, RunJob, RunOutcome
from stsync.vocabulary import Kind
from stsync.webhooks.deliveries import Delivery, Observer, ServeStats
from stsync.webhooks.handler import HOOKS_PREFIX, MAX_BODY_BYTES, Route, WebhookHandler
from stsync.webhooks.http_server import HttpServer, ServerLimits
from stsync.webhooks.pool import DeliveryPool
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
    """The HTTP server, the handler and the worker pool as one run. ``start()`` → ``stop()``."""

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
        workers: int | None = None,
        limits: ServerLimits | None = None,
        shutdown_grace: float = 5.0,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.conn = conn
        token = check_token(token)
        register_secret(token)
        settings = conn.config.webhook
        self.stats = ServeStats()
        self.run_id: int | None = None
        self.shutdown_grace = shutdown_grace
        self.worker = DeliveryWorker(conn, push_for=push_for or booking_push(conn), stats=self.stats, observer=observer)
        self.pool = DeliveryPool(self.worker.process, workers=workers or settings.workers)
        self.handler = WebhookHandler(
            conn, token=token, queue=self.pool, stats=self.stats, observer=observer, max_body=max_body, routes=routes
        )
        limits = limits or ServerLimits(
            max_connections=settings.max_connections, trusted_proxy=settings.trusted_proxy, max_body=max_body
        )
        self.http = HttpServer(self.handler, host=host, port=port, limits=limits)
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
        """Deliveries queued or being processed."""
        return self.pool.pending

    def add_route(self, name: str, route: Route) -> None:
        """Serve ``GET /<name>`` (e.g. ``metrics``) with ``route(request) -> Response``, to requests
        carrying the token in a header; see ``WebhookHandler.add_route``."""
        self.handler.add_route(name, route)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery is processed (tests)."""
        return self.pool.wait_idle(timeout)

    def start(self) -> None:
        self.http.bind()
        try:
            ledger = self.conn.ledger
            for run_id in ledger.close_abandoned_runs(RunJob.SERVE):
                log.warning("serve: run %s was left running by a process that died; closed as interrupted", run_id)
            self.run_id = ledger.start_run(RunJob.SERVE, "serve")
        except BaseException:
            self.http.stop()
            raise
        self.worker.run_id = self.run_id
        self.pool.start()
        self._resume()
        self.http.serve()
        log.info("serve: listening on %s:%s (run %s)", *self.address, self.run_id)

    def _resume(self) -> None:
        """Queue, ahead of anything new, every delivery recorded and not processed yet."""
        ledger = self.conn.ledger
        resumed = 0
        for record in ledger.deliveries_to_process():
            if record.lead is None or record.event is None:
                # Recorded by an stsync that kept no payload: nothing to process it from.
                ledger.finish_delivery(record.key, DeliveryOutcome.FAILED, {
                    "message": "recorded without its payload by an older stsync; `stsync push-lead --new` finds the lead",
                })
                continue
            resumed += int(self.pool.submit(Delivery.from_record(record)))
        self.stats.count_resumed(resumed)
        if resumed:
            log.info("serve: processing %d delivery(ies) recorded before the last stop", resumed)

    def stop(self) -> None:
        """Stop accepting, give the workers ``shutdown_grace`` seconds, record the run. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.handler.stop_accepting()
        self.http.stop()
        self.handler.close()
        left = self.pool.stop(self.shutdown_grace)
        self.stats.count_left_waiting(left)
        counts = self.stats.as_counts()
        if self.run_id is not None:
            outcome = RunOutcome.PARTIAL if self.stats.failed else RunOutcome.OK
            self.conn.ledger.finish_run(self.run_id, outcome, counts)
        if left:
            log.info("serve: %d delivery(ies) left for the next start", left)
        log.info("serve: stopped (%s)", counts)

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
