"""The model commands over pages: ``ask``, ``extract`` and ``chart``. Each reads its options
into a job and the run options (``options``) and hands them to ``running.run_job``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ixcdoc.cli.app import app, handles_errors
from ixcdoc.cli.options import (
    AllPagesOpt,
    BatchOpt,
    BeamsOpt,
    DeviceOpt,
    HdOpt,
    JsonOpt,
    MaxNewOpt,
    MaxPixelsOpt,
    ModelOpt,
    OutFormat,
    OutputOpt,
    PageOptions,
    PagesOpt,
    PasswordOpt,
    PathsArg,
    PromptOpt,
    Quant,
    QuantOpt,
    QuietOpt,
    RayAddressOpt,
    RayOpt,
    RedoOpt,
    ReplicasOpt,
    RunOptions,
    SpeculateOpt,
    TopKOpt,
    VerboseOpt,
    make_job,
)
from ixcdoc.cli.running import run_job
from ixcdoc.errors import UsageError


def _check_out_dir(out_dir: Path, paths: list[str]) -> None:
    """--out-dir must be a folder (or not exist yet), and not an input folder or above one:
    its files would then be read as inputs, or every input would count as output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {out_dir}: exists and is not a folder")
    out = os.path.realpath(out_dir)
    for arg in paths:
        if arg != "-" and os.path.isdir(arg):
            real = os.path.realpath(arg)
            if real == out or real.startswith(out + os.sep):
                raise UsageError(
                    f"--out-dir {out_dir} is the folder being read, or holds it ({arg}); "
                    "write the files elsewhere (a folder inside the input folder is fine)"
                )


def _question_from_stdin(doc: str, question: str | None) -> str:
    if question is not None and question.strip():
        return question.strip()
    if doc != "-" and not sys.stdin.isatty():
        raw = getattr(sys.stdin, "buffer", None)  # bytes: decoded here, strictly
        data = raw.read() if raw is not None else sys.stdin.read().encode("utf-8", "replace")
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise UsageError(
                f"the question on stdin is not valid UTF-8: byte 0x{data[e.start]:02x} at "
                f"byte {e.start + 1}"
            ) from None
        if text:
            return text
    raise UsageError("no question given: pass it after DOC, or pipe it on stdin")


@app.command()
@handles_errors
def ask(
    doc: Annotated[
        str, typer.Argument(metavar="DOC", help="PDF or image, or - for bytes on stdin.")
    ],
    question: Annotated[
        str | None,
        typer.Argument(metavar="[QUESTION]", help="The question (else read from stdin)."),
    ] = None,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    batch_size: BatchOpt = "auto",
    beams: BeamsOpt = 1,
    speculate: SpeculateOpt = "auto",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    all_pages: AllPagesOpt = False,
    top_k: TopKOpt = 1,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    redo_failed: RedoOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about a document, citing the page.

    A multi-page document is answered once, from its best page: pages with a text layer are
    ranked by their words (BM25); pages without one (scans) are screened by the model at a
    low tier, all in one batch, and the best is answered at the task's tier. --top-k N answers the N
    best, --all-pages every selected page in turn. The screening scores go to stderr and to
    the records (docs/screening.md).

    \b
    ixcdoc ask paper.pdf "What dataset is used in Table 3?"
    ixcdoc ask scan.pdf "Who signed the contract?" --top-k 2
    maim -s | ixcdoc ask - "what does the error say?"
    echo "what is the total?" | ixcdoc ask invoice.pdf
    """
    from ixcdoc.tasks import ASK

    q = _question_from_stdin(doc, question)
    job = make_job(
        ASK,
        q,
        question=q,
        hd=hd,
        max_new_tokens=max_new_tokens,
        beams=beams,
        speculate=speculate,
        top_k=None if all_pages else top_k,
    )
    run = RunOptions(
        model=model,
        device=device,
        quant=quant,
        quiet=quiet,
        output=output,
        json_out=json_out,
        redo_failed=redo_failed,
        batch_size=batch_size,
    )
    run.check_redo()
    sources = PageOptions(pages, password, max_pixels).read([doc])
    run_job(job, sources, run, stream=output is None)


@app.command()
@handles_errors
def extract(
    paths: PathsArg,
    output: OutputOpt = None,
    json_out: JsonOpt = False,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    batch_size: BatchOpt = "auto",
    beams: BeamsOpt = 1,
    speculate: SpeculateOpt = "auto",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    prompt: PromptOpt = None,
    redo_failed: RedoOpt = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            metavar="DIR",
            help="Also write one file per document here, mirroring the input tree (resumable).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            metavar="N",
            help="Render pages in N processes (born-digital PDF pages in one pass at their "
            "tier's size); 0 renders on one thread.",
        ),
    ] = 0,
    out_format: Annotated[
        OutFormat,
        typer.Option("--format", metavar="md|txt|json", help="File format for --out-dir."),
    ] = OutFormat.md,  # type: ignore[attr-defined]
    quiet: QuietOpt = False,
    use_ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    replicas: ReplicasOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Transcribe every page of files and folders.

    Text goes to stdout (pages marked "==> FILE page N/M <=="); --json prints one record
    per page; -o FILE.jsonl appends records and resumes where an earlier run stopped;
    --out-dir DIR writes one Markdown (or text, or JSON) file per document; --ray runs on
    every GPU of this machine or a Ray cluster (docs/scale.md).

    \b
    ixcdoc extract scans/ -o scans.jsonl
    ixcdoc extract scans/ --out-dir scans-md
    ixcdoc extract invoice.pdf --json | jq -r .text
    ixcdoc extract tiny-print.pdf --hd 55
    ixcdoc extract scans/ -o out/ --ray
    """
    from ixcdoc.tasks import EXTRACT

    if out_dir is not None:
        _check_out_dir(out_dir, paths)
    if redo_failed and output is None and out_dir is None:
        raise UsageError("--redo-failed needs -o/--output or --out-dir (where failures are kept)")
    job = make_job(
        EXTRACT,
        prompt or EXTRACT.prompt,
        hd=hd,
        max_new_tokens=max_new_tokens,
        beams=beams,
        speculate=speculate,
    )
    run = RunOptions(
        model=model,
        device=device,
        quant=quant,
        quiet=quiet,
        output=output,
        json_out=json_out,
        redo_failed=redo_failed,
        batch_size=batch_size,
    )
    inputs = PageOptions(pages, password, max_pixels)
    if use_ray or ray_address is not None or replicas is not None:
        from ixcdoc.cli.scale import run_ray_job

        if out_dir is not None:
            raise UsageError("--out-dir does not work with --ray yet: use -o, then --out-dir")
        run_ray_job(
            job, paths, inputs, run, address=ray_address, replicas=replicas, verbose=verbose
        )
        return
    sources = inputs.read(paths, exclude=[p for p in (output, out_dir) if p is not None])
    run_job(
        job,
        sources,
        run,
        stream=output is None and out_dir is None,
        out_dir=out_dir,
        out_format=out_format.value,
        workers=workers,
    )


@app.command()
@handles_errors
def chart(
    image: Annotated[
        str, typer.Argument(metavar="IMAGE", help="Chart image or PDF, or - for stdin.")
    ],
    table: Annotated[
        bool, typer.Option("--table", help="Give the chart's data as a Markdown table.")
    ] = False,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    batch_size: BatchOpt = "auto",
    beams: BeamsOpt = 1,
    speculate: SpeculateOpt = "auto",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    redo_failed: RedoOpt = False,
    prompt: PromptOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Summarize a chart; --table gives its data as a Markdown table.

    \b
    ixcdoc chart revenue.png
    ixcdoc chart revenue.png --table
    """
    from ixcdoc.tasks import CHART, CHART_TABLE

    preset = CHART_TABLE if table else CHART
    job = make_job(
        preset,
        prompt or preset.prompt,
        hd=hd,
        max_new_tokens=max_new_tokens,
        beams=beams,
        speculate=speculate,
    )
    run = RunOptions(
        model=model,
        device=device,
        quant=quant,
        quiet=quiet,
        output=output,
        json_out=json_out,
        redo_failed=redo_failed,
        batch_size=batch_size,
    )
    run.check_redo()
    sources = PageOptions(pages, password, max_pixels).read([image])
    run_job(job, sources, run, stream=output is None)
