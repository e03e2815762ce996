"""`stsync notify --test`: one test message through the configured alert destinations.

The message goes through exactly the path a real alert takes (``notify.message.payload`` →
``Notifier.send``), so a test that arrives proves the real ones will; the ping URL gets a
healthchecks.io ``/log`` line, which changes no check's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stsync.notify.conditions import iso
from stsync.notify.message import Alert, payload
from stsync.notify.send import Notifier
from stsync.notify.watch import origin_for

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

TEST_JOB = "push"  # the check a test log line lands in, when ping_url names one per job


@dataclass
class NotifyTestResult:
    webhook: bool | None  # None: not configured
    ping: bool | None

    @property
    def configured(self) -> bool:
        return self.webhook is not None or self.ping is not None

    @property
    def ok(self) -> bool:
        return self.configured and self.webhook is not False and self.ping is not False

    def lines(self) -> list[str]:
        out = []
        for what, result in (("test message to the webhook", self.webhook), ("log line to the ping URL", self.ping)):
            if result is not None:
                out.append(f"sent the {what}" if result else f"could not send the {what}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"webhook": self.webhook, "ping": self.ping}


def send_test(paths: ConnectionPaths, config: Config) -> NotifyTestResult:
    notifier = Notifier.from_settings(config.notify)
    webhook = ping = None
    if notifier.sends_messages:
        alert = Alert(
            event="test",
            what="test alert: alerts of this connection reach you here",
            more="stsync status",
            hint="nothing to do",
        )
        webhook = notifier.send(payload(origin_for(paths), [alert], at=iso(datetime.now(UTC))))
    if notifier.pings:
        ping = notifier.ping_log(TEST_JOB, f"stsync {paths.name}: test from `stsync notify --test`")
    return NotifyTestResult(webhook=webhook, ping=ping)
