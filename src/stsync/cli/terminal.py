"""The one place that writes for people (hatch's ``cli/terminal.py``).

Two streams, as gh and hatch keep them:

- **stdout: what the user asked to see** — ``history``'s attempts, ``map show``'s tables,
  ``diagnose``'s checks, a run's summary and its failed records (``show``, ``summary``,
  ``table``, ``plain``), a ``--dry-run`` body (``data``). On a terminal these are Rich tables;
  in a pipe the same tables as plain aligned text (no colour, no borders), at ``COLUMNS`` or
  80 columns, or TSV where a command says so (``history``).
- **stderr: the talk** — progress bars, prompts, warnings, errors, hints, "✓ done" lines
  (``info``, ``success``, ``warning``, ``error``, ``print``).

With ``--json`` stdout is the JSON object's alone (``data``): everything else goes to stderr.
``-q`` silences the talk (``info``, ``success``, ``print``), never the data, a warning or an
error; what each command shows with ``-q`` is its own choice (one summary line, its failures).
``NO_COLOR`` is honoured by Rich itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape

from stsync.cli.tables import Column, fitted_table, tsv
from stsync.progress import Progress


class Terminal:
    def __init__(self, *, verbosity: int = 0, quiet: bool = False, json_mode: bool = False) -> None:
        self.verbosity = verbosity
        self.quiet = quiet
        self.json_mode = json_mode
        # Created per invocation so tests capturing sys.stdout and sys.stderr see the output.
        # soft_wrap: a message or a command in it is never broken by a hard line break (the
        # terminal wraps it; a cron mail or a log keeps it whole). Tables still fit the width.
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.out = self.err if json_mode else Console(file=sys.stdout, highlight=False, soft_wrap=True)

    # -- messages ---------------------------------------------------------------------
    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]Error:[/] {escape(message)}")
        if hint:
            self.err.print(f"[dim]→ {escape(hint)}[/]")

    def warning(self, message: str) -> None:
        self.err.print(f"[yellow]Warning:[/] {escape(message)}")

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(escape(message))

    def success(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[green]✓[/] {escape(message)}")

    def always(self, renderable: Any) -> None:
        """Talk that ``-q`` keeps (stderr): a dry run's summary, whose stdout is the body."""
        self.err.print(renderable)

    def debug(self, message: str) -> None:
        if self.verbosity > 0:
            self.err.print(f"[dim]{escape(message)}[/]")

    def print(self, renderable: Any) -> None:
        """Talk for people (an explanation, a banner): stderr, silenced by ``-q``."""
        if not self.quiet:
            self.err.print(renderable)

    # -- data -------------------------------------------------------------------------
    def show(self, renderable: Any) -> None:
        """What the user asked to see (a table, a story): stdout, shown with ``-q`` too."""
        self._print_data(renderable)

    def summary(self, renderable: Any) -> None:
        """A run's closing summary or a failed record's line: stdout, shown with ``-q``
        (cron mails it)."""
        self._print_data(renderable)

    def table(self, columns: list[Column], rows: list[list[Any]], *, title: str | None = None) -> None:
        """Rows as a table that fits stdout's width (``cli.tables``): shown with ``-q``."""
        # Wrapped to the width, notes under the table included (at words: an error stays legible).
        self._print_data(fitted_table(columns, rows, self.out.width, title=title), soft_wrap=False)

    def _print_data(self, renderable: Any, *, soft_wrap: bool | None = None) -> None:
        if self.out.is_terminal:
            self.out.print(renderable, soft_wrap=soft_wrap)
            return
        # A pipe or a file: plain text without the padding Rich leaves at the end of lines.
        with self.out.capture() as captured:
            self.out.print(renderable, soft_wrap=soft_wrap)
        text = "".join(line.rstrip() + "\n" for line in captured.get().splitlines())
        self.out.file.write(text)
        self.out.file.flush()

    def boxed(self, title: str, lines: list[str], *, style: str = "") -> None:
        """A block under a title (a Setup Required banner, a referral's story): a box on a
        terminal; in a pipe or a file the title and its lines, indented, as plain text."""
        if self.out.is_terminal:
            from rich.panel import Panel

            self.out.print(Panel("\n".join(lines), title=f"[bold]{title}[/]", title_align="left", border_style=style or "none",
                                 style=style or "none", expand=False))
            return
        self._print_data(f"[bold]{title}[/]")
        self._print_data("\n".join(f"  {line}" if line else "" for line in lines))

    def tsv(self, header: list[str], rows: list[list[Any]]) -> None:
        """Rows as tab-separated lines with a header, on stdout (for a pipe)."""
        self.out.file.write(tsv(header, rows))
        self.out.file.flush()

    def plain(self, line: str) -> None:
        """One line on stdout exactly as given — never wrapped, so it can be copied whole."""
        self.out.file.write(line + "\n")
        self.out.file.flush()

    @property
    def data_width(self) -> int:
        """The width the data is laid out for: the terminal's, or ``COLUMNS`` / 80 in a pipe."""
        return self.out.width

    @property
    def data_to_terminal(self) -> bool:
        """Does the data go to a person's terminal (Rich tables), rather than a pipe or file?"""
        return self.out.is_terminal

    def data(self, obj: Any) -> None:
        """Machine output on stdout: one JSON value."""
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    # -- helpers ----------------------------------------------------------------------
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

        from stsync.errors import NotConfirmed, UsageError

        if not self.can_ask:
            raise UsageError(refusal)
        if not typer.confirm(question, err=True):
            raise NotConfirmed("not confirmed; nothing was changed")

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
