"""Tables that fit the terminal: a column is shown whole or not at all, never broken mid-word.

Each column has a rank: rank 0 is always shown, the others are added in rank order for as
long as each one's widest cell still fits beside the columns already chosen (so what is
hidden is always the least important); shown columns keep the table's own order. At most one
column is prose: it may wrap at spaces and gets the room that is left, at least its longest
word. Headers wrap at their spaces ("native WxH" over two lines) when that shows more
columns or gives the prose more room. ``wide`` shows every column at its full width: the
table is as wide as it needs and the terminal wraps it. What is hidden is named in one dim
note on stderr."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

GAP = 2  # spaces between columns
PROSE_ROOM = 24  # a prose column keeps this much room before a ranked column may take it


@dataclass(frozen=True)
class Column:
    """One column: its header, its rank (0: always shown) and how its cells are laid out."""

    header: str
    rank: int
    justify: str = "right"
    prose: bool = False  # wraps at spaces


@dataclass(frozen=True)
class Layout:
    """The columns chosen for a width, with the width each gets."""

    shown: list[int]  # indices into the columns, in table order
    widths: list[int]  # one per shown column
    hidden: list[str]  # headers of the columns left out, in table order

    @property
    def width(self) -> int:
        """The table's width in cells."""
        return sum(self.widths) + GAP * (len(self.widths) - 1)


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> Layout:
    """Choose the columns and their widths for a terminal ``width`` (None: every column)."""
    cells = [[cell_len(r[i]) for r in rows] for i in range(len(columns))]

    def need(i: int, compact: bool) -> int:
        c = columns[i]
        head = _longest_word(c.header) if compact else cell_len(c.header)
        if c.prose:
            return max(head, max((_longest_word(r[i]) for r in rows), default=0))
        return max(head, max(cells[i], default=0))

    def full(i: int, compact: bool) -> int:  # a prose column's room on one line per cell
        return max(need(i, compact), max(cells[i], default=0))

    def layout(shown: list[int], compact: bool, room: int | None) -> Layout:
        shown = sorted(shown)
        widths = [full(i, compact) if room is None else need(i, compact) for i in shown]
        hidden = [columns[i].header for i in range(len(columns)) if i not in shown]
        prose = [k for k, i in enumerate(shown) if columns[i].prose]
        if prose and room is not None:  # the prose column takes what is left, up to one line
            k = prose[0]
            rest = room - (sum(widths) - widths[k]) - GAP * (len(widths) - 1)
            widths[k] = max(widths[k], min(full(shown[k], compact), rest))
        return Layout(shown, widths, hidden)

    everything = list(range(len(columns)))
    if width is None:
        return layout(everything, False, None)

    def chosen(compact: bool) -> list[int]:
        def total(shown: list[int]) -> int:
            room = [
                min(full(i, compact), max(need(i, compact), PROSE_ROOM))
                if columns[i].prose
                else need(i, compact)
                for i in shown
            ]
            return sum(room) + GAP * (len(room) - 1)

        shown = [i for i in everything if columns[i].rank == 0]
        for i in sorted((i for i in everything if columns[i].rank), key=lambda i: columns[i].rank):
            if total([*shown, i]) > width:
                break  # hidden columns are always the least important ones
            shown.append(i)
        return shown

    # Headers stay on one line unless wrapping them shows more columns, gives the prose
    # column more room, or is the only way to fit at all.
    loose, tight = layout(chosen(False), False, width), layout(chosen(True), True, width)

    def prose_width(lay: Layout) -> int:
        return sum(w for i, w in zip(lay.shown, lay.widths, strict=True) if columns[i].prose)

    if len(tight.shown) != len(loose.shown):
        return tight if len(tight.shown) > len(loose.shown) else loose
    if prose_width(tight) > prose_width(loose) or tight.width <= width < loose.width:
        return tight
    return loose


def _table(columns: Sequence[Column], lay: Layout, header: bool) -> Table:
    t = Table(
        box=None,
        show_header=header,
        show_edge=False,
        pad_edge=False,
        padding=(0, GAP // 2),
        collapse_padding=False,
    )
    for i, w in zip(lay.shown, lay.widths, strict=True):
        c = columns[i]
        t.add_column(c.header, justify=c.justify, width=w)  # type: ignore[arg-type]
    return t


def print_table(
    out: Console,
    err: Console,
    title: str,
    columns: Sequence[Column],
    groups: Sequence[tuple[str | None, Sequence[Sequence[str]]]],
    *,
    wide: bool,
) -> None:
    """Print ``groups`` of rows under one header, each group under its name (None: none),
    fitted to ``out``'s width (or every column with ``wide``); name hidden columns on ``err``."""
    rows = [r for _, rs in groups for r in rs]
    term = out.width
    lay = fit(columns, rows, None if wide else term)
    out.print(Text(title, style="italic"))
    out.width = max(term, lay.width)  # never squeezed by Rich: the terminal wraps instead
    try:
        out.print(_table(columns, lay, header=True))
        for name, rs in groups:
            if name is not None:
                out.print(Text(name, style="bold"), soft_wrap=True)  # wrapped by the terminal
            t = _table(columns, lay, header=False)
            for r in rs:
                t.add_row(*(Text(r[i]) for i in lay.shown))
            out.print(t)
    finally:
        out.width = term
    if lay.hidden:
        note = f"hidden at {term} columns: {', '.join(lay.hidden)} (--wide shows them)"
        err.print(Text(note, style="dim"), soft_wrap=False)  # wrapped at spaces
