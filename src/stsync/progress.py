"""What a long run reports its progress to: one protocol for every service.

push, sync-customers and qualify take a ``Progress``; the CLI passes its progress bar
(``cli.terminal.ProgressHandle``), tests a counter, and everyone else ``NO_PROGRESS``.
Calls may come from worker threads: an implementation must accept that.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def advance(self, n: int = 1) -> None:
        """``n`` more records are done."""

    def set_total(self, total: int | None) -> None:
        """How many records the run has in all (None: not known yet)."""


class _NoProgress:
    """Reports to no one: what a run uses when nobody is watching."""

    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()
