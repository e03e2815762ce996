"""Kill a CLI subprocess at a point of its *work*, not of the wall clock.

A kill test that sleeps a random time before SIGKILL lands wherever the machine's load puts
it: on a busy CI runner every kill can fall inside interpreter start-up, and the test no
longer proves what it claims. Here the kill waits until the sandbox has answered a number of
the process's own writes (requests counted from the moment it was started), so the kills land
along the run whatever the load; a target of 0 kills during start-up on purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any


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
