"""``extract --ray``: the options to a Ray run, drawn with the same display as one machine."""

from __future__ import annotations

import sys

import typer

from ixcdoc.cli.app import Quant
from ixcdoc.errors import EXIT_PARTIAL
from ixcdoc.pagerun import Job


def run_ray_job(
    job: Job,
    paths: list[str],
    *,
    pages: str | None,
    password: str | None,
    max_pixels: int | None,
    model: str | None,
    device: str,
    quant: Quant,
    output: str | None,
    json_out: bool,
    quiet: bool,
    redo_failed: bool,
    address: str | None,
    replicas: int | None,
    verbose: bool,
    batch_size: int | None = 1,
) -> None:
    """Run ``job`` on Ray; the summary line and exit codes are those of one machine."""
    from ixcdoc.cli.display import Display
    from ixcdoc.distributed import RayOptions, run_ray
    from ixcdoc.inputs import Sources

    sources = Sources.read(
        paths,
        pages=pages,
        password=password,
        max_pixels=max_pixels,
        exclude=[output] if output is not None else (),
    )
    display = Display(json_out=json_out, quiet=quiet, stream=False, text_out=output is None)
    from ixcdoc.cli.commands import interruptible, summary_line

    with interruptible(display, saved=output is not None):
        stats = run_ray(
            job,
            sources,
            model=model,
            device=device,
            quant=quant.value,
            output=output,
            json_stream=sys.stdout if json_out else None,
            redo_failed=redo_failed,
            events=display,
            ray=RayOptions(
                address=address, replicas=replicas, verbose=verbose, batch_size=batch_size
            ),
        )
    if not quiet:
        summary_line(stats, f"; records in {output}" if output is not None else "")
    if stats.any_failed:
        raise typer.Exit(EXIT_PARTIAL)
