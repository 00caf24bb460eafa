"""What a batch run shows: the ``Events`` of ``ixcdoc.batch`` drawn with Rich.

Streamed text or page text on stdout (records only with ``--json`` or ``-o``); the progress
bar, per-page notes and errors on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ixcdoc.batch import Events
from ixcdoc.cli.app import err

if TYPE_CHECKING:
    from ixcdoc.reading import PageItem
    from ixcdoc.records import PageRecord


def page_label(source: str, page: int | None, page_count: int | None) -> str:
    """``FILE page N/M`` with control characters in the file name shown escaped, so a
    newline in a name cannot break the ``==> ... <==`` header into two lines."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in source)
    return f"{shown} page {page}/{page_count}"


class Display(Events):
    """Text or records on stdout, progress and notes on stderr, as the options ask."""

    def __init__(self, *, json_out: bool, quiet: bool, stream: bool, text_out: bool = True) -> None:
        self.json_out = json_out or not text_out  # records only: no text on stdout
        self.quiet = quiet
        self.markers = True
        self.tty = sys.stdout.isatty()
        self.stream = stream and not json_out
        self.progress: Any = None
        self.task_id: Any = None
        self.live: Any = None
        self.text_so_far = ""
        self.total = 0
        self.docs = 0
        self.out = Console(highlight=False, soft_wrap=True)

    # -- Events ----------------------------------------------------------------------------

    def loading(self, model: str) -> contextlib.AbstractContextManager[Any]:
        if self.quiet or not err.is_terminal:
            return contextlib.nullcontext()
        return err.status(f"loading {model}")

    def note(self, message: str) -> None:
        if not self.quiet:
            self._console().print(message, markup=False)

    def opened(self, source: str, pages: int, *, single: bool) -> None:
        self.docs += 1
        self.total += pages
        if self.docs == 1:
            self.markers = not single
            if not single:
                self._start_progress()
        if self.progress is not None:
            self.progress.update(self.task_id, total=self.total)

    def wants_text(self) -> bool:
        """Page text is shown live as it is generated: on a terminal, without a progress bar."""
        return self.stream and self.tty and self.progress is None

    def page_started(self, item: PageItem, tier: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, description=f"{item.source} p{item.page} HD{tier}")
        if self.live is not None:  # a retry at a lower tier: drop the partial text
            self.live.stop()
            self.live = None
        self.text_so_far = ""
        if self.wants_text():
            from rich.live import Live
            from rich.markdown import Markdown

            if self.markers:  # the header goes above the text that streams under it
                self.out.rule(page_label(item.source, item.page, item.page_count), style="dim")
            self.live = Live(Markdown(""), console=self.out, refresh_per_second=8)
            self.live.start()

    def text(self, delta: str) -> None:
        self.text_so_far += delta
        if self.live is not None:
            from rich.markdown import Markdown

            self.live.update(Markdown(self.text_so_far))

    def record(self, item: PageItem, rec: PageRecord) -> None:
        streamed = self.live is not None
        if streamed:
            self.live.stop()
            self.live = None
        if rec.status == "error":
            assert rec.error is not None
            from rich.markup import escape  # a file name like "scan[1].pdf" is not markup

            self._console().print(f"[bold red]error:[/] {escape(rec.error.message)}", markup=True)
        elif not self.json_out:
            self._page_text(rec, streamed)
            if not self.quiet:
                self._page_note(rec)
        self._advance()

    def skipped(self, item: PageItem) -> None:
        self._advance()

    # -- drawing ---------------------------------------------------------------------------

    def _page_text(self, rec: PageRecord, streamed: bool) -> None:
        where = page_label(rec.source, rec.page, rec.page_count)
        if self.markers and not streamed:
            if self.tty:
                self._screen().rule(where, style="dim")
            else:
                sys.stdout.write(f"==> {where} <==\n")
        if self.tty and not streamed:
            from rich.markdown import Markdown

            self._screen().print(Markdown(rec.text or ""))
        elif not self.tty:
            sys.stdout.write((rec.text or "") + "\n")
            sys.stdout.flush()

    def _page_note(self, rec: PageRecord) -> None:
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
        msg = f"({where}{tier}{speed}{'; ' + '; '.join(notes) if notes else ''})"
        self._console().print(msg, style="dim", markup=False)

    def _start_progress(self) -> None:
        if self.quiet or not err.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self.progress.start()
        self.task_id = self.progress.add_task("pages", total=self.total, rate="")

    def _advance(self) -> None:
        if self.progress is not None:
            t = self.progress.tasks[0]
            self.progress.advance(self.task_id)
            speed = t.finished_speed or t.speed
            self.progress.update(self.task_id, rate=f"{speed:.2f} pages/s" if speed else "")

    def stop(self) -> None:
        """End the live text and the progress bar (before the summary line)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _console(self) -> Console:
        """stderr, through the progress bar's console while it is live."""
        return self.progress.console if self.progress is not None else err

    def _screen(self) -> Console:
        """Where results go on a terminal: above the live progress bar while it runs.

        A second Console on stdout would write past Rich's live display and tear the bar;
        both streams are the same terminal here, so the progress console prints them.
        """
        return self.progress.console if self.progress is not None else self.out
