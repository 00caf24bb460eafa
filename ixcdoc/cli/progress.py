"""What a batch run has done and is doing, measured from the events, and drawn to fit.

``RunProgress`` counts pages (known, finished, skipped, in flight) and generated tokens as the
events arrive; every rate is a mean over the run, never a recent sample. The ETA is counted in
tokens, so it moves from the first decoded token, long before the first page finishes: the
tokens still to come (each page in flight up to the mean length of the finished pages, or the
token cap before any has finished; each page not started yet, the same) over the run's mean
tokens per second. Before any page has finished it is an upper bound, and it says so.

The drawing (``__rich_console__``) packs short items into lines no wider than the terminal,
so nothing is ever cropped: a bar, pages done/total and the ETA; the pages in flight by name
(as many as fit, then ``+N more``); tokens, tokens/s and pages/s, and how many of the draft
the finished pages' tokens the model accepted from drafts (speculative decoding).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text


@dataclass
class _Running:
    label: str
    tokens: int = 0


def clock(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate(x: float) -> str:
    """A rate to three significant digits, without exponent notation."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


def from_drafts(accepted: int, tokens: int, *, short: bool = False) -> str:
    """``61% of tokens from drafts`` (``short``: ``61% from drafts``, for the live display's
    narrowest screens): the share of ``tokens`` generated tokens the model accepted from
    drafts instead of decoding each in a step of its own, floored."""
    share = 100 * accepted // tokens if tokens else 0
    return f"{share}% from drafts" if short else f"{share}% of tokens from drafts"


def pack(items: Iterable[str], width: int, sep: str = " · ") -> list[str]:
    """``items`` joined by ``sep`` into lines of at most ``width`` cells; an item never splits
    (one wider than ``width`` gets a line of its own, which the terminal wraps)."""
    lines: list[str] = []
    for item in items:
        if lines and cell_len(lines[-1]) + cell_len(sep) + cell_len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


@dataclass
class RunProgress:
    """Counts for the progress display. ``cap``: the job's token limit per page."""

    cap: int
    now: Callable[[], float] = time.monotonic
    total: int = 0  # pages known so far (documents are opened as the run goes)
    done: int = 0  # pages with a record: finished in this run, failed, or skipped
    finished: int = 0  # pages the model finished in this run
    tokens: int = 0  # tokens generated in this run (a retried page's first try too)
    started: float | None = None  # when the model started its first page
    lengths: list[int] = field(default_factory=list)  # tokens of each page the model finished
    # speculative decoding: whether a finished page had a draft or accepted a proposal, and
    # the tokens of finished pages the model accepted from drafts
    drafting: bool = False
    accepted: int = 0
    running: dict[int, _Running] = field(default_factory=dict)
    # The display redraws on its own thread: counting and drawing take turns.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- counting --------------------------------------------------------------------------

    def start(self, key: int, label: str) -> None:
        """The model started (or restarted, one tier lower) a page."""
        with self.lock:
            if self.started is None:
                self.started = self.now()
            self.running[key] = _Running(label)

    def token(self, key: int) -> int:
        """The page ``key`` generated one more token; its count so far (0: not running)."""
        with self.lock:
            self.tokens += 1
            page = self.running.get(key)
            if page is None:
                return 0
            page.tokens += 1
            return page.tokens

    def end(self, key: int, tokens: int | None, drafted: int = 0, accepted: int = 0) -> None:
        """A page has its record; ``tokens``: what the model generated for it (None: no
        model work, e.g. a blank or unreadable page), ``drafted``: its draft's tokens,
        ``accepted``: the tokens of ``tokens`` the model accepted from drafts."""
        with self.lock:
            self.running.pop(key, None)
            self.done += 1
            if tokens is not None:
                self.finished += 1
                self.lengths.append(tokens)
                self.drafting = self.drafting or bool(drafted or accepted)
                self.accepted += accepted

    # -- what the numbers say --------------------------------------------------------------

    def elapsed(self) -> float:
        return 0.0 if self.started is None else max(self.now() - self.started, 1e-9)

    def tokens_per_s(self) -> float | None:
        t = self.elapsed()
        return self.tokens / t if self.tokens and t > 0 else None

    def pages_per_s(self) -> float | None:
        t = self.elapsed()
        return self.finished / t if self.finished and t > 0 else None

    def eta(self) -> tuple[float, bool] | None:
        """(seconds left, exact estimate?) from tokens; None before the first token. The
        second value is False while no page has finished (the cap makes it an upper bound)."""
        tps = self.tokens_per_s()
        if tps is None:
            return None
        per_page = sum(self.lengths) / len(self.lengths) if self.lengths else float(self.cap)
        waiting = max(self.total - self.done - len(self.running), 0)
        left = sum(max(per_page - p.tokens, 0.0) for p in self.running.values())
        left += waiting * per_page
        return left / tps, bool(self.lengths)

    def summary(self) -> str:
        """The run's means for the closing line: ``3 pages in 1:02, 0.05 pages/s, 912 tokens,
        14.7 tok/s``, then ``61% of tokens from drafts (3,402 of 5,577)`` when a page had a
        draft or accepted one ("" when the model finished no page)."""
        parts = []
        if self.finished and self.started is not None:
            n = self.finished
            parts.append(f"{n} page{'s' * (n != 1)} in {clock(self.elapsed())}")
            pps, tps = self.pages_per_s(), self.tokens_per_s()
            if pps:
                parts.append(f"{rate(pps)} pages/s")
            parts.append(f"{self.tokens:,} tokens")
            if tps:
                parts.append(f"{rate(tps)} tok/s")
        if self.drafting:
            written = sum(self.lengths)
            share = from_drafts(self.accepted, written)
            parts.append(f"{share} ({self.accepted:,} of {written:,})")
        return ", ".join(parts)

    # -- drawing ---------------------------------------------------------------------------

    def lines(self, width: int) -> list[str]:
        """The display as plain lines, none wider than ``width`` (short items never split)."""
        head = [f"{self.done}/{self.total} pages"]
        eta = self.eta()
        if eta is not None:
            head.append(f"eta {'' if eta[1] else '< '}{clock(eta[0])}")
        elif self.total > self.done:
            head.append("eta -:--")
        if self.started is not None:
            head.append(clock(self.elapsed()))
        text = " · ".join(head)
        bar = min(40, width - cell_len(text) - 1)
        out = []
        if bar >= 10:
            filled = bar * self.done // self.total if self.total else 0
            out.append("━" * filled + "─" * (bar - filled) + " " + text)
        else:
            out.extend(pack(head, width))
        if self.running:
            out.extend(self._running_lines(width))
        stats = []
        if self.tokens:
            stats.append(f"{self.tokens:,} tokens")
        tps, pps = self.tokens_per_s(), self.pages_per_s()
        if tps:
            stats.append(f"{rate(tps)} tok/s")
        if pps:
            stats.append(f"{rate(pps)} pages/s")
        if self.drafting:
            stats.append(from_drafts(self.accepted, sum(self.lengths), short=True))
        out.extend(pack(stats, width))
        return out

    def _running_lines(self, width: int) -> list[str]:
        """``running 3: a.pdf p1 (52 tok), b.png p1 (7 tok), +1 more`` on one line."""
        pages = list(self.running.values())
        head = f"running {len(pages)}"
        names = [f"{p.label} ({p.tokens} tok)" for p in pages]
        line = head + ": "
        shown = 0
        for i, name in enumerate(names):
            rest = len(names) - i - 1
            tail = f", +{rest} more" if rest else ""
            piece = ("" if shown == 0 else ", ") + name
            if cell_len(line + piece + tail) > width:
                break
            line += piece
            shown += 1
        if shown == 0:
            return [head] if cell_len(head) <= width else pack([head], width)
        if shown < len(names):
            line += f", +{len(names) - shown} more"
        return [line]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self.lock:
            lines = self.lines(options.max_width)
        first = Text(lines[0])
        bar = len(lines[0]) - len(lines[0].lstrip("━─"))
        first.stylize("green", 0, lines[0].count("━", 0, bar))
        first.stylize("grey37", lines[0].count("━", 0, bar), bar)
        yield first
        for line in lines[1:]:
            yield Text(line, style="dim")


def page_name(source: str, page: int | None) -> str:
    """A page as the progress names it: the file's own name and the page number."""
    name = os.path.basename(source.rstrip("/")) or source
    shown = "".join(c if c.isprintable() else "?" for c in name)
    return shown if page is None else f"{shown} p{page}"
