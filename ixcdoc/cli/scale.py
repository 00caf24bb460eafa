"""``extract --ray``: the options to a Ray run, drawn with the same display as one machine."""

from __future__ import annotations

import sys

import typer

from ixcdoc.cli.options import PageOptions, RunOptions
from ixcdoc.cli.running import SAVED_PAGES, batch_counts, interruptible, summary_line
from ixcdoc.errors import EXIT_PARTIAL
from ixcdoc.pagerun import Job


def run_ray_job(
    job: Job,
    paths: list[str],
    inputs: PageOptions,
    run: RunOptions,
    *,
    address: str | None,
    replicas: int | None,
    verbose: bool,
) -> None:
    """Run ``job`` on Ray; the summary line and exit codes are those of one machine."""
    from ixcdoc.cli.display import Display
    from ixcdoc.distributed import RayOptions, run_ray

    sources = inputs.read(paths, exclude=[run.output] if run.output is not None else ())
    saved = run.output is not None
    display = Display(json_out=run.json_out, quiet=run.quiet, stream=False, text_out=not saved)
    with interruptible(display.stop, hint=SAVED_PAGES if saved else None):
        stats = run_ray(
            job,
            sources,
            **run.load_args(),
            output=run.output,
            json_stream=sys.stdout if run.json_out else None,
            redo_failed=run.redo_failed,
            events=display,
            ray=RayOptions(
                address=address, replicas=replicas, verbose=verbose, batch_size=run.slots
            ),
        )
    if not run.quiet:
        timing = display.summary()  # on Ray: the drafts' acceptance, if any page drafted
        where = f"; {timing}" if timing else ""
        where += f"; records in {run.output}" if saved else ""
        summary_line(batch_counts(stats), where)
    if stats.any_failed:
        raise typer.Exit(EXIT_PARTIAL)
