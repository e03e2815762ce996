"""storage/flock.py: FileMutex excludes other processes, dies with its holder, times out, and a
forked child never shares its parent's lock."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stsync.storage import flock
from stsync.storage.flock import FileMutex

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stsync.storage.flock import FileMutex
    lock = FileMutex(Path(sys.argv[1]))
    assert lock.acquire(timeout=10)
    print("held", flush=True)
    time.sleep(60)
    """
)


def _hold_in_child(path: Path) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


@pytest.mark.parametrize("keep_open", [False, True])
def test_another_process_holding_it_makes_a_wait_time_out_until_it_dies(tmp_path, keep_open):
    path = tmp_path / "locks" / "x.lock"
    child = _hold_in_child(path)
    mutex = FileMutex(path, keep_open=keep_open)
    try:
        started = time.monotonic()
        assert mutex.acquire(timeout=0.3) is False
        assert time.monotonic() - started >= 0.25
        assert not mutex.is_held
        assert mutex.acquire(timeout=0) is False
    finally:
        _kill(child)
    assert mutex.acquire(timeout=5)  # the dead holder's lock went with it
    mutex.release()
    mutex.close()


def test_two_mutexes_on_one_file_exclude_each_other_and_release_lets_the_other_in(tmp_path):
    path = tmp_path / "x.lock"
    first, second = FileMutex(path), FileMutex(path, keep_open=True)
    assert first.acquire()
    assert second.acquire(timeout=0.05) is False
    first.release()
    assert second.acquire(timeout=1)
    assert first.acquire(timeout=0.05) is False
    second.release()
    assert first.acquire(timeout=0)
    first.release()
    second.close()


def test_acquiring_twice_is_a_bug_not_a_deadlock(tmp_path):
    mutex = FileMutex(tmp_path / "x.lock")
    mutex.acquire()
    with pytest.raises(RuntimeError):
        mutex.acquire(timeout=0)
    mutex.release()


def test_the_lock_file_is_private_and_only_a_kept_mutex_keeps_a_descriptor(tmp_path):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts descriptors through /proc")
    previous = os.umask(0o022)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for n in range(20):
            with FileMutex(tmp_path / "keys" / f"{n}.lock"):
                pass
        assert len(os.listdir("/proc/self/fd")) == before
        kept = FileMutex(tmp_path / "kept.lock", keep_open=True)
        with kept:
            pass
        assert len(os.listdir("/proc/self/fd")) == before + 1
        kept.close()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys" / "0.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


def _in_forked_child(mutex: FileMutex, parent_holds_at_fork: bool) -> bytes:
    """Whether a forked child can take the lock while its parent holds it: "waited" or "got"."""
    mutex.acquire()
    if not parent_holds_at_fork:
        mutex.release()  # the kept descriptor stays open and is inherited unlocked
    go_read, go_write = os.pipe()
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.read(go_read, 1)  # the parent holds the lock now
            got = mutex.acquire(timeout=0.2)
            os.write(answer_write, b"got" if got else b"waited")
        finally:
            os._exit(0)
    try:
        if not parent_holds_at_fork:
            mutex.acquire()
        os.write(go_write, b"x")
        return os.read(answer_read, 16)
    finally:
        for fd in (go_read, go_write, answer_read, answer_write):
            os.close(fd)
        os.waitpid(pid, 0)
        mutex.release()
        mutex.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
@pytest.mark.parametrize("parent_holds_at_fork", [True, False])
def test_a_forked_child_does_not_share_its_parents_kept_lock(tmp_path, parent_holds_at_fork):
    # The child inherits the parent's descriptor — the same open file description, so the same
    # flock: locking through it would "succeed" while the parent holds the lock.
    mutex = FileMutex(tmp_path / "x.lock", keep_open=True)
    assert _in_forked_child(mutex, parent_holds_at_fork) == b"waited"


def test_the_portable_fallback_excludes_the_flock_one(tmp_path, monkeypatch):
    # Where fcntl is missing (Windows) filelock does the job; on POSIX filelock uses flock too,
    # so the two kinds exclude each other on one file.
    path = tmp_path / "x.lock"
    monkeypatch.setattr(flock, "PORTABLE", True)
    portable = FileMutex(path)
    monkeypatch.setattr(flock, "PORTABLE", False)
    native = FileMutex(path)
    assert portable.acquire(timeout=1)
    assert native.acquire(timeout=0.05) is False
    portable.release()
    assert native.acquire(timeout=1)
    assert portable.acquire(timeout=0.05) is False
    native.release()
    assert portable.acquire(timeout=0)
    portable.release()
