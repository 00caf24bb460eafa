"""What a batch run shows: the ``Events`` of ``ixcdoc.batch`` drawn with Rich.

Page text on stdout (records only with ``--json`` or ``-o``); progress, per-page notes and
errors on stderr. What a person sees on a terminal is the text the model produced, whole:

- one page alone (``ask``, ``chart``, a one-page ``extract``) streams as it is generated,
  word-wrapped to the terminal's width and written append-only (``cli/wrapping.py``), so an
  answer of any length scrolls like ``cat``'s output and nothing is redrawn or cropped;
- a run of several pages shows a live progress display (``cli/progress.py``: pages done and in
  flight, tokens, rates as means over the run, an ETA counted in tokens) and prints each page's
  text, wrapped, above it the moment the page finishes (on the batched engine, in finishing
  order); off a terminal, stdout gets the pages in input order, as ``--json`` does;
- notes, errors and the page headers wrap too; the progress display goes away at the end and
  the summary line takes its place. It is not drawn when stdout is a pipe: the reading program
  (``| cat``, ``| head``, ``| less``) may write to the same terminal between two redraws, which
  would then tear; the notes, one line per page, and the summary line still say how it goes.

The text is shown raw, never as Markdown: a ``*`` or ``#`` in a transcription is a character,
and what is on the screen is what goes to the file or the pipe.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from ixcdoc.batch import Events
from ixcdoc.cli.progress import RunProgress, from_drafts, page_name
from ixcdoc.cli.wrapping import WrapWriter, wrap

if TYPE_CHECKING:
    from ixcdoc.reading import PageItem
    from ixcdoc.records import PageRecord


def _stdout_is_pipe() -> bool:
    """Whether stdout is a pipe or a socket (another program reads it and may write to this
    terminal), not a terminal, a file or /dev/null."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def page_label(source: str, page: int | None, page_count: int | None) -> str:
    """``FILE page N/M`` with control characters in the file name shown escaped, so a
    newline in a name cannot break the ``==> ... <==`` header into two lines."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in source)
    return f"{shown} page {page}/{page_count}"


def page_note(rec: PageRecord) -> str:
    """The dim line under a page: where it is, tier and grid, tokens and speed, and flags."""
    notes = []
    if "blank" in rec.flags:
        notes.append("blank page: not sent to the model")
    if "repetition" in rec.flags:
        notes.append("stopped a repetition loop; output trimmed")
    if "tier_fallback" in rec.flags:
        notes.append(f"out of GPU memory; retried at HD{rec.tier}")
    if "low_dpi" in rec.flags:
        notes.append("rendered below the DPI its text needs (--max-pixels)")
    where = page_label(rec.source, rec.page, rec.page_count)
    tier = f", HD{rec.tier} {rec.grid[0]}x{rec.grid[1]}" if rec.grid else ""
    t = rec.timings
    speed = ""
    if t.decode_ms and t.tokens:
        speed = f", {t.tokens} tokens, {1000 * t.tokens / t.decode_ms:.1f} tok/s"
    if t.tokens and (t.draft_tokens or t.accepted_tokens):
        speed += ", " + from_drafts(t.accepted_tokens or 0, t.tokens)
    return f"({where}{tier}{speed}{'; ' + '; '.join(notes) if notes else ''})"


class Display(Events):
    """Text or records on stdout, progress and notes on stderr, as the options ask.

    ``token_cap``: the job's generation limit per page (the ETA's bound before any page has
    finished).
    """

    def __init__(
        self,
        *,
        json_out: bool,
        quiet: bool,
        stream: bool,
        text_out: bool = True,
        token_cap: int = 1024,
    ) -> None:
        self.json_out = json_out or not text_out  # records only: no text on stdout
        self.quiet = quiet
        self.markers = True
        self.tty = sys.stdout.isatty()
        self.stream = stream and not json_out
        self.counts = RunProgress(cap=token_cap)
        self.live: Any = None  # the progress display while a run of several pages goes
        self.waiting: Any = None  # a one-page run's spinner until its first text arrives
        self.writer: WrapWriter | None = None  # the page streaming now
        self.docs = 0
        self._shown: set[int] = set()  # pages whose record was drawn when they finished
        # People's console (stderr) wraps: a line Rich wraps itself is one it can count, so
        # lines printed above the live display never tear it or get cropped.
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False)  # results on a terminal (stdout)
        # Redrawn lines on stderr only where nothing else writes to the same terminal
        # meanwhile: not when stdout is a pipe (``| cat``, ``| head``, ``| less`` show their
        # lines on that terminal between the redraws, which then erase the wrong lines).
        self.animate = not quiet and self.err.is_terminal and not _stdout_is_pipe()

    # -- Events ----------------------------------------------------------------------------

    def loading(self, model: str) -> contextlib.AbstractContextManager[Any]:
        if self.quiet or not self.err.is_terminal:
            return contextlib.nullcontext()
        return self.err.status(Text(f"loading {model}"))

    def note(self, message: str) -> None:
        if not self.quiet:
            self._people(Text(message))

    def screening(self, source: str, pages: int) -> contextlib.AbstractContextManager[Any]:
        if not self.animate:
            return contextlib.nullcontext()
        from ixcdoc.tasks import SCREEN_HD

        what = f"screening {pages} page{'s' * (pages != 1)} of {source} at HD{SCREEN_HD}"
        return self.err.status(Text(f"{what} for the question"))

    def opened(self, source: str, pages: int, *, single: bool) -> None:
        self.docs += 1
        with self.counts.lock:
            self.counts.total += pages
        if self.docs == 1:
            self.markers = not single
            if not single:
                self._start_progress()

    def wants_text(self) -> bool:
        """Page text is shown live as it is generated: on a terminal, one page alone."""
        return self.stream and self.tty and self.live is None and not self.markers

    def page_started(self, item: PageItem, tier: int) -> None:
        self.counts.start(id(item), page_name(item.source, item.page))
        self._refresh()
        if self.writer is not None:  # a retry one tier lower after the text had started
            self.writer.close()
            self.writer = None
            self._people(Text(f"(out of GPU memory; starting again at HD{tier})", style="dim"))
        if self.wants_text():
            self.writer = WrapWriter(self._write_out, lambda: self.out.width)
            if not self.quiet and self.err.is_terminal and self.waiting is None:
                label = page_label(item.source, item.page, item.page_count)
                self.waiting = self.err.status(Text(f"reading {label} at HD{tier}"))
                self.waiting.start()

    def text(self, delta: str) -> None:
        self._stop_waiting()
        if self.writer is not None:
            self.writer.feed(delta)
            sys.stdout.flush()

    def token(self, item: PageItem) -> None:
        if self.counts.token(id(item)) == 1:  # a page's first token: the first rates and ETA
            self._refresh()

    def finished(self, item: PageItem, rec: PageRecord) -> None:
        self._stop_waiting()
        self._shown.add(id(item))
        ran = rec.status == "ok" and rec.grid is not None and rec.timings.tokens is not None
        t = rec.timings
        if ran:
            self.counts.end(id(item), t.tokens, t.draft_tokens or 0, t.accepted_tokens or 0)
        else:
            self.counts.end(id(item), None)
        if rec.status == "error":
            self._close_writer()
            assert rec.error is not None
            self._people(Text.assemble(("error:", "bold red"), " ", rec.error.message))
        elif not self.json_out:
            if self.tty:
                if self.writer is not None:  # streamed already: end its last line
                    self._close_writer()
                else:
                    self._page_text(rec)
            if not self.quiet:
                self._people(Text(page_note(rec), style="dim"))
        self._refresh()

    def record(self, item: PageItem, rec: PageRecord) -> None:
        if id(item) not in self._shown:  # a caller that reports records only (Ray)
            self.finished(item, rec)
        self._shown.discard(id(item))
        if rec.status == "ok" and not self.json_out and not self.tty:
            if self.markers:
                sys.stdout.write(f"==> {page_label(rec.source, rec.page, rec.page_count)} <==\n")
            sys.stdout.write((rec.text or "") + "\n")
            sys.stdout.flush()

    def skipped(self, item: PageItem) -> None:
        self.counts.end(id(item), None)
        self._refresh()

    # -- the end ---------------------------------------------------------------------------

    def stop(self) -> None:
        """End the streamed text and the progress display (before the summary line)."""
        self._stop_waiting()
        self._close_writer()
        if self.live is not None:
            self.live.stop()
            self.live = None

    def summary(self) -> str:
        """The run's means for the summary line ("" when the model finished no page)."""
        return self.counts.summary()

    # -- drawing ---------------------------------------------------------------------------

    def _start_progress(self) -> None:
        if not self.animate:
            return
        from rich.live import Live

        self.live = Live(
            self.counts,
            console=self.err,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def _refresh(self) -> None:
        """Redraw now: every page that starts or ends is drawn, besides the timed redraws."""
        if self.live is not None:
            self.live.refresh()

    def _stop_waiting(self) -> None:
        if self.waiting is not None:
            self.waiting.stop()
            self.waiting = None

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            sys.stdout.flush()

    def _write_out(self, s: str) -> None:
        sys.stdout.write(s)

    def _people(self, text: Text) -> None:
        """A line for people on stderr: on a terminal wrapped to its width (above the progress
        display if it is live); elsewhere one line, as logs and ``grep`` want it."""
        self.err.print(text, soft_wrap=not self.err.is_terminal)

    def _page_text(self, rec: PageRecord) -> None:
        """A finished page on a terminal: its header and its text, wrapped to the width.

        With the progress display live, both screens are one terminal and the text goes
        through the display's console (stderr) so it lands above the display instead of
        tearing it; otherwise to stdout.
        """
        console = self.err if self.live is not None else self.out
        if self.markers:
            label = page_label(rec.source, rec.page, rec.page_count)
            if cell_len(label) + 6 <= console.width:
                console.rule(Text(label), style="dim")
            else:
                console.print(Text(label, style="bold"), soft_wrap=False)
        body = wrap(rec.text or "", console.width)
        if body:
            # Already wrapped to the width: printed as it is, every line fits.
            console.print(Text(body.removesuffix("\n")), soft_wrap=True)
