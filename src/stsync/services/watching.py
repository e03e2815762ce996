"""The alerts' look, repeated while a long-running command (``serve``, ``stsync run``) runs.

A cron run looks once, when it ends (``services.job_outcome``). A process that runs for
months must look by itself: a webhook delivery that failed, a job that became overdue, a
reminder that is due. ``PeriodicWatch`` looks every ``every`` seconds on a thread of its own
(with a ledger connection of its own) until ``stop()``, which looks once more. A look never
raises and never holds the command up (``notify.watch``). It reads through the command's own
ledger when given one (``ledger=``), so the process keeps one set of connections.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from stsync.logs import get_logger
from stsync.notify.send import Notifier
from stsync.notify.watch import Watch, more_for
from stsync.storage.ledger import Ledger

if TYPE_CHECKING:
    from stsync.storage.config import Config
    from stsync.storage.paths import ConnectionPaths

log = get_logger(__name__)

DEFAULT_EVERY_SECONDS = 60.0


class PeriodicWatch:
    def __init__(
        self,
        paths: ConnectionPaths,
        config: Config,
        *,
        every: float = DEFAULT_EVERY_SECONDS,
        default_config: bool = False,
        after_look: Callable[[], None] | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.every = every
        self.default_config = default_config
        self.after_look = after_look
        self.ledger = ledger
        self.notifier = Notifier.from_settings(config.notify)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> None:
        try:
            if self.notifier.sends_messages:
                if self.ledger is not None:
                    self._look_with(self.ledger)
                else:
                    with Ledger.open(self.paths.ledger) as ledger:
                        self._look_with(ledger)
            if self.after_look is not None:
                self.after_look()
        except Exception:
            log.exception("watch: a look failed")

    def _look_with(self, ledger: Ledger) -> None:
        Watch(
            self.paths, ledger, self.config, self.notifier, more=more_for(self.paths, default_config=self.default_config)
        ).look()

    def start(self) -> PeriodicWatch:
        self._thread = threading.Thread(target=self._loop, name="stsync-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.look()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.look()
