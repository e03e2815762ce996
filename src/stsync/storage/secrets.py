"""The connection's three secrets: environment → the store ``connect`` chose (SPEC §2).

Which secrets exist, and their variables and labels, is ``stsync.credentials``' table. Which
store the connection uses is the config's ``[secrets] store`` (``ConnectionPaths.secrets_store``),
written by ``stsync connect``.

- Environment variables (``STSYNC_ST_CLIENT_SECRET``, ``STSYNC_ST_APP_KEY``,
  ``STSYNC_RF_API_KEY``) always win: cron and containers set them. A blank one is unset.
- Whatever the store, a secret is read and stored without its surrounding whitespace or CR/LF
  (``credentials.clean``): a keyring entry or file value saved with a pasted newline works,
  and a blank one counts as missing.
- ``store = "keyring"`` (the default): the OS keyring (service ``stsync``, username
  ``<connection>/<name>``), then the file store (a connection from before the store was
  remembered may have its secrets there).
- ``store = "file"`` (``stsync connect --secrets-store file``, with a warning): the file
  ``<state>/secrets.json``, 0600, created 0600 atomically. The keyring is never consulted, so
  a locked or missing keyring cannot get in the way of a connection that does not use it.

When the keyring cannot be used (no Secret Service on a headless box, a locked collection, the
``fail``/``null`` backends) and a secret is in neither the environment nor the file, the error
names the three remedies; for a locked collection (``KeyringLocked``) unlocking it comes first,
with the command that does it — unless the connection registry knows nothing is stored (never
connected, or disconnected since): then the secret is simply missing, and ``require`` says
"not connected — run `stsync connect`". stsync never falls back to plain text on its own.

Every secret read or stored is registered with ``stsync.logs`` so that no log line can show
it; nothing here puts a value in a message, an exception or ``describe()``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Literal

from filelock import FileLock

from stsync import envvars
from stsync.credentials import SECRET_NAMES, SECRETS, clean, secret
from stsync.errors import ConfigError, SecretStoreUnavailable, UsageError
from stsync.logs import get_logger, redact, register_secret
from stsync.storage.paths import PRIVATE_FILE, ConnectionPaths, make_private_dir
from stsync.storage.registry import Registry

log = get_logger(__name__)

SERVICE = "stsync"
FILE_STORE_WARNING = (
    "secrets are stored in plain text in {path} (readable only by your user, mode 0600); "
    "prefer the OS keyring or environment variables where you can"
)

Source = Literal["env", "keyring", "file"]


class SecretStore:
    def __init__(self, paths: ConnectionPaths) -> None:
        self.paths = paths
        self._keyring_problem: str | None = None
        self._keyring_locked = False  # the problem is a locked collection: unlocking fixes it

    @property
    def store(self) -> Literal["keyring", "file"]:
        """The store the connection chose (the config's ``[secrets] store``)."""
        return "file" if self.paths.secrets_store == "file" else "keyring"

    def _nothing_stored(self) -> bool:
        """The registry knows this connection has no stored secrets (never connected, or
        disconnected since); False when it cannot tell."""
        return Registry(self.paths.state.parent).secrets_of(self.paths.name) is None

    # -- the keyring --------------------------------------------------------------------
    def _username(self, name: str) -> str:
        return f"{self.paths.name}/{name}"

    def _backend(self):
        """The keyring backend, or None with ``_keyring_problem`` saying why it is unusable."""
        # Imported here: the file store and env never touch the keyring, and loading it (and
        # its entry-point scan) was a tenth of a push's startup.
        import keyring
        from keyring.backends import chainer, fail, null

        try:
            backend = keyring.get_keyring()
        except Exception as exc:  # a broken keyring config must not become a traceback
            self._keyring_problem = f"the OS keyring could not be loaded ({type(exc).__name__}: {redact(str(exc))})"
            return None
        if isinstance(backend, (fail.Keyring, null.Keyring)) or (
            isinstance(backend, chainer.ChainerBackend) and not backend.backends
        ):
            self._keyring_problem = f"no OS keyring is available (keyring backend {self._describe_backend(backend)})"
            return None
        return backend

    @staticmethod
    def _describe_backend(backend) -> str:
        cls = type(backend)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__name__ == "ChainerBackend":
            inner = ", ".join(f"{type(b).__module__}.{type(b).__qualname__}" for b in getattr(backend, "backends", []))
            name += f"({inner})"
        return name

    def backend_name(self) -> str:
        """The keyring backend's class, e.g. ``keyring.backends.SecretService.Keyring``."""
        import keyring

        try:
            return self._describe_backend(keyring.get_keyring())
        except Exception as exc:
            return f"unavailable ({type(exc).__name__})"

    def _keyring_failed(self, exc: Exception, doing: str) -> None:
        from keyring.errors import KeyringLocked

        self._keyring_locked = isinstance(exc, KeyringLocked)
        if self._keyring_locked:
            self._keyring_problem = f"the OS keyring ({self.backend_name()}) is locked ({type(exc).__name__}: {redact(str(exc))})"
        else:
            self._keyring_problem = (
                f"the OS keyring ({self.backend_name()}) failed while {doing}: {type(exc).__name__}: {redact(str(exc))}"
            )
        # Reads fail on every run of a headless box that uses env or the file: not worth a warning.
        log.log(logging.DEBUG if doing == "reading" else logging.WARNING, "%s", self._keyring_problem)

    def _keyring_get(self, name: str) -> str | None:
        backend = self._backend()
        if backend is None:
            return None
        try:
            return clean(backend.get_password(SERVICE, self._username(name)))
        except Exception as exc:  # KeyringLocked, InitError, NoKeyringError, D-Bus errors, ...
            self._keyring_failed(exc, "reading")
            return None

    def keyring_usable(self) -> bool:
        """Whether the keyring answers (a read of one of our entries succeeds)."""
        self._keyring_problem, self._keyring_locked = None, False
        self._keyring_get(SECRET_NAMES[0])
        return self._keyring_problem is None

    def check_keyring(self, doing: str) -> None:
        """``SecretStoreUnavailable`` (the remedies; unlocking first for a locked collection)
        when the keyring cannot be used now — before anything is asked or sent."""
        if not self.keyring_usable():
            raise SecretStoreUnavailable(f"cannot {doing}: {self._keyring_problem}", locked=self._keyring_locked)

    # -- the file store -----------------------------------------------------------------
    @property
    def file_path(self) -> Path:
        return self.paths.secrets_file

    def _file_read(self) -> dict[str, str]:
        path = self.file_path
        try:
            info = path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the secrets file {path}: {exc.strerror or exc}") from None
        if info.st_mode & 0o077:
            log.warning("the secrets file %s is readable by others (mode %o): run chmod 600 on it", path, info.st_mode & 0o777)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(
                f"the secrets file {path} is damaged",
                hint="run `stsync connect --secrets-store file` to write it again",
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"the secrets file {path} is damaged", hint="run `stsync connect --secrets-store file` again")
        return {k: cleaned for k, v in data.items() if k in SECRET_NAMES and isinstance(v, str) and (cleaned := clean(v))}

    def _file_write(self, data: dict[str, str]) -> None:
        path = self.file_path
        if not data:
            path.unlink(missing_ok=True)
            return
        self.paths.ensure_state()
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # Created 0600 from the first byte (O_EXCL after removing a leftover): never readable by others.
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _file_update(self, change) -> None:
        make_private_dir(self.paths.locks)
        with FileLock(self.paths.locks / "secrets.lock", timeout=30, mode=PRIVATE_FILE):
            data = self._file_read()
            change(data)
            self._file_write(data)

    # -- public API ---------------------------------------------------------------------
    def get(self, name: str) -> str | None:
        """The secret from env → the chosen store (keyring, then file; or the file only); None
        when nowhere.

        Raises SecretStoreUnavailable when the keyring is unusable, neither env nor the file
        has the secret, and it may be in the keyring (the user must choose a remedy; stsync
        does not guess).
        """
        spec = secret(name)
        value = envvars.read(spec.env_var)
        if value:
            register_secret(value)
            return value
        self._keyring_problem, self._keyring_locked = None, False
        if self.store == "keyring":
            value = self._keyring_get(name)
            if value:
                register_secret(value)
                return value
        value = self._file_read().get(name)
        if value:
            register_secret(value)
            return value
        if self._keyring_problem and not self._nothing_stored():
            raise SecretStoreUnavailable(
                f"{spec.label} ({name}) could not be read: {self._keyring_problem}", locked=self._keyring_locked
            )
        return None

    def require(self, name: str) -> str:
        """The secret, or "not connected" (exit 3) naming where it is found and how to store it."""
        value = self.get(name)
        if not value:
            spec = secret(name)
            raise ConfigError(
                f"not connected — run `stsync connect` (connection '{self.paths.name}' has no {spec.label})",
                hint=f"`stsync connect` asks for it and stores it (or set {spec.env_var.name}); "
                f"it is found in {spec.where}",
            )
        return value

    def source(self, name: str) -> Source | None:
        """Where ``get`` would find the secret; never raises for an unusable keyring."""
        if envvars.read(secret(name).env_var):
            return "env"
        if self.store == "keyring" and self._keyring_get(name):
            return "keyring"
        try:
            if self._file_read().get(name):
                return "file"
        except ConfigError:
            return None
        return None

    def set(self, name: str, value: str, store: Literal["keyring", "file"] = "keyring") -> str | None:
        """Store the secret. → a warning for the user (file store), or None.

        The other store's copy is removed so that an old value can never shadow (keyring over
        file) or outlive (file under a later-locked keyring) the new one.
        """
        label = secret(name).label
        cleaned = clean(value)
        if not cleaned:
            raise UsageError(f"the {label} is empty")
        value = cleaned
        if store not in ("keyring", "file"):
            raise UsageError(f"unknown secrets store {store!r}: use keyring or file")
        register_secret(value)
        if store == "keyring":
            backend = self._backend()
            if backend is None:
                raise SecretStoreUnavailable(f"cannot store the {label}: {self._keyring_problem}")
            try:
                backend.set_password(SERVICE, self._username(name), value)
            except Exception as exc:
                self._keyring_failed(exc, "storing")
                raise SecretStoreUnavailable(
                    f"cannot store the {label}: {self._keyring_problem}", locked=self._keyring_locked
                ) from None
            self._file_update(lambda data: data.pop(name, None))
            log.info("stored %s in the OS keyring (%s)", name, self.backend_name())
            return None
        self._file_update(lambda data: data.__setitem__(name, value))
        warning = FILE_STORE_WARNING.format(path=self.file_path)
        try:
            self._keyring_delete(name)
        except SecretStoreUnavailable:
            # The usual reason to choose the file: the keyring is locked. An old copy in it
            # would win again once it is unlocked, so say so.
            warning += f"; an older copy may remain in the OS keyring ({self._keyring_problem})"
        log.warning("stored %s in the file store: %s", name, warning)
        return warning

    def _keyring_delete(self, name: str) -> bool:
        """Remove one keyring entry. True if it was there. Raises on a keyring that failed."""
        from keyring.errors import PasswordDeleteError

        backend = self._backend()
        if backend is None:
            return False  # no keyring at all: nothing can be stored in one
        try:
            if backend.get_password(SERVICE, self._username(name)) is None:
                return False
            backend.delete_password(SERVICE, self._username(name))
            return True
        except PasswordDeleteError:
            return False
        except Exception as exc:
            self._keyring_failed(exc, "removing secrets")
            raise SecretStoreUnavailable(
                f"cannot remove the {secret(name).label} from the OS keyring: {self._keyring_problem}"
            ) from None

    def delete_all(self, *, keyring: bool = True) -> list[str]:
        """Remove this connection's secrets from the file and (``keyring``) the keyring. →
        names removed.

        Environment variables are the user's to unset. The file is cleaned first, so a keyring
        that refuses (locked) still leaves no plain-text copy behind. A connection on the file
        store never touches the keyring (``connect`` removed the keyring's copies when it
        stored them in the file).
        """
        removed: list[str] = []
        in_file = self._file_read()
        if in_file:
            self._file_update(lambda data: data.clear())
            removed.extend(name for name in SECRET_NAMES if name in in_file)
        if not keyring or self.store == "file":
            return removed
        for name in SECRET_NAMES:
            try:
                deleted = self._keyring_delete(name)
            except SecretStoreUnavailable as exc:
                done = f" (removed from the file store: {', '.join(removed)})" if removed else ""
                exc.message = f"{exc.message}{done}"
                exc.args = (exc.message,)
                exc.hint = "unlock the OS keyring, then run `stsync disconnect` again to remove its copy"
                raise
            if deleted and name not in removed:
                removed.append(name)
        return [name for name in SECRET_NAMES if name in removed]

    def describe(self) -> dict:
        """Where each secret comes from and which stores work — never a value (for diagnose)."""
        if self.store == "file":
            usable, problem, locked = None, None, False  # not used: never asked
        else:
            usable = self.keyring_usable()
            problem, locked = self._keyring_problem, self._keyring_locked
        try:
            mode = oct(self.file_path.stat().st_mode & 0o777)
        except OSError:
            mode = None
        return {
            "store": self.store,
            # What `connect`/`disconnect` recorded: "keyring", "file", None (nothing stored), "unknown".
            "recorded": Registry(self.paths.state.parent).secrets_of(self.paths.name),
            "backend": self.backend_name(),
            "keyring_usable": usable,
            "keyring_problem": problem,
            "keyring_locked": locked,
            "file": str(self.file_path),
            "file_exists": mode is not None,
            "file_mode": mode,
            "secrets": {
                spec.name: {"source": self.source(spec.name), "env_var": spec.env_var.name, "label": spec.label}
                for spec in SECRETS
            },
        }
