"""Text for a terminal, word-wrapped as it streams in: nothing cropped, nothing redrawn.

A model's answer arrives a few characters at a time. ``WrapWriter`` writes it straight to the
terminal, append-only, breaking lines at spaces before a word would cross the right edge, so
a streamed answer of any length is on the screen whole and scrolls like ``cat``'s output.
Every character of the text is written, except a space that falls at a line break (the break
stands for it); a control character that a terminal would act on is written as its visible
stand-in (``shown``). A word
wider than the screen is folded; each double-width character (CJK) is a break point of its
own, so Chinese text streams as it comes instead of a line at a time.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len

TAB = 8


def shown(ch: str) -> str:
    """How ``ch`` is written to a terminal: itself, or for a control character the terminal
    would act on (backspace, escape, carriage return, ...) its visible stand-in from Unicode's
    Control Pictures (``␈``, ``␛``, ``␍``), so that it is seen and cannot move the cursor."""
    o = ord(ch)
    if o < 0x20 and ch not in "\n\t":
        return chr(0x2400 + o)
    if o == 0x7F:
        return "\u2421"  # ␡
    if 0x80 <= o < 0xA0:  # C1 controls: no pictures of their own
        return "\ufffd"
    return ch


class WrapWriter:
    """Feed text pieces with ``feed``; ``write`` receives them wrapped to ``width()`` columns.

    ``width`` is read again for every piece, so a terminal resized mid-answer wraps the rest
    at its new width. Call ``close`` at the end: it writes the held-back last word and ends
    the last line.
    """

    def __init__(self, write: Callable[[str], None], width: Callable[[], int]) -> None:
        self._write = write
        self._width = width
        self.col = 0  # cells on the current screen line
        self._word = ""  # a word held back until we know whether it fits on this line
        self._space = ""  # spaces after the last word written, not yet written
        self._broke = False  # the current line starts at a break we made (not a newline)

    def feed(self, text: str) -> None:
        """Wrap and write ``text`` (a partial word is held back until it is complete)."""
        width = max(self._width(), 10)
        for ch in map(shown, text):
            if ch == "\n":
                self._flush_word(width)
                self._space = ""
                if not (self._broke and self.col == 0):  # else our break already ended it
                    self._write("\n")
                self.col = 0
                self._broke = False
            elif ch == " " or ch == "\t":
                self._flush_word(width)
                self._space += ch
            elif cell_len(ch) > 1:  # a CJK character: a word of its own
                self._flush_word(width)
                self._word = ch
                self._flush_word(width)
            else:
                self._word += ch
                if cell_len(self._word) >= width:  # longer than a line: fold it here
                    self._flush_word(width)

    def close(self) -> None:
        """Write what is held back and end the line (if anything is on it)."""
        self._flush_word(max(self._width(), 10))
        if self.col:
            self._write("\n")
            self.col = 0
        self._space = ""

    def _spaces_width(self, start: int) -> int:
        col = start
        for s in self._space:
            col = (col // TAB + 1) * TAB if s == "\t" else col + 1
        return col - start

    def _flush_word(self, width: int) -> None:
        """Write the held word on this line if it fits after its spaces, else on the next."""
        if not self._word:
            return
        w = cell_len(self._word)
        gap = self._spaces_width(self.col)
        if self.col and self.col + gap + w > width:
            self._break()  # the break stands for the spaces
        elif self._space and not (self._broke and self.col == 0):
            self._write(self._space)
            self.col += gap
        self._space = ""
        self._write(self._word)
        self.col += w
        self._word = ""
        if self.col >= width:  # the terminal would wrap here itself; make it our break
            self._break()

    def _break(self) -> None:
        self._write("\n")
        self.col = 0
        self._broke = True


def wrap(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` columns as ``WrapWriter`` streams it (ends with a newline
    unless empty)."""
    out: list[str] = []
    w = WrapWriter(out.append, lambda: width)
    w.feed(text)
    w.close()
    return "".join(out)
