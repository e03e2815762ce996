"""Worker threads for a run over many records, stopped at the first run-level failure.

Push's batches and sync-customers' pages run their records on a ``WorkPool``. A task
handles its own records' failures (``errors.stops_run`` says which are the record's) and
raises only what must stop the run; so any exception a task raises stops the pool:

- **At once.** The failing task stops the pool before its exception travels anywhere: no
  task starts after it. A task not started yet is skipped — it never runs and its result is
  None; a running task may look at ``stopping`` between its records and leave early. What
  finished stays finished (the tasks recorded it).
- **One failure wins, the first in input order.** ``wait(futures)`` waits for every future
  it is given — after a failure that takes no longer than the records being worked on — then
  raises the failure of the earliest future *in the order given* (not the one that happened
  first: with several workers that is chance). Every other failure is logged; a bug (an
  exception that is not a ``StsyncError``) with its traceback.
- **Closing** (leaving the ``with`` block) stops the pool, cancels what has not started,
  and waits for the threads.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from stsync.errors import StsyncError
from stsync.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class WorkPool:
    def __init__(self, workers: int, *, name: str) -> None:
        """``workers`` threads (at least one); ``name`` says whose run it is in log lines and
        thread names (e.g. ``push``)."""
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix=name)
        self._stopping = threading.Event()

    def __enter__(self) -> WorkPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stopping(self) -> bool:
        """The pool was stopped: a task working through several records should leave."""
        return self._stopping.is_set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once the pool stops: for a loop that waits between tasks (and should not)."""
        return self._stopping

    def stop(self) -> None:
        """No task starts from now on; running tasks see ``stopping``."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T | None]:
        # The submitter's context (the run id the log lines carry) goes with the task.
        context = contextvars.copy_context()
        return self._executor.submit(context.run, self._run, fn, args, kwargs)

    def _run(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T | None:
        if self._stopping.is_set():
            return None  # the run is stopping: this task is left for the next run
        try:
            return fn(*args, **kwargs)
        except BaseException:
            self._stopping.set()  # before anything else: no worker starts another task meanwhile
            raise

    def wait(self, futures: Sequence[Future[T]], *, on_done: Callable[[T], None] | None = None) -> list[T]:
        """The futures' results, in the order given; ``on_done(result)`` is called in this
        thread as each task finishes without failing. When any task failed: the pool is
        stopped, every future waited for, and the first failure in the order given raised
        (the others logged)."""
        # as_completed waits on every future with one waiter; calling wait(FIRST_COMPLETED)
        # in a loop re-registers on all the pending ones each time: quadratic, and at 1,000
        # leads it cost the main thread more CPU than the pushes themselves.
        for future in as_completed(futures):
            if future.cancelled():
                continue
            if future.exception() is not None:
                self.stop()
            elif on_done is not None:
                on_done(future.result())
        failures = [exc for f in futures if not f.cancelled() and (exc := f.exception()) is not None]
        if failures:
            first, *others = failures
            log.error("%s stops: %s", self.name, first)
            for other in others:
                log.warning("%s: also failed while stopping: %s", self.name, other, exc_info=_traceback_of_bug(other))
            raise first
        return [f.result() for f in futures]


def finished(futures: Iterable[Future[T | None]]) -> list[T]:
    """The results of the tasks that ran to the end, in the order given (none of the skipped,
    cancelled or failed ones): what a stopped run still reports."""
    return [
        result
        for future in futures
        if future.done() and not future.cancelled() and future.exception() is None
        and (result := future.result()) is not None
    ]


def _traceback_of_bug(exc: BaseException) -> BaseException | None:
    return None if isinstance(exc, StsyncError) else exc
