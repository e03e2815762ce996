"""Where a connection's files live (SPEC §2).

A *connection* is named after its config file: the default config is ``default``;
``--config acme.toml`` is ``acme``. Its state (ledger, locks, cached token, rate-limit
budget, logs, optional secrets file) lives in ``<state dir>/<connection>/``.

Everything stsync creates there is its owner's only, whatever the umask: directories 0700
(``make_private_dir``), files 0600 (``write_private_text``, ``PRIVATE_FILE`` for the modules that
open their own). Modes are set at creation, so no file is ever briefly readable by others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from stsync import envvars

APP = "stsync"
DEFAULT_CONNECTION = "default"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and each missing parent 0700; existing directories are left as they are.

    ``mkdir(parents=True, mode=0o700)`` gives only the last directory that mode: the parents
    (the state root on a first run) would get the umask's, typically 0755.
    """
    missing: list[Path] = []
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass  # another process made it first
    return Path(path)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file (a leftover with a laxer mode is made 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        if hasattr(os, "fchmod"):  # not on Windows before 3.13, where modes mean little anyway
            os.fchmod(handle.fileno(), PRIVATE_FILE)
        handle.write(text)


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config`` wins, then ``STSYNC_CONFIG``, then the platform default (a blank one is unset)."""
    chosen = envvars.resolve(envvars.CONFIG, option=os.fspath(explicit) if explicit else None)
    return Path(chosen).expanduser() if chosen else default_config_path()


def connection_name(config_path: Path) -> str:
    if config_path.expanduser().resolve() == default_config_path().resolve():
        return DEFAULT_CONNECTION
    stem = config_path.stem
    return stem if stem and stem != "config" else DEFAULT_CONNECTION


def state_root() -> Path:
    """``STSYNC_STATE_DIR``, else the platform's state directory."""
    chosen = envvars.read(envvars.STATE_DIR)
    return Path(chosen).expanduser() if chosen else Path(platformdirs.user_state_dir(APP))


@dataclass(frozen=True)
class ConnectionPaths:
    """Every file of one connection. Directories are created on first use, 0700."""

    name: str
    config: Path
    state: Path

    @classmethod
    def for_config(cls, config_path: Path) -> ConnectionPaths:
        name = connection_name(config_path)
        return cls(name=name, config=config_path, state=state_root() / name)

    def ensure_state(self) -> Path:
        return make_private_dir(self.state)

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.sqlite3"

    @property
    def token_cache(self) -> Path:
        return self.state / "servicetitan-token.json"

    @property
    def secrets_file(self) -> Path:
        return self.state / "secrets.json"

    @property
    def log_file(self) -> Path:
        return self.state / "stsync.log"

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    def lock_file(self, job: str) -> Path:
        return self.locks / f"{job}.lock"

    def rate_file(self, service: str) -> Path:
        """The service's rate-limit budget, shared by every process: the spacing, the
        slow-down, and for Referral Factory the 429 episodes and the cool-down."""
        return self.locks / f"rate-{service}.json"

    @property
    def search_shape_file(self) -> Path:
        """What Referral Factory's user search accepted (``referralfactory.search_shape``)."""
        return self.state / "referral-factory-search.json"
