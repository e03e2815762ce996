"""storage/locks.py: the run lock (exit 7, naming the holder) and the striped key locks."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from stsync.errors import LockHeld, TemporaryError
from stsync.storage.locks import KEY_STRIPES, KeyLock, RunLock, holder, stripe_for
from stsync.storage.paths import ConnectionPaths


@pytest.fixture
def paths(tmp_path) -> ConnectionPaths:
    return ConnectionPaths.for_config(tmp_path / "acme.toml")


def _sidecar(paths: ConnectionPaths, job: str) -> Path:
    return paths.locks / f"{job}.json"


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stsync.storage.paths import ConnectionPaths
    from stsync.storage.locks import KeyLock, RunLock
    paths = ConnectionPaths.for_config(Path(sys.argv[1]))
    kind, name = sys.argv[2], sys.argv[3]
    lock = RunLock(paths, name, command="sync-customers --ongoing") if kind == "run" else KeyLock(paths, name)
    with lock:
        print("held", flush=True)
        time.sleep(60)
    """
)


def _hold_in_child(paths: ConnectionPaths, kind: str, name: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(paths.config), kind, name], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


# -- RunLock -------------------------------------------------------------------------------
def test_run_lock_writes_and_removes_its_sidecar(paths):
    assert holder(paths, "sync") is None
    with RunLock(paths, "sync", command="sync-customers --once") as lock:
        assert lock.is_held
        info = json.loads(_sidecar(paths, "sync").read_text())
        assert info["pid"] == os.getpid() and info["command"] == "sync-customers --once"
        assert info["started_at"].endswith("Z")
        assert holder(paths, "sync") == info
        assert paths.lock_file("sync").exists()
    assert not _sidecar(paths, "sync").exists()
    assert holder(paths, "sync") is None


def test_run_lock_files_and_directories_are_private_whatever_the_umask(paths):
    previous = os.umask(0o022)
    try:
        with RunLock(paths, "sync", command="sync-customers --once"):
            modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (paths.lock_file("sync"), _sidecar(paths, "sync"))}
            modes |= {p: stat.S_IMODE(p.stat().st_mode) for p in (paths.locks, paths.state, paths.state.parent)}
    finally:
        os.umask(previous)
    assert modes == {
        paths.lock_file("sync"): 0o600, _sidecar(paths, "sync"): 0o600,
        paths.locks: 0o700, paths.state: 0o700, paths.state.parent: 0o700,
    }  # fmt: skip


def test_second_run_lock_gets_lock_held(paths):
    with RunLock(paths, "push", command="push-lead --new"):
        with pytest.raises(LockHeld) as caught:
            RunLock(paths, "push", command="push-lead --new").acquire()
        error = caught.value
        assert error.exit_code == 7
        assert f"pid {os.getpid()}" in str(error) and "`push-lead --new`" in str(error)
        assert "acme" in str(error) and f"kill {os.getpid()}" in error.hint
        assert error.holder["pid"] == os.getpid()
        # Other jobs of the same connection are independent.
        with RunLock(paths, "qualify", command="qualify"):
            pass
    with RunLock(paths, "push", command="push-lead --new"):
        pass  # free again


def test_run_lock_is_released_when_the_body_raises(paths):
    with pytest.raises(RuntimeError, match="the body failed"):
        with RunLock(paths, "sync", command="sync-customers"):
            raise RuntimeError("the body failed")
    with RunLock(paths, "sync", command="sync-customers"):
        pass


def test_run_lock_rejects_odd_job_names(paths):
    with pytest.raises(ValueError):
        RunLock(paths, "../etc", command="x")


def test_run_lock_held_by_another_process_names_its_pid(paths):
    child = _hold_in_child(paths, "run", "sync")
    try:
        with pytest.raises(LockHeld) as caught:
            with RunLock(paths, "sync", command="sync-customers"):
                pass
        assert f"pid {child.pid}" in str(caught.value)
        assert "`sync-customers --ongoing`" in str(caught.value)
        info = holder(paths, "sync")
        assert info["pid"] == child.pid and info["command"] == "sync-customers --ongoing"
    finally:
        _kill(child)
    # kill -9 leaves the sidecar behind, but the OS released the lock: nobody holds it.
    assert _sidecar(paths, "sync").exists()
    assert holder(paths, "sync") is None
    with RunLock(paths, "sync", command="sync-customers") as lock:
        assert holder(paths, "sync")["pid"] == os.getpid() == lock.info["pid"]


def test_lock_held_without_a_sidecar_still_says_what_to_do(paths):
    child = _hold_in_child(paths, "run", "serve")
    try:
        _sidecar(paths, "serve").unlink()
        with pytest.raises(LockHeld) as caught:
            RunLock(paths, "serve", command="serve").acquire()
        assert "in progress" in str(caught.value) and str(paths.lock_file("serve")) in caught.value.hint
    finally:
        _kill(child)


# -- KeyLock -------------------------------------------------------------------------------
def test_key_locks_are_striped_files(paths):
    assert all(0 <= stripe_for(f"booking:{n}") < KEY_STRIPES for n in range(500))
    assert len({stripe_for(f"booking:{n}") for n in range(2000)}) == KEY_STRIPES
    with KeyLock(paths, "booking:ABC") as lock:
        assert lock.path.parent == paths.locks / "keys"
        assert lock.path.name == f"{stripe_for('booking:ABC'):02x}.lock"


def _colliding_keys() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for n in range(10_000):
        key = f"customer:{n}"
        stripe = stripe_for(key)
        if stripe in seen:
            return seen[stripe], key
        seen[stripe] = key
    raise AssertionError("no collision")


def test_one_thread_may_hold_two_keys_of_the_same_stripe(paths):
    first, second = _colliding_keys()
    with KeyLock(paths, first, timeout=1):
        with KeyLock(paths, second, timeout=1):
            pass


def test_key_lock_serialises_threads(paths):
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most_inside
        for _ in range(5):
            with KeyLock(paths, "booking:SAME"):
                with guard:
                    inside += 1
                    most_inside = max(most_inside, inside)
                time.sleep(0.002)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_inside == 1


def test_key_lock_waits_for_another_process_then_times_out(paths):
    child = _hold_in_child(paths, "key", "booking:XYZ")
    try:
        started = time.monotonic()
        with pytest.raises(TemporaryError) as caught:
            KeyLock(paths, "booking:XYZ", timeout=0.3).acquire()
        assert time.monotonic() - started >= 0.25
        assert "booking:XYZ" in str(caught.value) and caught.value.exit_code == 6
    finally:
        _kill(child)
    with KeyLock(paths, "booking:XYZ", timeout=5):
        pass  # the dead holder's lock went with it
