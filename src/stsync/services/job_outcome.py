"""Every run command's outcome, recorded and reported the same way under cron and ``stsync run``.

A run command (push-lead, qualify, sync-customers, serve, run — never a dry run) is one
*job invocation*: ``begin()`` before its work, ``finish(exit_code, error)`` after, whatever
happened. ``finish``:

1. records the exit code (SPEC §5) on every run this process recorded since ``begin`` — so a
   cron line and a step of ``stsync run`` leave the same row; when the command recorded no
   run (it stopped before its work began: another run holds the lock, the configuration or
   the credentials are wrong; or it had nothing to do), it records one: ``skipped`` for exit
   7, ``ok`` for 0, ``partial`` for 5, ``interrupted`` for 130, ``failed`` otherwise;
2. lets the alerts look (``notify.watch``): the exit code, new failed records, overdue jobs;
3. for a scheduled job (push-lead --new, qualify, sync-customers), pings ``[notify] ping_url``
   (``begin`` sent ``/start``).

Nothing here may change the command's exit code or hold it up: every step is guarded, and
the sends have their own deadlines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from stsync.errors import StsyncError
from stsync.logs import bind, get_logger
from stsync.notify.send import Notifier
from stsync.notify.watch import JobResult, Watch, more_for
from stsync.storage.ledger import Ledger
from stsync.storage.states import RunOutcome

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

INTERRUPTED_EXIT = 130


def outcome_for_exit(exit_code: int) -> RunOutcome:
    """The outcome of a run recorded from its exit code alone."""
    return {
        0: RunOutcome.OK,
        5: RunOutcome.PARTIAL,
        7: RunOutcome.SKIPPED,
        INTERRUPTED_EXIT: RunOutcome.INTERRUPTED,
    }.get(exit_code, RunOutcome.FAILED)


class JobInvocation:
    """``begin()`` → the command's work → ``finish(exit_code, error)``."""

    def __init__(
        self,
        paths: ConnectionPaths,
        *,
        job: str,
        command: str,
        scheduled: bool,
        config: Callable[[], Config | None],
        default_config: bool = False,
    ) -> None:
        self.paths = paths
        self.job = job
        self.command = command
        self.scheduled = scheduled
        self._config = config
        self.default_config = default_config
        self.watermark = 0
        self.begun = False

    def _settings(self) -> Config | None:
        try:
            return self._config()
        except Exception:  # a broken config is the command's error to report, not ours
            return None

    def notifier(self) -> Notifier:
        config = self._settings()
        return Notifier.from_settings(config.notify if config is not None else None)

    def begin(self) -> None:
        bind(job=self.job, command=self.command)
        self.begun = True
        try:
            if self.paths.ledger.exists():
                with Ledger.open(self.paths.ledger) as ledger:
                    self.watermark = ledger.last_run_id()
        except Exception as exc:
            log.info("job %s: the ledger could not be read at the start (%s)", self.job, type(exc).__name__)
        if self.scheduled:
            try:
                self.notifier().ping_start(self.job)
            except Exception:
                log.exception("notify: the start ping failed")

    def finish(self, exit_code: int, error: BaseException | None = None) -> None:
        """Record, alert, ping. Never raises."""
        if not self.begun:
            return
        error_dict = (
            error.to_dict()
            if isinstance(error, StsyncError)
            else ({"type": type(error).__name__, "message": "unexpected error; see the log file"} if error is not None else None)
        )
        config = self._settings()
        notifier = Notifier.from_settings(config.notify if config is not None else None)
        ledger: Ledger | None = None
        try:
            # A command that succeeded without touching the ledger leaves none behind; a
            # failure is recorded even on a connection's first run.
            if self.paths.ledger.exists() or (exit_code != 0 and self.paths.config.exists()):
                ledger = Ledger.open(self.paths.ledger)
        except Exception as exc:
            log.warning("job %s: the ledger could not be opened to record exit %s (%s)", self.job, exit_code, type(exc).__name__)
        try:
            if ledger is not None:
                self._record(ledger, exit_code, error_dict)
                more = more_for(self.paths, default_config=self.default_config)
                Watch(self.paths, ledger, config, notifier, more=more).look(
                    job_result=JobResult(self.job, self.command, exit_code, error_dict)
                )
        except Exception:
            log.exception("job %s: could not record its exit code", self.job)
        finally:
            if ledger is not None:
                ledger.close()
        if self.scheduled:
            try:
                summary = f"{self.command}: exit {exit_code}" + (f": {error_dict.get('message')}" if error_dict else "")
                notifier.ping_end(self.job, exit_code, summary)
            except Exception:
                log.exception("notify: the end ping failed")

    def _record(self, ledger: Ledger, exit_code: int, error: dict | None) -> None:
        runs = ledger.runs_started_by(os.getpid(), after_id=self.watermark)
        if runs:
            ledger.set_exit_code([run.id for run in runs], exit_code)
            return
        message = (error or {}).get("message")
        ledger.record_finished_run(
            self.job, self.command, outcome=outcome_for_exit(exit_code), exit_code=exit_code, error=message,
            failure=error if error and exit_code != 0 else None,
        )
