"""Logging: a rotating log file per connection, plus stderr with ``-v``.

Every record passes a redaction filter that replaces any registered secret value with
``***`` — defence in depth: no code should log a secret in the first place.

The log file is created 0600, also when a rotation inside a running process (``serve``)
starts a new one. A log file that is a symlink (to /var/log/…) is written through, but its
target's mode is its owner's business: never changed.

The log never breaks a command: when the state directory cannot hold it (a file, read-only, a
full disk) nothing is logged to a file, no stack trace of logging's own reaches the terminal,
and ``log_file_in_use()`` is None — so no message names a log file that does not exist. A
write or a close that fails later (the disk filled up) stops the file quietly.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from pathlib import Path
from typing import IO

from stsync.errors import StsyncError
from stsync.storage.paths import PRIVATE_FILE, ConnectionPaths

_LOGGER = "stsync"
_secrets: set[str] = set()
_lock = threading.Lock()
_handlers: list[logging.Handler] = []


def register_secret(value: str | None) -> None:
    """Make sure ``value`` never reaches a log line."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            # A traceback can quote a secret (a local repr, a URL): render and redact it here,
            # before the formatter would print it verbatim.
            message = message + "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        redacted = redact(message)
        if redacted != message or record.args or "\n" in message:
            record.msg, record.args = redacted, None
        return True


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Opens the log file 0600: at start and after every rollover (the stdlib's uses the umask).

    A record that cannot be written (the disk is full) stops the file: ``broken`` is set and
    nothing is printed — logging's own handler of errors would print its traceback on stderr.
    """

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.broken = True

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last flush, on a full disk
            self.broken = True
            self.stream = None

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        try:
            # A file an older stsync left 0644 is made private; a symlink's target is left alone.
            if hasattr(os, "fchmod") and os.path.samestat(os.fstat(fd), os.lstat(self.baseFilename)):
                os.fchmod(fd, PRIVATE_FILE)
            return open(fd, self.mode, encoding=self.encoding, errors=self.errors)
        except BaseException:
            os.close(fd)
            raise


def attach_file_handler(paths: ConnectionPaths, *, verbosity: int = 0, terminal_stream: IO[str] | None = None) -> None:
    logger = logging.getLogger(_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    detach_handlers()
    try:
        paths.ensure_state()
        handler: logging.Handler = PrivateRotatingFileHandler(
            paths.log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        handler.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        _handlers.append(handler)
    except (OSError, StsyncError):
        # An unusable state dir is reported by the command that needs it. Meanwhile records go
        # nowhere, not to logging's last resort (stderr, with tracebacks).
        null = logging.NullHandler()
        logger.addHandler(null)
        _handlers.append(null)
    if verbosity and terminal_stream is not None:
        stream = logging.StreamHandler(terminal_stream)
        stream.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        stream.addFilter(RedactingFilter())
        logger.addHandler(stream)
        _handlers.append(stream)


def detach_handlers() -> None:
    logger = logging.getLogger(_LOGGER)
    while _handlers:
        handler = _handlers.pop()
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass  # a full disk: the file was stopped already


def log_file_in_use() -> Path | None:
    """The log file records are written to now; None when there is none (or it stopped)."""
    for handler in _handlers:
        if isinstance(handler, PrivateRotatingFileHandler) and not handler.broken:
            return Path(handler.baseFilename)
    return None


def get_logger(name: str) -> logging.Logger:
    """A child of the ``stsync`` logger; ``get_logger(__name__)`` gives ``stsync.services.push``."""
    if name == _LOGGER or name.startswith(_LOGGER + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{_LOGGER}.{name}")
