"""The one place that writes for humans (hatch's ``cli/terminal.py``).

Human output (messages, tables, progress bars) goes to **stderr**; stdout carries only
machine data: the ``--json`` object, or a body asked for with ``--dry-run``. ``NO_COLOR``
is honoured by Rich itself.

Prompts (``ask``, ``confirm``) are written to stderr too — not a character on stdout — and
read from stdin; a hidden answer is read with echo off. Ctrl-C or the end of input at a
prompt ends its line and raises ``typer.Abort``, which the app reports in one line (exit 130).
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from stsync.progress import Progress

T = TypeVar("T")


class Terminal:
    def __init__(self, *, verbosity: int = 0, quiet: bool = False, json_mode: bool = False) -> None:
        self.verbosity = verbosity
        self.quiet = quiet
        self.json_mode = json_mode
        # Created per invocation so tests capturing sys.stderr see the output.
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=False)
        # run/serve with the json log format: stderr carries JSON lines only, so each message
        # becomes a log record (the log's stderr stream writes it).
        self.structured = False

    def _record(self, level: int, message: Any) -> bool:
        """In structured mode, ``message`` as a log record (True); tables have no line form."""
        if not self.structured:
            return False
        if isinstance(message, str):
            logging.getLogger("stsync.cli").log(level, Text.from_markup(message).plain)
        return True

    # -- messages ---------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None) -> None:
        if self._record(logging.ERROR, escape(message + (f" → {hint}" if hint else ""))):
            return
        self.err.print(f"[bold red]Error:[/] {escape(message)}")
        if hint:
            self.err.print(f"[dim]→ {escape(hint)}[/]")

    def warning(self, message: str) -> None:
        if self._record(logging.WARNING, escape(message)):
            return
        self.err.print(f"[yellow]Warning:[/] {escape(message)}")

    def info(self, message: str) -> None:
        if not self.quiet and not self._record(logging.INFO, escape(message)):
            self.err.print(escape(message))

    def success(self, message: str) -> None:
        if not self.quiet and not self._record(logging.INFO, escape(message)):
            self.err.print(f"[green]✓[/] {escape(message)}")

    def debug(self, message: str) -> None:
        if self.verbosity > 0 and not self._record(logging.DEBUG, escape(message)):
            self.err.print(f"[dim]{escape(message)}[/]")

    def print(self, renderable: Any) -> None:
        """A table, panel or markup string for humans (suppressed by ``-q``)."""
        if not self.quiet and not self._record(logging.INFO, renderable):
            self.err.print(renderable)

    def summary(self, renderable: Any) -> None:
        """A closing summary: shown even with ``-q`` (cron keeps the summary)."""
        if not self._record(logging.INFO, renderable):
            self.err.print(renderable)

    # -- data -------------------------------------------------------------------------
    def data(self, obj: Any) -> None:
        """Machine output on stdout: one JSON object."""
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def table(*columns: str, title: str | None = None) -> Table:
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column)
        return table

    @property
    def interactive(self) -> bool:
        return self.err.is_terminal and not self.quiet and not self.json_mode

    @property
    def can_ask(self) -> bool:
        """A person is there to answer: stdin and stderr are both terminals."""
        return sys.stdin.isatty() and self.err.is_terminal

    def confirm_destructive(self, question: str, *, yes: bool, refusal: str) -> None:
        """Go on only with --yes or a person's "y"; off a terminal, name the flag (exit 2)."""
        if yes:
            return
        import typer

        from stsync.errors import UsageError

        if not self.can_ask:
            raise UsageError(refusal)
        if not self.confirm(question, default=False):
            raise typer.Exit(1)

    # -- prompts ----------------------------------------------------------------------
    def ask(
        self,
        label: str,
        *,
        parse: Callable[[str], T],
        default: str | None = None,
        choices: Sequence[str] = (),
        hidden: bool = False,
        show_default: bool = True,
    ) -> T:
        """An answer from the person, asked again until ``parse`` accepts it (a ``ValueError``
        is shown and the question repeated); Enter alone takes ``default`` (never shown for a
        hidden answer)."""
        shown = label
        if choices:
            shown += f" ({', '.join(choices)})"
        if default is not None and show_default and not hidden:
            shown += f" [{default}]"
        shown += ": "
        while True:
            answer = self._read_answer(shown, hidden=hidden).strip()
            if not answer:
                if default is None:
                    continue
                answer = default
            try:
                return parse(answer)
            except ValueError as exc:
                self.err.print(f"[red]  {escape(str(exc) or 'not a valid answer')}[/]")

    def confirm(self, question: str, *, default: bool) -> bool:
        """A yes or no; Enter alone takes ``default``."""

        def yes_or_no(answer: str) -> bool:
            word = answer.casefold()
            if word in ("y", "yes"):
                return True
            if word in ("n", "no"):
                return False
            raise ValueError("answer y or n")

        return self.ask(
            f"{question} [{'Y/n' if default else 'y/N'}]", parse=yes_or_no, default="y" if default else "n", show_default=False
        )

    def _read_answer(self, prompt: str, *, hidden: bool) -> str:
        import typer

        try:
            if hidden:
                return getpass.getpass(prompt, stream=sys.stderr)
            sys.stderr.write(prompt)
            sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            return line
        except (KeyboardInterrupt, EOFError):
            sys.stderr.write("\n")  # end the prompt's line: the one line about it stands alone
            sys.stderr.flush()
            raise typer.Abort() from None

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[ProgressHandle]:
        """A progress bar on a TTY (stderr); silent otherwise (cron)."""
        if not self.interactive:
            yield ProgressHandle(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        ) as progress:
            task = progress.add_task(description, total=total)
            yield ProgressHandle(progress, task)


class ProgressHandle(Progress):
    """The progress bar as services see it (``stsync.progress.Progress``); a no-op off a
    terminal."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)
