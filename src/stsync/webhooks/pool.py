"""The worker pool: accepted deliveries run on a few threads, in order per lead.

**Order.** Deliveries are taken in the order they were queued, except that one never
starts while an earlier one naming the same user (``Delivery.lanes``: its Referral Factory
id, referral code or e-mail) is queued before it or running: "lead created" is processed
before "lead qualified" of the same lead, and never both at once. Deliveries about other
users run in parallel; the clients' rate limiters — shared by every thread and process of
the connection — set the pace, so more workers never means more requests per second.

**Each key once.** ``submit`` of a delivery whose key is queued or running is a no-op
(False): a sender repeating a delivery that was not processed yet does not queue it twice.

**Stopping is bounded.** ``stop(grace)`` lets the workers go on until the queue is empty or
``grace`` seconds have passed, then starts nothing more and returns how many deliveries are
left. Those are still recorded without an outcome in the ledger: the next start processes
them. Worker threads are daemons, so a delivery stuck in a remote call past the grace never
keeps the process from exiting (its push is exactly-once whatever happens: see
``services.push``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from stsync.logs import get_logger
from stsync.webhooks.deliveries import Delivery

log = get_logger(__name__)


class DeliveryPool:
    """``start()`` → ``submit()`` … → ``stop(grace)``."""

    def __init__(self, process: Callable[[Delivery], None], *, workers: int, name: str = "stsync-webhook-worker") -> None:
        self._process = process
        self.workers = max(1, int(workers))
        self._name = name
        self._changed = threading.Condition()
        self._queued: list[Delivery] = []
        self._queued_keys: set[str] = set()
        self._running: dict[str, frozenset[str]] = {}  # key → lanes
        self._closed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, delivery: Delivery) -> bool:
        """Queue ``delivery``; False when its key is queued or running already (or the pool stopped)."""
        with self._changed:
            if self._closed or delivery.key in self._running or delivery.key in self._queued_keys:
                return False
            self._queued.append(delivery)
            self._queued_keys.add(delivery.key)
            self._changed.notify_all()
            return True

    @property
    def pending(self) -> int:
        """Deliveries queued or running."""
        with self._changed:
            return len(self._queued) + len(self._running)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until nothing is queued or running (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._queued or self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def stop(self, grace: float) -> int:
        """Work on for at most ``grace`` seconds, then start nothing more. → deliveries left
        (queued, or still running when the grace ran out). Safe to call twice."""
        deadline = time.monotonic() + max(0.0, grace)
        with self._changed:
            while (self._queued or self._running) and (remaining := deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            self._closed = True
            left = len(self._queued) + len(self._running)
            self._queued.clear()
            self._queued_keys.clear()
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 0.1)
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("serve: %d delivery(ies) still running at shutdown; the next start finishes them", len(self._threads))
        return left

    # -- the workers -----------------------------------------------------------------------------
    def _work(self) -> None:
        while (delivery := self._next()) is not None:
            try:
                self._process(delivery)
            except BaseException:  # process() records its own failures; this is a bug
                log.exception("serve: a worker failed on %s", delivery.key)
            finally:
                with self._changed:
                    self._running.pop(delivery.key, None)
                    self._changed.notify_all()

    def _next(self) -> Delivery | None:
        """The first queued delivery that shares no lane with one running or queued before it."""
        with self._changed:
            while not self._closed:
                blocked: set[str] = set()
                for lanes in self._running.values():
                    blocked |= lanes
                for index, delivery in enumerate(self._queued):
                    lanes = delivery.lanes
                    if not lanes & blocked:
                        del self._queued[index]
                        self._queued_keys.discard(delivery.key)
                        self._running[delivery.key] = lanes
                        return delivery
                    blocked |= lanes
                self._changed.wait()
            return None
