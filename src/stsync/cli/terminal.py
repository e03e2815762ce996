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
``NO_COLOR`` is honoured by Rich itself. Under ``run`` and ``serve`` with the json log format
(``structured``), every line of text — talk or data — becomes a log record instead, and
tables, which have no line form, are left out.

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
from rich.text import Text

from stsync.cli.tables import Column, fitted_table, tsv
from stsync.progress import Progress

T = TypeVar("T")


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

    def always(self, renderable: Any) -> None:
        """Talk that ``-q`` keeps (stderr): a dry run's summary, whose stdout is the body."""
        if not self._record(logging.INFO, renderable):
            self.err.print(renderable)

    def debug(self, message: str) -> None:
        if self.verbosity > 0 and not self._record(logging.DEBUG, escape(message)):
            self.err.print(f"[dim]{escape(message)}[/]")

    def print(self, renderable: Any) -> None:
        """Talk for people (an explanation, a banner): stderr, silenced by ``-q``."""
        if not self.quiet and not self._record(logging.INFO, renderable):
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
        if self._record(logging.INFO, renderable):
            return
        if self.out.is_terminal:
            self.out.print(renderable, soft_wrap=soft_wrap)
            return
        # A pipe or a file: plain text without the padding Rich leaves at the end of lines.
        if isinstance(renderable, str) and soft_wrap is not False and self.out.soft_wrap:
            # Nothing is wrapped: the markup's plain text (tabs expanded) is what print would
            # write, at a third of its cost (a 1,000-lead push's lines, after the pushes).
            rendered = self.out.render_str(renderable)
            rendered.expand_tabs(self.out.tab_size)
            printed = rendered.plain + "\n"
        else:
            with self.out.capture() as captured:
                self.out.print(renderable, soft_wrap=soft_wrap)
            printed = captured.get()
        self.out.file.write("".join(line.rstrip() + "\n" for line in printed.splitlines()))
        self.out.file.flush()

    def boxed(self, title: str, lines: list[str], *, style: str = "") -> None:
        """A block under a title (a Setup Required banner, a referral's story): a box on a
        terminal; in a pipe or a file the title and its lines, indented, as plain text."""
        if self.out.is_terminal and not self.structured:
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

        from stsync.errors import NotConfirmed, UsageError

        if not self.can_ask:
            raise UsageError(refusal)
        if not self.confirm(question, default=False):
            raise NotConfirmed("not confirmed; nothing was changed")

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
