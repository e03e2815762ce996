"""Which config file owns which connection name: one config file, one connection.

A connection's name (``storage/paths.py``) names its state directory — ledger, locks, cached
token — and its keyring entries. Two config files going by one name would share all of it:
one's ``connect`` would overwrite the other's secrets, one's ``history`` would show the
other's pushes. The registry, ``<state dir>/connections.json``, records the config file that
owns each name, and refuses a second one.

Guarantees:

- ``claim(paths)`` records ``paths.config`` (resolved, absolute) as the owner of
  ``paths.name``, or raises ``ConnectionInUse`` (exit 3, both paths named) when another config
  file owns it *and still goes by that name*. An owner that is gone (moved, renamed, deleted)
  or now goes by another name is stale: the claimant takes its place and keeps what the entry
  knew (a moved config is the same connection).
- The registry also remembers where ``connect`` stored the connection's secrets
  (``secrets_of``: ``"keyring"``, ``"file"``, ``None`` once disconnected or when nothing was
  stored, ``UNKNOWN`` for a connection no ``connect`` of this version has recorded) — what lets
  stsync say "not connected" instead of blaming a locked keyring that holds nothing.
- Reads and writes hold an OS file lock; the file is written atomically, 0600, in the state
  root (0700). A damaged registry is a ``ConfigError`` naming the file: it is never silently
  replaced, since it is what keeps two connections apart.

Migration: a config file without a ``connection`` key (written before the key existed) goes
by its stem, as before, and claims that name the first time any command uses it; ``connect``
then writes the key. So an existing connection keeps its state directory and keyring entries;
the second of two ``config.toml`` files is refused with both paths and the fix
(``stsync connect --connection NAME``, or renaming the file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout

from stsync.errors import ConfigError, ConnectionInUse
from stsync.logs import get_logger
from stsync.storage.paths import (
    PRIVATE_FILE,
    ConnectionPaths,
    connection_name,
    is_machine_error,
    make_private_dir,
    read_config_identity,
    state_root,
    state_unusable,
)

log = get_logger(__name__)

REGISTRY_FILE = "connections.json"
UNKNOWN: Final = "unknown"  # where the secrets are: no connect of this version has said
LOCK_TIMEOUT_SECONDS = 30


def registry_path(root: Path | None = None) -> Path:
    return (root or state_root()) / REGISTRY_FILE


def _resolved(path: Path) -> str:
    return str(Path(path).expanduser().resolve())


def goes_by(config_path: Path) -> str:
    """The name a config file goes by today: its ``connection`` key, else its stem."""
    return read_config_identity(config_path).connection or connection_name(config_path)


def _still_claims(owner: str, name: str) -> bool:
    """Whether the registered owner still exists and still goes by ``name``."""
    path = Path(owner)
    try:
        if not path.is_file():
            return False
    except OSError:
        return True  # cannot tell: keep the owner (refusing is safe, sharing is not)
    return goes_by(path) == name


class Registry:
    """The registry of one state root (``STSYNC_STATE_DIR`` or the platform's)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or state_root()
        self.path = registry_path(self.root)

    # -- file -------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The entries, under the lock; what the block leaves in them is written back."""
        make_private_dir(self.root)
        try:
            with FileLock(self.root / f".{REGISTRY_FILE}.lock", timeout=LOCK_TIMEOUT_SECONDS, mode=PRIVATE_FILE):
                entries = self._read()
                before = json.dumps(entries, sort_keys=True)
                yield entries
                if json.dumps(entries, sort_keys=True) != before:
                    self._write(entries)
        except Timeout:
            raise ConfigError(
                f"the connection registry {self.path} is locked by another stsync process for too long",
                hint="retry in a moment",
            ) from None
        except OSError as exc:
            if is_machine_error(exc):  # a full disk, read-only, a file in the way: the machine's, worded as such
                raise state_unusable(exc, self.root) from None
            raise ConfigError(
                f"cannot use the connection registry {self.path}: {exc.strerror or exc}",
                hint="check that the state directory is writable (STSYNC_STATE_DIR)",
            ) from None

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            entries = data["connections"]
            if not isinstance(entries, dict) or not all(
                isinstance(entry, dict) and isinstance(entry.get("config"), str) for entry in entries.values()
            ):
                raise ValueError("not a registry")
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"the connection registry {self.path} is damaged",
                hint="restore it from a backup, or delete it: each config file claims its name again on its next "
                "command (check then that no two config files share a `connection` name)",
            ) from None
        return entries

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "connections": entries}, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    # -- queries ----------------------------------------------------------------------
    def owner(self, name: str) -> str | None:
        """The config file (absolute) that owns ``name``, or None."""
        entry = self._read_quietly().get(name)
        return entry["config"] if entry else None

    def secrets_of(self, name: str) -> str | None:
        """Where ``connect`` stored the connection's secrets: "keyring", "file", None (nothing
        stored: never, or disconnected since), or ``UNKNOWN``."""
        entry = self._read_quietly().get(name)
        if entry is None or "secrets" not in entry:
            return UNKNOWN
        return entry["secrets"]

    def _read_quietly(self) -> dict[str, dict[str, Any]]:
        """The entries for a question asked on the way (a secret lookup): unreadable = none."""
        try:
            return self._read()
        except (ConfigError, OSError):
            return {}

    # -- changes ----------------------------------------------------------------------
    def conflict(self, name: str, config_path: Path) -> str | None:
        """The other config file that owns ``name`` and still goes by it, or None."""
        entry = self._read().get(name)
        if entry is None or entry["config"] == _resolved(config_path):
            return None
        return entry["config"] if _still_claims(entry["config"], name) else None

    def claim(self, paths: ConnectionPaths) -> None:
        """Record ``paths.config`` as the owner of ``paths.name``; ``ConnectionInUse`` when
        another config file owns it and still goes by it."""
        me = _resolved(paths.config)
        with self._locked() as entries:
            entry = entries.get(paths.name)
            if entry is not None and entry["config"] == me:
                return
            if entry is not None and _still_claims(entry["config"], paths.name):
                raise ConnectionInUse(paths.name, owner=entry["config"], config=me)
            if entry is not None:
                log.info("connection %s: %s took over from %s (gone or renamed)", paths.name, me, entry["config"])
            entries[paths.name] = {**(entry or {}), "config": me}

    def record_secrets(self, paths: ConnectionPaths, store: str | None) -> None:
        """Where the secrets are now (``connect``: the store or None; ``disconnect``: None)."""
        me = _resolved(paths.config)
        with self._locked() as entries:
            entry = entries.get(paths.name)
            if entry is not None and entry["config"] != me and _still_claims(entry["config"], paths.name):
                raise ConnectionInUse(paths.name, owner=entry["config"], config=me)
            entries[paths.name] = {**(entry or {}), "config": me, "secrets": store}

    def release(self, name: str, config_path: Path) -> None:
        """Forget ``name`` if ``config_path`` owns it (the config now goes by another name)."""
        me = _resolved(config_path)
        with self._locked() as entries:
            if entries.get(name, {}).get("config") == me:
                del entries[name]
