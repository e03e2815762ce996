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

A state directory this machine cannot use — a file where a directory should be, no permission,
a read-only file system, a full disk — is ``StateUnusable`` (exit 3), never a traceback:
``make_private_dir`` raises it, and ``state_unusable(exc)`` words any other ``OSError`` of the
kind (the CLI's last resort for a write deep inside a run).
"""

from __future__ import annotations

import errno
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import platformdirs

from stsync import envvars
from stsync.errors import StateUnusable

APP = "stsync"
DEFAULT_CONNECTION = "default"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


# The errors of a machine that cannot keep files, as opposed to a bug: (reason, what it is).
MACHINE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOTDIR: ("not_a_directory", "a file is where a directory should be"),
    errno.EEXIST: ("not_a_directory", "a file is where a directory should be"),
    errno.EACCES: ("permission", "permission denied"),
    errno.EPERM: ("permission", "permission denied"),
    errno.EROFS: ("read_only", "the file system is read-only"),
    errno.ENOSPC: ("disk_full", "the disk is full (no space left on the device)"),
    errno.EDQUOT: ("disk_full", "the disk quota is exhausted"),
    errno.EIO: ("os_error", "input/output error (a failing disk?)"),
}


def is_machine_error(exc: BaseException) -> TypeGuard[OSError]:
    """An ``OSError`` saying the machine cannot keep a file (see ``MACHINE_ERRNOS``)."""
    return isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS


def state_unusable(exc: OSError, path: os.PathLike[str] | str | None = None) -> StateUnusable:
    """``exc`` (an ``OSError`` of ``MACHINE_ERRNOS``) worded for a person: the path, the reason,
    and the way out for that reason."""
    where = Path(os.fspath(path) if path is not None else (exc.filename or "?"))
    reason, what = MACHINE_ERRNOS.get(exc.errno or 0, ("os_error", exc.strerror or str(exc)))
    return unusable(where, reason, what)


def unusable(where: Path, reason: str, what: str | None = None) -> StateUnusable:
    """``StateUnusable`` for ``where`` and a reason of ``MACHINE_ERRNOS`` (``what`` says it in
    words; the reason's own words by default)."""
    what = what or next((words for key, words in MACHINE_ERRNOS.values() if key == reason), reason)
    elsewhere = f"set {envvars.STATE_DIR.name} to a directory this user can write"
    if reason == "not_a_directory":
        blocking = _first_non_directory(where) or where
        what = f"{blocking} is a file, not a directory"
        hint = f"move {blocking} aside, or {elsewhere}"
    elif reason == "permission":
        hint = f"give this user write access (`ls -ld {where}`; chown, or chmod u+rwx), or {elsewhere}"
    elif reason == "read_only":
        hint = f"remount it read-write, or {elsewhere} on a writable disk"
    elif reason == "disk_full":
        hint = f"free space on that disk (`df -h {where}`), or {elsewhere} on another disk"
    else:
        hint = f"check the disk and the permissions, or {elsewhere}"
    return StateUnusable(f"stsync cannot write in {where}: {what}", path=str(where), reason=reason, hint=hint)


def _first_non_directory(path: Path) -> Path | None:
    """The first existing component of ``path`` that is not a directory (the file in the way)."""
    for candidate in (*reversed(path.parents), path):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and each missing parent 0700; existing directories are left as they are.

    ``mkdir(parents=True, mode=0o700)`` gives only the last directory that mode: the parents
    (the state root on a first run) would get the umask's, typically 0755. A path this machine
    cannot make (or that is a file) is ``StateUnusable``.
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
            if not directory.is_dir():
                raise unusable(Path(path), "not_a_directory") from None
            # another process made it first
        except OSError as exc:
            raise state_unusable(exc, path) from None
    if not Path(path).is_dir():
        raise unusable(Path(path), "not_a_directory")
    return Path(path)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file (a leftover with a laxer mode is made 0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if hasattr(os, "fchmod"):  # not on Windows before 3.13, where modes mean little anyway
                os.fchmod(handle.fileno(), PRIVATE_FILE)
            handle.write(text)
    except OSError as exc:
        if exc.filename is None:  # a write or close says ENOSPC without naming the file
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from exc
        raise


def no_space_left(path: Path) -> bool:
    """The file system holding ``path`` has no block left for this user (SQLite reports a
    write there as a plain I/O error)."""
    try:
        return os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


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
        """The state directory, made if missing; ``StateUnusable`` when this machine cannot
        write in it (a file, no permission, a read-only file system)."""
        state = make_private_dir(self.state)
        if not os.access(state, os.W_OK | os.X_OK):
            # access() answers EROFS for root too, whose writes a mode would not stop.
            probe = OSError(errno.EROFS if read_only_fs(state) else errno.EACCES, "cannot write", str(state))
            raise state_unusable(probe, state)
        return state

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
