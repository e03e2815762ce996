"""Logging: a rotating log file per connection, plus stderr with ``-v``.

Every record passes a redaction filter that replaces any registered secret value with
``***`` — defence in depth: no code should log a secret in the first place.

The log file is created 0600, also when a rotation inside a running process (``serve``)
starts a new one. A log file that is a symlink (to /var/log/…) is written through, but its
target's mode is its owner's business: never changed.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from typing import IO

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
    """Opens the log file 0600: at start and after every rollover (the stdlib's uses the umask)."""

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
    except OSError:
        pass  # an unwritable state dir is reported by the command that needs it
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
        handler.close()


def get_logger(name: str) -> logging.Logger:
    """A child of the ``stsync`` logger; ``get_logger(__name__)`` gives ``stsync.services.push``."""
    if name == _LOGGER or name.startswith(_LOGGER + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{_LOGGER}.{name}")
