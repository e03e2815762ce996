"""An exclusive OS lock on a file, for the locks taken on every request or record.

``FileMutex(path)`` excludes other processes (and other ``FileMutex`` objects) on the same
file. On POSIX it is ``flock(2)`` on a descriptor of the file: the kernel drops the lock
when the holder dies, so a kill -9 never leaves a stale lock behind, and locking and
unlocking cost two system calls (about 2 µs). The shared rate limiter takes it once per
request and ``KeyLock`` once per record, where ``filelock``'s portable wrapper — path
resolution, fork tracking, a polling loop, about 80 µs of CPU a time — made a third of a
push run's CPU. Where ``fcntl`` does not exist (Windows), ``filelock.FileLock`` does the
same job.

What it does not do:

- **Threads.** A ``flock`` belongs to the open file description: two threads using one
  ``FileMutex`` would both "hold" it. Callers serialise their threads with a threading lock
  first (the rate limiter, ``KeyLock``'s stripes), as they did with ``filelock``.
- **Re-entrance.** Acquiring it twice in one thread deadlocks on a blocking wait (or times
  out); callers count depth.

``keep_open=True`` keeps the descriptor between acquisitions (the rate limiter: one per
service); otherwise it is opened on acquire and closed on release (``KeyLock``'s 256
stripes, which would otherwise hold 256 descriptors — macOS allows a process 256 by
default). A kept descriptor is opened again in a forked child, whose inherited copy shares
the parent's lock. Lock files are created 0600 and never deleted: deleting one while a
process holds it would let the next process lock a new file beside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from stsync.storage.paths import PRIVATE_FILE, make_private_dir

try:
    import fcntl

    PORTABLE = False
except ImportError:  # Windows: filelock's portable lock instead
    PORTABLE = True

# While another process holds the lock, a wait with a timeout polls; the first retries come
# fast (holders keep these locks for micro- to milliseconds), later ones less often.
_FIRST_POLL = 0.0005
_LONGEST_POLL = 0.02


class FileMutex:
    """``acquire(timeout)`` / ``release()`` of an exclusive lock on ``path`` (see the module
    docstring for threads and re-entrance)."""

    def __init__(self, path: Path, *, keep_open: bool = False) -> None:
        self.path = Path(path)
        self._keep_open = keep_open
        self._fd: int | None = None
        self._fd_pid = 0
        self._held = False
        self._portable = FileLock(str(self.path), thread_local=False, mode=PRIVATE_FILE) if PORTABLE else None

    @property
    def is_held(self) -> bool:
        return self._held

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for the lock: for ever (``timeout=None``) or up to ``timeout`` seconds (0: try
        once). True when held, False when the time ran out."""
        if self._held and self._portable is None and self._fd_pid != os.getpid():
            # Forked while the parent held it: the parent's hold, not this process's.
            self._held, self._fd = False, None
        if self._held:
            raise RuntimeError(f"{self.path} is already locked by this FileMutex")
        if self._portable is not None:
            try:
                self._portable.acquire(timeout=-1 if timeout is None else timeout)
            except Timeout:
                return False
            self._held = True
            return True
        fd = self._descriptor()
        try:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks without the GIL
            elif not self._try_until(fd, time.monotonic() + timeout):
                self._close_unless_kept()
                return False
        except BaseException:
            self._close_unless_kept()
            raise
        self._held = True
        return True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._portable is not None:
            self._portable.release()
            return
        if self._fd is not None:
            if self._keep_open:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:
                self._close_unless_kept()  # closing the only descriptor releases the lock

    def close(self) -> None:
        """Release and close the descriptor (a kept one too)."""
        self.release()
        fd, self._fd = self._fd, None
        if fd is not None and self._fd_pid == os.getpid():
            os.close(fd)

    def __enter__(self) -> FileMutex:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- POSIX -------------------------------------------------------------------------
    def _descriptor(self) -> int:
        if self._fd is not None and self._fd_pid == os.getpid():
            return self._fd
        # A descriptor inherited through fork() is the parent's open file description, and
        # with it the parent's lock: this process needs its own (the inherited one is left
        # open, it is the parent's to close).
        self._fd = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        except FileNotFoundError:
            make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        self._fd, self._fd_pid = fd, os.getpid()
        return fd

    def _close_unless_kept(self) -> None:
        if self._keep_open:
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @staticmethod
    def _try_until(fd: int, deadline: float) -> bool:
        pause = _FIRST_POLL
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(_LONGEST_POLL, pause * 2)
