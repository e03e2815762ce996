"""What an alert says, and the JSON body a webhook receives (pure).

The body is Slack's and Teams' (incoming webhooks) ``text`` — a few lines a person reads on a
phone — plus ``stsync``: the same facts as data for a machine::

    {"text": "stsync acme (host1): push-lead --new failed with exit 4 …",
     "stsync": {"version": 1, "connection": "acme", "host": "host1", "config": "/etc/stsync/acme.toml",
                "at": "2024-05-01T12:00:00.000Z",
                "alerts": [{"event": "job_failed", "job": "push", "command": "push-lead --new",
                            "exit_code": 4, "what": "…", "hint": "…", "more": "stsync diagnose",
                            "reminder": false, "details": {…}}]}}

Events: ``job_failed`` (exit 1, 3, 4 or 5), ``record_failed`` (records that failed for good),
``delivery_failed`` (webhook deliveries), ``job_overdue``, ``rf_blocked``, ``rf_cooldown``,
``test`` (``stsync notify --test``). ``more`` is the command that shows more, with the
connection's ``--config`` when it is not the default one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stsync.logs import redact

MESSAGE_VERSION = 1
EXIT_MEANINGS = {
    1: "unexpected error",
    2: "usage error",
    3: "configuration invalid",
    4: "authentication failed",
    5: "some records failed",
    6: "temporary failure",
    7: "another run holds the lock",
}


@dataclass(frozen=True)
class Alert:
    """One thing a person must know. ``what`` is the line they read; ``more`` the command to run."""

    event: str
    what: str
    job: str | None = None
    command: str | None = None
    exit_code: int | None = None
    hint: str | None = None
    more: str | None = None
    reminder: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_reminder(self, since: str | None) -> Alert:
        return Alert(
            event=self.event,
            what=f"still: {self.what}" + (f" (since {since})" if since else ""),
            job=self.job,
            command=self.command,
            exit_code=self.exit_code,
            hint=self.hint,
            more=self.more,
            reminder=True,
            details=self.details,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "job": self.job,
            "command": self.command,
            "exit_code": self.exit_code,
            "what": self.what,
            "hint": self.hint,
            "more": self.more,
            "reminder": self.reminder,
            "details": self.details,
        }

    def line(self) -> str:
        text = f"• {self.what}"
        if self.hint:
            text += f" → {self.hint}"
        if self.more:
            text += f" (more: `{self.more}`)"
        return text


@dataclass(frozen=True)
class Origin:
    """Which connection speaks: its name, the machine, the config file."""

    connection: str
    host: str
    config: str | None = None


def payload(origin: Origin, alerts: list[Alert], *, at: str) -> dict[str, Any]:
    """The JSON body for ``alerts`` (at least one), every string redacted."""
    heading = f"stsync {origin.connection} ({origin.host})"
    if all(alert.reminder for alert in alerts):
        heading += ": reminder"
    text = "\n".join([heading + ":", *(alert.line() for alert in alerts)])
    body = {
        "text": text,
        "stsync": {
            "version": MESSAGE_VERSION,
            "connection": origin.connection,
            "host": origin.host,
            "config": origin.config,
            "at": at,
            "alerts": [alert.to_dict() for alert in alerts],
        },
    }
    # Messages hold no secret by construction (errors never carry one); this is the second
    # line of defence, over every string of the body.
    return _redacted(json.loads(json.dumps(body, default=str)))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(key)): _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def exit_meaning(code: int | None) -> str:
    return EXIT_MEANINGS.get(code or 0, "done") if code else "done"
