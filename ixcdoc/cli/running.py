"""A run as every model command draws it: the model loaded with a spinner, Ctrl-C as one line
and exit 130, the summary line at the end, exit 3 when some pages failed. ``run_job`` is the
one-machine run of ``ask``, ``extract`` and ``chart``; ``scale`` (``extract --ray``) and
``evaluate`` (``eval``) use the same pieces.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.text import Text

from ixcdoc.cli.app import err
from ixcdoc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ixcdoc.batch import BatchStats
    from ixcdoc.cli.options import RunOptions
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job

SAVED_PAGES = " (every finished page is saved; run the same command again to resume)"


def load_model(run: RunOptions, *, lines: bool = False) -> Any:
    """Load once per process, with a spinner on a terminal (for commands that hold a model
    themselves; the batch commands load through ``ixcdoc.batch.run``). ``lines``: also say
    "loading" off a terminal, and what was loaded in how long (unless ``quiet``)."""
    import time

    from ixcdoc.hub import model_name
    from ixcdoc.runtime import load

    what = f"loading {model_name(run.model)} ({run.quant.value}, {run.device})"
    t0 = time.perf_counter()
    if run.quiet or not err.is_terminal:
        if lines and not run.quiet:
            err.print(what, markup=False)
        dm = load(**run.load_args())
    else:
        with err.status(Text(what)):  # a folder named "ckpt[1]" is text, not markup
            dm = load(**run.load_args())
    if lines and not run.quiet:
        took = time.perf_counter() - t0
        err.print(f"loaded in {took:.1f} s: {dm.precision} on {dm.device}", markup=False)
    return dm


@contextlib.contextmanager
def interruptible(stop: Callable[[], None], *, hint: str | None) -> Iterator[None]:
    """Around a run: Ctrl-C stops the display and exits 130 with one line (and ``hint``, how
    to resume, when the results are saved); the display is stopped in every case."""
    try:
        yield
    except KeyboardInterrupt:
        stop()
        err.print(Text(f"interrupted{hint or ''}"), soft_wrap=not err.is_terminal)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        stop()


def summary_line(counts: Sequence[tuple[int, str]], where: str) -> None:
    """The line a run ends with on stderr: the first count always, the others when not zero
    (``[(3, "ok"), (1, "failed")]`` -> "3 ok, 1 failed"), then ``where``."""
    parts = [f"{n} {what}" for i, (n, what) in enumerate(counts) if n or i == 0]
    # On a terminal wrapped at spaces (no path or number broken mid-word); elsewhere one line.
    err.print(Text(", ".join(parts) + where), soft_wrap=not err.is_terminal)


def batch_counts(stats: BatchStats) -> list[tuple[int, str]]:
    """What a batch run did, for ``summary_line``: done, failed, blank, skipped."""
    return [
        (stats.ok, "ok"),
        (stats.failed, "failed"),
        (stats.blank, "blank"),
        (stats.skipped, "already done"),
        (stats.skipped_failed, "failed earlier (retry with --redo-failed)"),
    ]


def run_job(
    job: Job,
    sources: Sources,
    run: RunOptions,
    *,
    stream: bool,
    out_dir: Path | None = None,
    out_format: str = "md",
    workers: int = 0,
) -> None:
    """Run ``job`` over ``sources`` with the display; exit 0, 3 (some pages failed) or 130."""
    from ixcdoc.batch import run as run_batch
    from ixcdoc.cli.display import Display

    saved = run.output is not None or out_dir is not None
    display = Display(
        json_out=run.json_out,
        quiet=run.quiet,
        stream=stream,
        text_out=not saved,  # with -o or --out-dir the files are the output; stdout stays empty
        token_cap=job.new_tokens,
    )
    with interruptible(display.stop, hint=SAVED_PAGES if saved else None):
        stats = run_batch(
            job,
            sources,
            **run.load_args(),
            output=run.output,
            json_stream=sys.stdout if run.json_out else None,
            redo_failed=run.redo_failed,
            events=display,
            out_dir=out_dir,
            out_format=out_format,
            batch_size=run.slots,
            workers=workers,
        )
    if not run.quiet and (stats.pages > 1 or stats.skipped or stats.skipped_failed or saved):
        # Every run that writes files says where they went, first run or rerun.
        timing = display.summary()
        where = f"; {timing}" if timing else ""
        where += f"; records in {stats.records_path}" if stats.records_path else ""
        if out_dir is not None:
            where += f"; {stats.files_written} files written to {out_dir}"
        summary_line(batch_counts(stats), where)
    if stats.any_failed:
        raise typer.Exit(EXIT_PARTIAL)
