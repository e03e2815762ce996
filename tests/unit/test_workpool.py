"""stsync.workpool: a failing task stops the pool at once; the first failure in input order
wins, whichever happened first; the others are logged; what finished is kept."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from stsync.errors import AuthError, TemporaryError
from stsync.workpool import WorkPool, finished


def test_every_result_in_input_order_and_on_done_for_each():
    seen = []
    with WorkPool(3, name="test") as pool:
        futures = [pool.submit(lambda n: n * n, n) for n in range(10)]
        results = pool.wait(futures, on_done=seen.append)
    assert results == [n * n for n in range(10)]
    assert sorted(seen) == results


def test_the_first_failure_in_input_order_is_raised_though_a_later_one_happened_first(caplog):
    later_failed = threading.Event()

    def first():
        assert later_failed.wait(5)  # fails only after the task after it has failed
        raise TemporaryError("first in input order")

    def second():
        later_failed.set()
        raise AuthError("first in time")

    caplog.set_level(logging.WARNING, logger="stsync.workpool")
    with WorkPool(2, name="test run") as pool:
        futures = [pool.submit(first), pool.submit(second)]
        with pytest.raises(TemporaryError, match="first in input order"):
            pool.wait(futures)
    logged = caplog.text
    assert "test run stops: first in input order" in logged and "also failed while stopping: first in time" in logged


def test_a_failure_stops_the_pool_at_once_and_what_finished_is_kept():
    started = []
    release = threading.Event()

    def task(n):
        started.append(n)
        if n == 1:
            raise AuthError("stop")
        if n == 0:
            assert release.wait(5)
        return n

    with WorkPool(2, name="test") as pool:
        futures = [pool.submit(task, 0), pool.submit(task, 1)]
        # Queued behind the two workers: by the time a worker is free, the pool has stopped.
        futures += [pool.submit(task, n) for n in range(2, 10)]
        release_when_stopped = threading.Thread(target=lambda: _wait_until(lambda: pool.stopping) and release.set())
        release_when_stopped.start()
        with pytest.raises(AuthError):
            pool.wait(futures)
        release_when_stopped.join()
    assert sorted(started) == [0, 1]  # no task started after the failure
    assert finished(futures) == [0]  # the task running then finished and is kept; skipped ones are not


def test_a_running_task_sees_the_pool_stopping_between_its_records():
    handled = []
    first_handled = threading.Event()

    def many(pool):
        for record in range(100):
            if pool.stopping:
                break
            handled.append(record)
            first_handled.set()
            assert _wait_until(lambda: pool.stopping)  # the next record only once the other task failed
        return handled

    def failing():
        assert first_handled.wait(5)
        raise TemporaryError("down")

    with WorkPool(2, name="test") as pool:
        futures = [pool.submit(many, pool), pool.submit(failing)]
        with pytest.raises(TemporaryError):
            pool.wait(futures)
    assert handled == [0]
    assert finished(futures) == [[0]]


def test_a_bug_is_a_failure_too():
    with WorkPool(1, name="test") as pool:
        futures = [pool.submit(lambda: {}["missing"])]
        with pytest.raises(KeyError):
            pool.wait(futures)
        assert pool.stopping


def _wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
