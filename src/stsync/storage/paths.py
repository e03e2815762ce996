"""Where a connection's files live (SPEC §2).

A *connection* is one config file. Its name is the config's ``connection`` key, which
``stsync connect`` writes (unique per config file: ``storage/registry.py`` refuses a second
file claiming it); a config without the key — written before the key existed, or by hand — is
named after its file, as it always was: the default config and any ``config.toml`` are
``default``, ``--config acme.toml`` is ``acme``. The name names the state directory
``<state dir>/<connection>/`` (ledger, locks, cached token, rate-limit budget, logs, optional
secrets file) and the keyring entries. ``ConnectionPaths`` also carries the config's
``[secrets] store``, so that every reader of the secrets uses the store ``connect`` chose.

Everything stsync creates there is its owner's only, whatever the umask: directories 0700
(``make_private_dir``), files 0600 (``write_private_text``, ``PRIVATE_FILE`` for the modules that
open their own). Modes are set at creation, so no file is ever briefly readable by others.
"""

from __future__ import annotations

import os
import re
import tomllib
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


# A connection name is a directory name and part of a keyring username: plain characters only.
_CONNECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CONNECTION_NAME_RULE = "1–64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def valid_connection_name(name: str) -> bool:
    return bool(_CONNECTION_NAME.fullmatch(name))


def connection_name(config_path: Path) -> str:
    """The name a config file without a ``connection`` key goes by: its stem (``config`` and
    the default config are ``default``)."""
    if config_path.expanduser().resolve() == default_config_path().resolve():
        return DEFAULT_CONNECTION
    stem = config_path.stem
    return stem if stem and stem != "config" else DEFAULT_CONNECTION


def suggested_connection_name(config_path: Path) -> str:
    """``connection_name`` made a valid name (``my tenant.toml`` → ``my-tenant``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", connection_name(config_path)).strip("-._")[:64]
    return name if valid_connection_name(name) else DEFAULT_CONNECTION


@dataclass(frozen=True)
class ConfigIdentity:
    """What a config file says about its connection, read without validating the rest."""

    connection: str | None  # the ``connection`` key; None when absent (or the file is missing)
    secrets_store: str  # ``[secrets] store``; "keyring" when absent


_CONNECTION_LINE = re.compile(r'^\s*connection\s*=\s*"([^"\n]*)"\s*(?:#.*)?$', re.MULTILINE)


def read_config_identity(config_path: Path) -> ConfigIdentity:
    """The ``connection`` key and the secret store of a config file. Never raises: a file that
    is missing or unreadable has neither (loading it reports the problem); one that is not
    valid TOML still names its connection when its ``connection = "…"`` line is intact, so a
    typo elsewhere never makes a command use another connection's state."""
    try:
        text = Path(config_path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ConfigIdentity(None, "keyring")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        first_table = text.find("\n[")
        match = _CONNECTION_LINE.search(text, 0, first_table if first_table >= 0 else len(text))
        name = match.group(1) if match else None
        return ConfigIdentity(name if name and valid_connection_name(name) else None, "keyring")
    name = data.get("connection")
    secrets = data.get("secrets")
    store = secrets.get("store") if isinstance(secrets, dict) else None
    return ConfigIdentity(
        name if isinstance(name, str) and valid_connection_name(name) else None,
        store if store in ("keyring", "file") else "keyring",
    )


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
    secrets_store: str = "keyring"  # the config's [secrets] store: "keyring" or "file"

    @classmethod
    def for_config(cls, config_path: Path) -> ConnectionPaths:
        """The connection's files: named by the config's ``connection`` key, else its stem."""
        identity = read_config_identity(config_path)
        return cls.named(identity.connection or connection_name(config_path), config_path, secrets_store=identity.secrets_store)

    @classmethod
    def named(cls, name: str, config_path: Path, *, secrets_store: str = "keyring") -> ConnectionPaths:
        return cls(name=name, config=config_path, state=state_root() / name, secrets_store=secrets_store)

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
