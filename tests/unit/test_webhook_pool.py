"""webhooks.pool.DeliveryPool: a few threads, in order per lead (by id, code or e-mail),
each key queued once, a bounded stop."""

from __future__ import annotations

import threading
import time

from stsync.leads import Lead
from stsync.webhooks.deliveries import Delivery
from stsync.webhooks.pool import DeliveryPool


def delivery(key: str, **lead) -> Delivery:
    return Delivery(key=key, event="lead_created", lead=Lead(**lead), external_id=None, received_at=0.0)


class Recorder:
    """A process function that records start/end per key and how many ran at once."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.most_at_once = 0

    def __call__(self, item: Delivery) -> None:
        with self.lock:
            self.log.append(("start", item.key))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.log.append(("end", item.key))


def test_the_same_user_runs_in_order_and_never_twice_at_once_others_in_parallel():
    process = Recorder()
    pool = DeliveryPool(process, workers=4)
    # a1..a3 name one user three ways (id, then code + id, then the e-mail + code).
    items = [
        delivery("a1", rf_user_id=1),
        delivery("b1", email="b@example.com"),
        delivery("a2", rf_user_id=1, referral_code="A"),
        delivery("c1", referral_code="C"),
        delivery("a3", referral_code="A", email="a@example.com"),
        delivery("d1", email="d@example.com"),
    ]
    for item in items:
        assert pool.submit(item)
    pool.start()
    assert pool.wait_idle(10)
    pool.stop(1)
    starts = [key for what, key in process.log if what == "start"]
    ends = {key: index for index, (what, key) in enumerate(process.log) if what == "end"}
    begins = {key: index for index, (what, key) in enumerate(process.log) if what == "start"}
    assert [k for k in starts if k.startswith("a")] == ["a1", "a2", "a3"]
    assert ends["a1"] < begins["a2"] and ends["a2"] < begins["a3"], "one user: never at once"
    assert process.most_at_once >= 3, "other users ran alongside"


def test_a_key_queued_or_running_is_not_queued_again():
    release = threading.Event()
    seen: list[str] = []

    def process(item: Delivery) -> None:
        seen.append(item.key)
        release.wait(5)

    pool = DeliveryPool(process, workers=2)
    pool.start()
    assert pool.submit(delivery("k", rf_user_id=1))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pool.submit(delivery("k", rf_user_id=1)), "running"
    assert pool.submit(delivery("j", rf_user_id=1))
    assert not pool.submit(delivery("j", rf_user_id=1)), "queued"
    assert pool.pending == 2
    release.set()
    assert pool.wait_idle(5) and seen == ["k", "j"]
    assert pool.submit(delivery("k", rf_user_id=1)), "finished keys may come again (the ledger decides)"
    pool.stop(5)


def test_stop_is_bounded_and_says_how_many_are_left():
    process = Recorder(delay=0.5)
    pool = DeliveryPool(process, workers=2)
    for n in range(10):
        pool.submit(delivery(f"k{n}", rf_user_id=n))
    pool.start()
    started = time.monotonic()
    left = pool.stop(0.2)
    assert time.monotonic() - started < 1.5
    assert left == 10 - sum(1 for what, _ in process.log if what == "end") and left >= 6
    assert not pool.submit(delivery("late", rf_user_id=99)), "a stopped pool takes nothing"
