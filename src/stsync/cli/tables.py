"""Tables that fit the width they get — a terminal's, or 80 columns in a pipe or a cron mail —
without cutting an identifier.

A column says what it holds (``Column.role``):

- ``ID``: an e-mail, an External Id, a booking number. Never wrapped, never shortened, never
  dropped: a person copies it into ServiceTitan's search or ``diagnose --email``.
- ``LABEL``: a short word or two (an outcome, a status). Wraps at words only when it must.
- ``TEXT``: prose (an error, a check's result). Wraps at words, never narrower than its
  ``min_width`` (an error wrapped one word per line cannot be read).

When the columns do not fit, the ones with a ``drop_order`` go, lowest first; a dropped
``note`` column (an error) moves under the table as numbered notes, its row marked ``[n]``.
Still too wide, a long word inside a text (a path) may be folded; and if the identifiers
alone do not fit, each row becomes a block of ``Header: value`` lines.

Rich draws the result: on a terminal with a bold header, in a pipe as plain aligned text (no
borders, no colour) — the same text a person reads in a cron mail or ``> file.txt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

GAP = 2  # spaces between two columns


class Role(Enum):
    ID = "id"
    LABEL = "label"
    TEXT = "text"


@dataclass(frozen=True)
class Column:
    header: str
    role: Role = Role.TEXT
    min_width: int = 20  # TEXT only
    drop_order: int | None = None  # None: always shown
    note: bool = False  # dropped, its cells become numbered notes under the table


Cell = str | Text


def _text(cell: Cell) -> Text:
    return cell.copy() if isinstance(cell, Text) else Text(cell)


def _natural(cells: Sequence[Text], header: str) -> int:
    """The width a column takes with nothing wrapped."""
    widths = [len(header)] + [max((len(line) for line in cell.plain.splitlines()), default=0) for cell in cells]
    return max(widths)


# A word up to this long (an e-mail or an id inside a message) keeps its column at least that
# wide; a longer one (a URL, a path) may be folded rather than widen the column further.
LONGEST_WORD_KEPT = 40


def _narrowest(column: Column, natural: int, cells: Sequence[Text], *, whole_words: bool) -> int:
    """Text wraps at words: never narrower than its ``min_width``, its header or (``whole_words``)
    its longest word up to ``LONGEST_WORD_KEPT``, nor wider than it needs."""
    longest_word = max((len(word) for cell in [Text(column.header), *cells] for word in cell.plain.split()), default=0)
    if column.role is Role.TEXT:
        kept = min(longest_word, LONGEST_WORD_KEPT) if whole_words else 0
        return min(natural, max(column.min_width, len(column.header), kept))
    if column.role is Role.LABEL:
        return min(natural, longest_word)
    return natural


def fitted_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int, *, title: str | None = None
) -> RenderableType:
    """``rows`` (one cell per column) as a table at most ``width`` wide (see the module docstring)."""
    cells = [[_text(cell) for cell in row] for row in rows]
    original = [[cell.copy() for cell in row] for row in cells]
    shown = list(range(len(columns)))
    notes: list[Text] = []
    while True:
        widths = _widths(columns, cells, shown, width, whole_words=True)
        if widths is not None:
            break
        droppable = [i for i in shown if columns[i].drop_order is not None]
        if not droppable:
            widths = _widths(columns, cells, shown, width, whole_words=False)
            if widths is not None:
                break
            return _records(columns, original, title)
        dropped = min(droppable, key=lambda i: columns[i].drop_order or 0)
        shown.remove(dropped)
        if columns[dropped].note:
            notes.extend(_move_to_notes(columns, cells, shown, dropped, len(notes)))
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        header_style="bold",
        box=None,
        pad_edge=False,
        padding=(0, GAP // 2),
        show_edge=False,
    )
    for i, w in zip(shown, widths, strict=True):
        table.add_column(columns[i].header, width=w, no_wrap=columns[i].role is Role.ID, overflow="fold")
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    if not notes:
        return table
    return Group(table, Text(""), *notes)


def _widths(
    columns: Sequence[Column], cells: list[list[Text]], shown: list[int], width: int, *, whole_words: bool
) -> list[int] | None:
    """Each shown column's width, or None when they do not fit in ``width``."""
    natural = [_natural([row[i] for row in cells], columns[i].header) for i in shown]
    narrowest = [
        _narrowest(columns[i], n, [row[i] for row in cells], whole_words=whole_words) for i, n in zip(shown, natural, strict=True)
    ]
    room = width - GAP * (len(shown) - 1)
    if sum(narrowest) > room:
        return None
    widths = list(narrowest)
    spare = room - sum(widths)
    # Labels get their width back first (a wrapped label is the worst read). Then each text
    # column that can be made whole is, the one lacking least first; what is left goes to the
    # text lacking most (the prose: an error, a check's result).
    for k, i in enumerate(shown):
        if columns[i].role is Role.LABEL:
            grow = min(spare, natural[k] - widths[k])
            widths[k] += grow
            spare -= grow
    texts = sorted((k for k, i in enumerate(shown) if columns[i].role is Role.TEXT), key=lambda k: natural[k] - widths[k])
    for k in texts:
        if natural[k] - widths[k] <= spare:
            spare -= natural[k] - widths[k]
            widths[k] = natural[k]
    if texts and spare > 0:
        widest = texts[-1]
        widths[widest] += min(spare, natural[widest] - widths[widest])
    return widths


def _move_to_notes(
    columns: Sequence[Column], cells: list[list[Text]], shown: list[int], dropped: int, numbered: int
) -> list[Text]:
    """The dropped column's cells as notes ``[n] text``; the row's first label gets ``[n]``."""
    marker_column = next((i for i in shown if columns[i].role is Role.LABEL), shown[0] if shown else None)
    notes: list[Text] = []
    for row in cells:
        text = row[dropped]
        if not text.plain.strip():
            continue
        mark = f"[{numbered + len(notes) + 1}]"
        if marker_column is not None:
            row[marker_column] = Text.assemble(row[marker_column], " ", mark)
        notes.append(Text.assemble(mark, " ", text))
    return notes


def _records(columns: Sequence[Column], cells: list[list[Text]], title: str | None) -> RenderableType:
    """Too narrow for a table: each row as ``Header: value`` lines, a blank line between rows."""
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    for n, row in enumerate(cells):
        if n:
            parts.append(Text(""))
        for column, cell in zip(columns, row, strict=True):
            if cell.plain.strip():
                line = Text.assemble((f"{column.header}: ", "bold"), cell)
                if column.role is Role.ID:
                    line.no_wrap, line.overflow = True, "ignore"  # longer than the width: still whole
                parts.append(line)
    return Group(*parts)


def tsv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Tab-separated lines, a header first: for ``cut -f``, ``grep`` and spreadsheets. A tab or
    line break inside a value becomes a space (one record, one line); None is empty."""

    def field(value: object) -> str:
        return "" if value is None else " ".join(str(value).split()) if any(c in str(value) for c in "\t\r\n") else str(value)

    return "".join("\t".join(field(v) for v in line) + "\n" for line in [list(header), *rows])
