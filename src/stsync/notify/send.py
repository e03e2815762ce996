"""Sending: the alert message to ``[notify] webhook_url`` and the pings to ``ping_url``.

A job must never fail or wait because an alert could not go out, so every send:

- uses a short timeout per request (``[notify] timeout_seconds``, 5 s by default) and runs on
  a helper thread joined with a hard deadline (a server that answers one byte at a time
  cannot hold the job up);
- follows no redirect (the URL is the whole destination), retries nothing;
- logs a failure as a warning naming what failed, never the URL (its path is the token), and
  returns False instead of raising.

**Pings** (healthchecks.io's protocol): ``<ping_url>/start`` when a scheduled job starts, the
bare ``<ping_url>`` when it succeeds, ``<ping_url>/<exit code>`` when it fails (exit 1–5);
nothing after exit 6 (temporary) or 7 (another run holds the lock): the check then waits
for the next success, and only a trouble that outlasts its grace time alerts. ``{job}`` in
the URL is replaced by the job (push, qualify, sync), so each job can have a check of its own
(healthchecks.io's slug URLs: ``https://hc-ping.com/<ping key>/stsync-{job}``).
The body of a ping is a line of text (healthchecks shows it in the check's log).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx

from stsync import envvars
from stsync.logs import get_logger, redact, register_secret

log = get_logger(__name__)

USER_AGENT = "stsync-notify"
# Exit codes a ping reports as a failure; 0 is success; the rest (6, 7, 130) send nothing.
PING_FAILURES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Notifier:
    webhook_url: str | None
    ping_url: str | None
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, notify: Any | None) -> Notifier:
        """From ``[notify]`` (or None for a config that could not be read); the environment
        variables win. The URLs are registered as secrets: no log line shows them."""
        webhook_url = envvars.resolve(envvars.NOTIFY_WEBHOOK_URL, configured=getattr(notify, "webhook_url", None))
        ping_url = envvars.resolve(envvars.NOTIFY_PING_URL, configured=getattr(notify, "ping_url", None))
        for url in (webhook_url, ping_url):
            register_secret(url)
        timeout = float(getattr(notify, "timeout_seconds", 5.0) or 5.0)
        return cls(webhook_url=webhook_url, ping_url=ping_url, timeout=timeout)

    @property
    def sends_messages(self) -> bool:
        return bool(self.webhook_url)

    @property
    def pings(self) -> bool:
        return bool(self.ping_url)

    # -- messages -------------------------------------------------------------------------
    def send(self, body: dict[str, Any]) -> bool:
        """POST ``body`` as JSON to the webhook. True when the receiver answered 2xx."""
        if not self.webhook_url:
            return False
        return self._post(self.webhook_url, "the alert webhook", json=body)

    # -- pings ----------------------------------------------------------------------------
    def ping_url_for(self, job: str, suffix: str = "") -> str | None:
        if not self.ping_url:
            return None
        base = self.ping_url.replace("{job}", job).rstrip("/")
        return f"{base}/{suffix}" if suffix else base

    def ping_start(self, job: str) -> bool:
        url = self.ping_url_for(job, "start")
        if not url:
            return False
        return self._post(url, f"the {job} ping (start)", content=f"{job} started")

    def ping_end(self, job: str, exit_code: int, summary: str = "") -> bool | None:
        """Success or failure by exit code; None when this exit code is not reported."""
        if exit_code == 0:
            suffix = ""
        elif exit_code in PING_FAILURES:
            suffix = str(exit_code)
        else:
            return None
        url = self.ping_url_for(job, suffix)
        if not url:
            return None
        return self._post(
            url, f"the {job} ping (exit {exit_code})", content=redact(summary)[:10_000] or f"{job}: exit {exit_code}"
        )

    def ping_log(self, job: str, text: str) -> bool:
        """healthchecks.io's ``/log``: a line in the check's log that changes nothing (``notify --test``)."""
        url = self.ping_url_for(job, "log")
        if not url:
            return False
        return self._post(url, f"the {job} ping (log)", content=redact(text))

    # -- plumbing -------------------------------------------------------------------------
    def _post(self, url: str, what: str, **request: Any) -> bool:
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=False, headers={"User-Agent": USER_AGENT}) as http:
                    response = http.post(url, **request)
                outcome["status"] = response.status_code
            except httpx.HTTPError as exc:
                outcome["error"] = type(exc).__name__
            except Exception as exc:  # nothing about an alert may break the job
                outcome["error"] = f"{type(exc).__name__}"

        thread = threading.Thread(target=attempt, name="stsync-notify", daemon=True)
        thread.start()
        # Connect, write and read each have the timeout; the deadline bounds them together (a
        # server dripping its answer a byte at a time never resets it).
        deadline = self.timeout + 1
        thread.join(deadline)
        if thread.is_alive():
            log.warning("notify: %s did not answer within %.0f s; given up", what, deadline)
            return False
        if "error" in outcome:
            log.warning("notify: could not reach %s (%s)", what, outcome["error"])
            return False
        status = outcome.get("status")
        if status is None or not 200 <= status < 300:
            log.warning("notify: %s answered HTTP %s", what, status)
            return False
        log.info("notify: sent to %s", what)
        return True
