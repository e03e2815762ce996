"""OS file locks: one run of a job per connection, and one writer per record key.

``RunLock`` keeps cron from starting a second ``sync`` while one still runs (exit 7, naming the
holder). ``KeyLock`` is held around check → create → record of one externalId or one customer,
so two processes (push-lead --new in cron and ``serve`` receiving the same lead) never create
the same booking or referrer. Both are ``FileMutex`` locks (``flock`` on POSIX,
``storage.flock``): the kernel drops them when the holder dies, so a kill -9 never leaves a
stale lock behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from stsync.errors import LockHeld, TemporaryError
from stsync.storage.flock import FileMutex
from stsync.storage.paths import ConnectionPaths, make_private_dir, write_private_text

KEY_STRIPES = 256
DEFAULT_KEY_TIMEOUT = 300.0  # longer than one record's remote calls within the retry budget
_JOB_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def _sidecar(paths: ConnectionPaths, job: str) -> Path:
    return paths.locks / f"{job}.json"


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write_private_text(temp, json.dumps(data))
    os.replace(temp, path)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie (same machine)."""
    if not pid or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    try:  # a killed child not yet reaped still answers kill(0); Linux tells us it is dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def holder(paths: ConnectionPaths, job: str) -> dict[str, Any] | None:
    """Who holds ``job``'s lock now: ``{"pid", "command", "started_at", "host"}``, or None.

    Read from the sidecar the holder writes; a sidecar left by a process that died (kill -9:
    the OS released its lock) is ignored. Never touches the lock itself, so asking (diagnose)
    cannot make a starting run fail.
    """
    info = _read_sidecar(_sidecar(paths, job))
    if not info:
        return None
    if info.get("host") not in (None, socket.gethostname()):
        return info  # another machine sharing the state dir: we cannot check its pid
    return info if pid_alive(info.get("pid")) else None


class RunLock:
    """``with RunLock(paths, "sync", command="sync-customers --ongoing"):`` — or LockHeld (exit 7)."""

    def __init__(self, paths: ConnectionPaths, job: str, *, command: str) -> None:
        if not _JOB_NAME.match(job):
            raise ValueError(f"bad job name {job!r}")
        self.paths = paths
        self.job = job
        self.command = command
        self._lock: FileMutex | None = None
        self.info: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        if self._lock is not None:
            raise RuntimeError(f"the {self.job} lock is already held by this object")
        make_private_dir(self.paths.locks)
        lock = FileMutex(self.paths.lock_file(self.job))
        if not lock.acquire(timeout=0):
            raise self._held()
        self._lock = lock
        self.info = {
            "pid": os.getpid(),
            "command": self.command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
        }
        try:
            _write_json_atomically(_sidecar(self.paths, self.job), self.info)
        except OSError:
            pass  # the lock is what matters; the sidecar only names the holder
        return self

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        # Remove our sidecar before unlocking: after the unlock it may already be the next holder's.
        sidecar = _sidecar(self.paths, self.job)
        if (_read_sidecar(sidecar) or {}).get("pid") == os.getpid():
            sidecar.unlink(missing_ok=True)
        lock.release()

    @property
    def is_held(self) -> bool:
        return self._lock is not None

    def _held(self) -> LockHeld:
        info = None
        # The holder writes its sidecar just after it gets the lock: give it a moment.
        for _ in range(10):
            info = holder(self.paths, self.job)
            if info:
                break
            time.sleep(0.02)
        if info:
            message = (
                f"another `{self.job}` run of connection '{self.paths.name}' is in progress: "
                f"pid {info.get('pid')}, `{info.get('command')}`, started {info.get('started_at')}"
            )
            hint = f"wait for it to finish (or stop it: kill {info.get('pid')}); the lock goes away with the process"
        else:
            message = f"another `{self.job}` run of connection '{self.paths.name}' is in progress"
            hint = f"wait for it to finish; its lock is {self.paths.lock_file(self.job)}"
        return LockHeld(message, hint=hint, holder=info)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _Stripe:
    """One striped lock file, shared by every KeyLock of this process that hashes to it.

    The thread lock serialises threads (and lets one thread re-enter, e.g. a customer's key
    inside an e-mail's key of the same stripe, without deadlocking on its own flock); the file
    lock serialises processes. It is a ``FileMutex`` (``flock`` on a descriptor opened for the
    holding): a push takes one per lead, and ``filelock``'s wrapper cost ten times as much.
    """

    def __init__(self, path: Path) -> None:
        self.thread_lock = threading.RLock()
        self.file_lock = FileMutex(path)
        self.depth = 0


_stripes: dict[tuple[Path, int], _Stripe] = {}
_stripes_guard = threading.Lock()


def stripe_for(key: str) -> int:
    return hashlib.sha256(key.encode("utf-8")).digest()[0] % KEY_STRIPES


class KeyLock:
    """``with KeyLock(paths, f"booking:{external_id}"):`` check → create → record, alone."""

    def __init__(self, paths: ConnectionPaths, key: str, *, timeout: float = DEFAULT_KEY_TIMEOUT) -> None:
        self.paths = paths
        self.key = key
        self.timeout = timeout
        self.stripe = stripe_for(key)
        self._stripe: _Stripe | None = None

    @property
    def path(self) -> Path:
        return self.paths.locks / "keys" / f"{self.stripe:02x}.lock"

    def acquire(self) -> KeyLock:
        stripe = self._stripe_of_process()
        deadline = time.monotonic() + self.timeout
        if not stripe.thread_lock.acquire(timeout=self.timeout):
            raise self._busy()
        try:
            if stripe.depth == 0 and not stripe.file_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise self._busy()
        except BaseException:
            stripe.thread_lock.release()
            raise
        stripe.depth += 1
        self._stripe = stripe
        return self

    def _stripe_of_process(self) -> _Stripe:
        # Keyed by the connection's state dir and the stripe number: no path is built per lock.
        place = (self.paths.state, self.stripe)
        stripe = _stripes.get(place)
        if stripe is None:
            with _stripes_guard:
                stripe = _stripes.get(place)
                if stripe is None:
                    stripe = _stripes[place] = _Stripe(self.path)
        return stripe

    def release(self) -> None:
        stripe, self._stripe = self._stripe, None
        if stripe is None:
            return
        stripe.depth -= 1
        if stripe.depth == 0:
            stripe.file_lock.release()
        stripe.thread_lock.release()

    def _busy(self) -> TemporaryError:
        return TemporaryError(
            f"another stsync process kept {self.key} busy for {self.timeout:.0f} s",
            hint="another run is working on the same record; try again when it has finished",
        )

    def __enter__(self) -> KeyLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
