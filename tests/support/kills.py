"""Kill a CLI subprocess at a point of its *work*, not of the wall clock.

A kill test that sleeps a random time before SIGKILL lands wherever the machine's load puts
it: on a busy CI runner every kill can fall inside interpreter start-up, and the test no
longer proves what it claims. Here the kill waits until the sandbox has answered a number of
the process's own writes (requests counted from the moment it was started), so the kills land
along the run whatever the load; a target of 0 kills during start-up on purpose.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())  # the syscall's number
CAN_SIGNAL_A_THREAD = _TGKILL is not None and Path("/proc/self/task").is_dir()


def kill_after_requests(
    process: subprocess.Popen[Any],
    sandbox: Any,
    target: int,
    *,
    method: str | None = None,
    service: str | None = None,
    timeout: float = 60.0,
) -> bool:
    """SIGKILL ``process`` once the sandbox has seen ``target`` more matching requests than when
    it was started (call right after ``Popen``). Returns True when the kill interrupted a
    running process, False when it had already exited (it finished its work first)."""
    start = sandbox.count_requests(method=method, service=service)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if sandbox.count_requests(method=method, service=service) - start >= target:
            break
        time.sleep(0.002)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    return True


def signal_another_thread(pid: int, signum: int) -> int:
    """``signum`` to one thread of ``pid`` other than its main thread (tgkill(2)), as the kernel
    may hand a signal sent to the process to any thread that does not block it; returns that
    thread's id. A main thread blocked in an unbounded wait never runs the Python handler then."""
    threads = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    if not threads:
        raise AssertionError(f"process {pid} has no thread besides its main one")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_TGKILL, pid, threads[0], signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {threads[0]}, {signum})")
    return threads[0]
