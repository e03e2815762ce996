"""What every benchmark does around its measurement: a private environment for stsync as a
real process (``environment``), running it (``stsync``), and connecting it to the benchmark's
sandbox with ``[limits]`` matching the sandbox's (``connect``)."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def environment(workdir: Path, sandbox) -> dict[str, str]:
    """The child's environment: the sandbox's URLs, a private HOME/config/state, no keyring,
    and stsync's bytecode compiled (``_compile_stsync``)."""
    _compile_stsync()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STSYNC_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(
        HOME=str(workdir),
        XDG_CONFIG_HOME=str(workdir / "config"),
        XDG_STATE_HOME=str(workdir / "state-home"),
        XDG_DATA_HOME=str(workdir / "data"),
        XDG_CACHE_HOME=str(workdir / "cache"),
        STSYNC_CONFIG=str(workdir / "config.toml"),
        STSYNC_STATE_DIR=str(workdir / "state"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
        NO_COLOR="1",
    )
    env.update(sandbox.env())
    return env


def _compile_stsync() -> None:
    """stsync's modules compiled to bytecode, as an installed stsync has them (pip compiles at
    install time). Without it a container setting PYTHONDONTWRITEBYTECODE (this one does)
    compiles every stsync module in every measured run: about 0.1 s of CPU at startup."""
    import stsync

    compileall.compile_dir(Path(stsync.__file__).parent, quiet=1)


def stsync(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stsync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def checked(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    """``done``, or RuntimeError with the end of its stderr when it exited non-zero."""
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done


def connect(
    env: dict[str, str],
    sandbox,
    *,
    st_per_second: float,
    rf_per_minute: float,
    workers: int | None = None,
    edit: Callable[[Any], None] | None = None,
) -> Any:
    """``stsync connect`` to ``sandbox`` (file secret store), then the config's ``[limits]``
    set to the sandbox's rates (and ``workers`` when given) and ``edit`` applied to it; the
    config saved and returned."""
    from stsync.storage.config import load_config
    from stsync.storage.config_writer import save_config

    checked(stsync(env, *sandbox.connect_args(), "--secrets-store", "file", timeout=120), "connect")
    config_path = Path(env["STSYNC_CONFIG"])
    config = load_config(config_path)
    config.limits.servicetitan_per_second = st_per_second
    config.limits.referral_factory_per_minute = rf_per_minute
    if workers is not None:
        config.limits.workers = workers
    if edit is not None:
        edit(config)
    save_config(config, config_path)
    return config
