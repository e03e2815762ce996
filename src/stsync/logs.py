"""Logging: a rotating log file per connection, plus stderr with ``-v``.

Every record passes a redaction filter that replaces any registered secret value with
``***`` — defence in depth: no code should log a secret in the first place.

The log file is created 0600, also when a rotation inside a running process (``serve``)
starts a new one. A log file that is a symlink (to /var/log/…) is written through, but its
target's mode is its owner's business: never changed.

**Two formats** (``--log-format``, ``STSYNC_LOG_FORMAT``, ``[logging] format``): ``text``, a line
for a person, and ``json``, one JSON object per line for a log shipper — ``ts`` (UTC, ms),
``level``, ``logger``, ``pid``, ``message``, then the context that is known: ``connection``,
``command``, ``run_id`` and the record's keys (``external_id``, ``customer_id``, ``delivery``).
Each line is redacted as a whole after it is built, so no context value can carry a secret
either. Under ``run`` and ``serve`` the JSON lines go to stderr too (``attach_stderr``).

**Context.** ``bind(**fields)`` sets what holds for the whole process (the connection, the
command); ``log_context(**fields)`` adds keys for a block — a run, one record — on the
current thread (a ``ContextVar``: ``workpool`` copies it into its workers).

The log never breaks a command: when the state directory cannot hold it (a file, read-only, a
full disk) nothing is logged to a file, no stack trace of logging's own reaches the terminal,
and ``log_file_in_use()`` is None — so no message names a log file that does not exist. A
write or a close that fails later (the disk filled up) stops the file quietly.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from stsync.errors import StsyncError
from stsync.storage.paths import PRIVATE_FILE, ConnectionPaths

_LOGGER = "stsync"
_secrets: set[str] = set()
_lock = threading.Lock()
_handlers: list[logging.Handler] = []
# The handlers whose format follows --log-format / [logging] format (the file, and stderr's JSON).
_formatted: list[logging.Handler] = []
_process_context: dict[str, Any] = {}
_context: ContextVar[dict[str, Any] | None] = ContextVar("stsync_log_context", default=None)
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# The order keys appear in after the fixed ones: who, what run, which record.
CONTEXT_KEYS = ("connection", "command", "job", "run_id", "external_id", "customer_id", "delivery")


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


def bind(**fields: Any) -> None:
    """Context for every record of this process from now on (None removes a key)."""
    with _lock:
        for key, value in fields.items():
            if value is None:
                _process_context.pop(key, None)
            else:
                _process_context[key] = value


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Keys for the records logged inside the block, on this thread (None values are left out)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    with _lock:
        merged = dict(_process_context)
    merged.update(_context.get() or {})
    return merged


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``pid``, ``message``, the context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        context = getattr(record, "stsync_context", None)
        if context is None:
            context = current_context()
        for key in CONTEXT_KEYS:
            if key in context:
                entry[key] = context[key]
        entry.update({k: v for k, v in context.items() if k not in entry})
        if record.exc_info:  # the redacting filter folds tracebacks into the message first
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class ContextFilter(logging.Filter):
    """Captures the context where the record is made (the thread's), before any handler runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "stsync_context"):
            record.stsync_context = current_context()
        return True


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


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


def attach_file_handler(
    paths: ConnectionPaths, *, verbosity: int = 0, terminal_stream: IO[str] | None = None, log_format: str = "text"
) -> None:
    logger = logging.getLogger(_LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    detach_handlers()
    bind(connection=paths.name)
    try:
        paths.ensure_state()
        handler: logging.Handler = PrivateRotatingFileHandler(
            paths.log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
        handler.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
        handler.setFormatter(formatter_for(log_format))
        handler.addFilter(ContextFilter())
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        _handlers.append(handler)
        _formatted.append(handler)
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
        stream.addFilter(ContextFilter())
        stream.addFilter(RedactingFilter())
        logger.addHandler(stream)
        _handlers.append(stream)


def set_log_format(log_format: str) -> None:
    """Switch the log file (and a JSON stderr stream) to ``log_format`` ("text" | "json")."""
    for handler in list(_formatted):
        handler.setFormatter(formatter_for(log_format))


def attach_stderr(stream: IO[str], *, level: int = logging.INFO) -> None:
    """JSON lines on ``stream`` too (``run`` and ``serve`` with the json format): what the log
    file gets, for a container's log collector. Replaces the ``-v`` stream if there is one."""
    logger = logging.getLogger(_LOGGER)
    for handler in [h for h in _handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        _handlers.remove(handler)
        level = min(level, handler.level)
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    _handlers.append(handler)
    _formatted.append(handler)


def detach_handlers() -> None:
    logger = logging.getLogger(_LOGGER)
    _formatted.clear()
    while _handlers:
        handler = _handlers.pop()
        logger.removeHandler(handler)
        try:
            handler.close()
        except OSError:
            pass  # a full disk: the file was stopped already
    with _lock:
        _process_context.clear()


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
