"""Logging: a rotating log file per connection, plus stderr with ``-v``.

Every record passes a redaction filter that replaces any registered secret value with
``***`` — defence in depth: no code should log a secret in the first place.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from typing import IO

from stsync.storage.paths import ConnectionPaths

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


def attach_file_handler(paths: ConnectionPaths, *, verbosity: int = 0, terminal_stream: IO[str] | None = None) -> None:
    logger = logging.getLogger(_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    detach_handlers()
    try:
        paths.ensure_state()
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            paths.log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        paths.log_file.chmod(0o600)
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
