"""Data lines in a pipe: a string's markup becomes the plain text Rich itself would print
(tabs, emoji codes, escapes, wide characters, blank lines), with no padding at line ends,
without going through Rich's layout (``Terminal._print_data``)."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console
from rich.markup import escape

from stsync.cli.terminal import Terminal

LINES = [
    "[green]✓[/] ann@example.com (AbC12345): created booking #5550001",
    "[red]✗[/] " + escape("[odd] name") + ": failed: " + escape("a [bracket] and a back\\slash"),
    "tab\tseparated\t[cyan]cells[/]\tend",
    "emoji :thumbs_up: and 名前 (wide)",
    "trailing spaces   ",
    "two\nlines\n\nand a blank one",
    "",
    "[bold link=https://example.com]a link[/]",
    "w" * 300,  # longer than the width: never broken (soft wrap)
]


def rich_would_print(renderable: str) -> str:
    console = Console(file=io.StringIO(), highlight=False, soft_wrap=True, width=80)
    with console.capture() as captured:
        console.print(renderable)
    return "".join(line.rstrip() + "\n" for line in captured.get().splitlines())


@pytest.mark.parametrize("line", LINES)
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_data_line_in_a_pipe_is_what_rich_would_print(line, json_mode, monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("COLUMNS", "80")
    terminal = Terminal(json_mode=json_mode)
    terminal.summary(line)
    # With --json the data lines are talk on stderr; stdout is the JSON object's alone.
    written = (err if json_mode else out).getvalue()
    assert written == rich_would_print(line)
    assert (out if json_mode else err).getvalue() == ""


def test_the_fast_path_skips_richs_layout(monkeypatch):
    """A thousand lines as one string: Rich's print (the layout) is not called for it."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    terminal = Terminal()
    printed: list[object] = []
    monkeypatch.setattr(terminal.out, "print", lambda *args, **kwargs: printed.append(args))
    block = "\n".join(f"[green]✓[/] lead{i}@example.com: created booking #{i}" for i in range(1000))
    terminal.summary(block)
    assert printed == []
    assert sys.stdout.getvalue().splitlines()[999] == "✓ lead999@example.com: created booking #999"
