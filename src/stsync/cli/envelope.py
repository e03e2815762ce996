"""The one shape of every command's ``--json`` object: schema 1 (docs/json.md, docs/json-schema.json).

    {
      "schema": 1,              this shape's version: raised only by an incompatible change
      "command": "push-lead",   the command path without "stsync" ("map show"); null when the
                                command line named none that exists
      "ok": true,               exactly ``exit_code == 0``
      "exit_code": 0,           the process's exit code (SPEC §5; 130 after Ctrl-C)
      "counts": {...},          flat: a name → an integer (empty when the command counts nothing)
      "failures": [...],        each record that failed: key, email (when the record has one),
                                message, error (bounded per command; ``counts`` has the total)
      "error": null,            on failure, the error that decided the exit code (its to_dict())
      ...                       the command's own keys
    }

Built here only: a command records what it has to say (``CommandOutput``, through
``AppContext.result``), and ``cli.app.run`` writes the envelope once, when the invocation ends,
whatever ended it — the command's return, its error, a usage error, Ctrl-C. The envelope keys
are reserved: a command key of the same name is a bug, refused when it is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
ENVELOPE_KEYS = ("schema", "command", "ok", "exit_code", "counts", "failures", "error")


@dataclass
class CommandOutput:
    """What a command's ``--json`` object says besides how it ended."""

    counts: dict[str, Any] = field(default_factory=dict)  # checked: each value an integer
    failures: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.counts.items():
            # bool is an int to Python, not to a JSON consumer.
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"counts must map a name to an integer, not {name!r}: {value!r}")
        clash = sorted(set(self.data) & set(ENVELOPE_KEYS))
        if clash:
            raise ValueError(f"a command's own keys must not be envelope keys: {', '.join(clash)}")
        for item in self.failures:
            if not {"key", "message", "error"} <= set(item):
                raise ValueError(f"a failure needs key, message and error: {item!r}")


_NO_EMAIL = object()


def failure(key: object, message: str, *, error: Mapping[str, Any] | None, email: Any = _NO_EMAIL) -> dict[str, Any]:
    """One failed record as ``failures`` lists it. ``key`` names the record the way the
    command's input does (an External Id, a customer id, a check's name); ``email`` is given
    for records that have one (it may be None when the record lacked it). A record whose
    failure carries no error object gets one made of its message."""
    item: dict[str, Any] = {"key": None if key is None else str(key)}
    if email is not _NO_EMAIL:
        item["email"] = email
    item["message"] = message
    item["error"] = dict(error) if error else {"type": "RecordFailed", "message": message, "hint": None, "exit_code": 5}
    return item


def envelope(
    command: str | None, exit_code: int, output: CommandOutput | None, error: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The ``--json`` object of an invocation that ended with ``exit_code``.

    ``error`` is the failure that decided a non-zero exit code; a non-zero exit without one
    (which the tests rule out) still gets an error object, so a consumer can rely on
    ``error`` being an object exactly when ``ok`` is false.
    """
    output = output or CommandOutput()
    if exit_code == 0:
        error = None
    elif error is None:
        error = {"type": "StsyncError", "message": f"exited with code {exit_code}", "hint": None, "exit_code": exit_code}
    return {
        "schema": SCHEMA_VERSION,
        "command": command,
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "counts": dict(output.counts),
        "failures": list(output.failures),
        "error": dict(error) if error is not None else None,
        **output.data,
    }
