"""`stsync --version` wall time ÷ `python -c "import httpx"` (target ≤ 2.0).

Both are measured as whole processes, interleaved, best of N (the minimum is the least
disturbed by the machine's other work).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _best(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


def measure(runs: int = 15) -> dict:
    stsync = shutil.which("stsync", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    version_cmd = [stsync, "--version"] if stsync else [sys.executable, "-m", "stsync", "--version"]
    httpx_cmd = [sys.executable, "-c", "import httpx"]
    _best(version_cmd, 2), _best(httpx_cmd, 2)  # warm the page cache and .pyc files
    stsync_s = _best(version_cmd, runs)
    httpx_s = _best(httpx_cmd, runs)
    return {"stsync_version_s": stsync_s, "import_httpx_s": httpx_s, "ratio": stsync_s / httpx_s, "target": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    result = measure(parser.parse_args().runs)
    print(f"stsync --version {result['stsync_version_s'] * 1000:.0f} ms ÷ import httpx "
          f"{result['import_httpx_s'] * 1000:.0f} ms = {result['ratio']:.2f} (target ≤ 2.0)")


if __name__ == "__main__":
    main()
