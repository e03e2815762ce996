"""Installable as a tool (``pipx install`` / ``uv tool install``): the sdist and the wheel built
from it carry every file stsync needs, and the wheel, installed (not editable) into a fresh
virtual environment, runs ``stsync --version`` and the whole ``stsync demo``.

``python -m build`` makes the sdist and then the wheel *from the sdist*, so a file missing from
the sdist breaks the wheel too. ``--no-isolation`` uses the hatchling of the test extras: no
download while testing. The fresh environment gets stsync's dependencies from the package
index (pip's cache after the first run) and runs outside the checkout, without PYTHONPATH,
so nothing of the source tree or the test support can stand in for a missing file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import stsync

# ~16 s on an idle machine; resolving the dependencies from the index is most of it, and a
# busy machine can triple that: the suite's 120 s per test would be too tight.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "stsync"


def package_files() -> set[str]:
    """Every file of the package in the checkout, as ``stsync/…`` (no bytecode)."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120):
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)])
    [sdist] = dist.glob("stsync-*.tar.gz")
    [wheel] = dist.glob("stsync-*-py3-none-any.whl")
    assert sdist.name == f"stsync-{stsync.__version__}.tar.gz"

    expected = package_files()
    assert "stsync/sandbox/schemas/servicetitan.json" in expected  # the sandbox's data file
    with tarfile.open(sdist) as archive:
        top = f"stsync-{stsync.__version__}/"
        in_sdist = {name.removeprefix(top) for name in archive.getnames()}
    assert {f"src/{name}" for name in expected} <= in_sdist
    assert {"pyproject.toml", "README.md"} <= in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    assert expected <= in_wheel
    entry_points = zipfile.Path(wheel, f"stsync-{stsync.__version__}.dist-info/entry_points.txt").read_text()
    assert "stsync = stsync.cli.app:main" in entry_points

    venv = tmp_path / "tool-venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", str(wheel)], timeout=300)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The demo needs no keyring; a failing backend makes sure it never reaches a real one.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = run([str(python), "-c", "import stsync; print(stsync.__file__)"], env=env, cwd=elsewhere).stdout.strip()
    assert Path(imported).is_relative_to(venv), imported

    tool = venv / "bin" / "stsync"
    version = run([str(tool), "--version"], env=env, cwd=elsewhere)
    assert stsync.__version__ in version.stdout
    demo = run([str(tool), "--json", "demo", "--customers", "20", "--leads", "3"], env=env, cwd=elsewhere)
    report = json.loads(demo.stdout)
    assert report["ok"] is True and report["steps"], demo.stderr[-3000:]
    assert all(step["exit_code"] == 0 for step in report["steps"])
    assert report["summary"]["bookings"] == 3 and report["summary"]["qualified"] == 1
    assert "Traceback" not in demo.stderr
