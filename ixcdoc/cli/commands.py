"""The commands: each parses its options into library values and calls the library."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ixcdoc.cli.app import (
    AllPagesOpt,
    BatchOpt,
    BeamsOpt,
    DeviceOpt,
    HdOpt,
    JsonOpt,
    MaxNewOpt,
    MaxPixelsOpt,
    ModelOpt,
    OutputOpt,
    PagesOpt,
    PasswordOpt,
    PathsArg,
    PromptOpt,
    Quant,
    QuantOpt,
    QuietOpt,
    RedoOpt,
    Task,
    TopKOpt,
    VramOpt,
    app,
    err,
    fail_line,
    handles_errors,
    parse_batch,
)
from ixcdoc.errors import EXIT_INTERRUPTED, EXIT_PARTIAL, IxcdocError, UsageError
from ixcdoc.outdir import FORMATS
from ixcdoc.tasks import PRESETS, parse_hd

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ixcdoc.batch import BatchStats
    from ixcdoc.cli.display import Display
    from ixcdoc.cli.tables import Column
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job

OutFormat = Enum("OutFormat", [(f, f) for f in FORMATS], type=str)  # type: ignore[misc]
TableJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per tier.")]
RayOpt = Annotated[
    bool,
    typer.Option(
        "--ray", help="Run on Ray Data: every GPU of this machine (or CPU replicas without one)."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="Join a running Ray cluster instead of starting one (implies --ray).",
    ),
]
ReplicasOpt = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        min=1,
        metavar="N",
        help="With --ray: model replicas [default: one per GPU; 1 without GPUs].",
    ),
]
WideOpt = Annotated[
    bool,
    typer.Option("--wide", help="Every column of the table, however wide (the terminal wraps it)."),
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", help="With --ray: show Ray's own logs and progress bars.")
]

# ---- plan ----------------------------------------------------------------------------------


@app.command()
@handles_errors
def plan(
    paths: PathsArg,
    task: Annotated[
        Task,
        typer.Option(
            "--task", metavar="|".join(PRESETS), help="Which command's tier policy to plan for."
        ),
    ] = Task.extract,  # type: ignore[attr-defined]
    hd: HdOpt = "auto",
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    vram: VramOpt = None,
    max_new_tokens: MaxNewOpt = None,
    json_out: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Dry run, no model: per page native size, DPI, tier, grid, image tokens, VRAM.

    \b
    ixcdoc plan paper.pdf
    ixcdoc plan scans/ --task extract --vram 24 --json
    """
    from ixcdoc.inputs import Sources
    from ixcdoc.planning import plan_pages

    sources = Sources.read(paths, pages=pages, password=password, max_pixels=max_pixels)
    as_json = json_out or not sys.stdout.isatty()
    rows: list[dict[str, Any]] = []
    failed = False
    for row in plan_pages(
        sources, task=task.value, hd=parse_hd(hd), vram_gib=vram, max_new_tokens=max_new_tokens
    ):
        if isinstance(row, IxcdocError):
            failed = True
            fail_line(row.message)
            row = _error_row(row)
        if as_json:  # in input order, as each page is planned
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif "status" not in row:
            rows.append(row)
    if rows and not as_json:  # nothing planned: the error lines said why
        print_plan(rows, task=task.value, wide=wide, out=Console())
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


def _fits_cell(fits: dict[str, bool] | None) -> str:
    if fits is None:
        return "no GPU"
    return ", ".join(q for q, ok in fits.items() if ok) or "none"


def _batch_cell(batch: dict[str, int] | None) -> str:
    """Pages --batch-size auto runs at once, bf16/4bit ("-" without a GPU)."""
    return "-" if batch is None else f"{batch['bf16']}/{batch['4bit']}"


def _plan_columns() -> list[Column]:
    """The plan's columns in table order; rank 0 always shows, then by rank while they fit."""
    from ixcdoc.cli.tables import Column

    return [
        Column("page", 0),
        Column("native WxH", 1),
        Column("dpi", 2),
        Column("tier", 0),
        Column("grid RxC", 0),
        Column("padded WxH", 7),
        Column("tokens", 0),
        Column("bf16 GiB", 3),
        Column("4bit GiB", 4),
        Column("fits", 5, justify="left"),
        Column("batch auto", 6),
        Column("why", 0, justify="left", prose=True),  # last: prose reads best at the edge
    ]


def plan_cells(r: dict[str, Any]) -> list[str]:
    """One plan row (as ``--json`` prints it) as the table's cells, in column order."""
    h, w = r["native_size"]
    ph, pw = r["padded_size"]
    return [
        f"{r['page']}/{r['page_count']}",
        f"{w}x{h}",
        "-" if r["render_dpi"] is None else f"{r['render_dpi']:.0f}",
        f"HD{r['tier']}",
        "{}x{}".format(*r["grid"]),
        f"{pw}x{ph}",
        str(r["image_tokens"]),
        f"{r['vram_gib']['bf16']:.1f}",
        f"{r['vram_gib']['4bit']:.1f}",
        _fits_cell(r["fits"]),
        _batch_cell(r["batch_auto"]),
        r["tier_reason"],
    ]


def print_plan(rows: list[dict[str, Any]], *, task: str, wide: bool, out: Console) -> None:
    """The plan for a terminal: each document's name, then a table of its pages."""
    from itertools import groupby

    from ixcdoc.cli.tables import print_table

    groups = [
        (source, [plan_cells(r) for r in rs]) for source, rs in groupby(rows, lambda r: r["source"])
    ]
    print_table(out, err, f"ixcdoc plan (task: {task})", _plan_columns(), groups, wide=wide)


def _error_row(e: IxcdocError) -> dict[str, Any]:
    return {
        "source": getattr(e, "source", None),
        "page": getattr(e, "page", None),
        "status": "error",
        "error": {"code": e.code, "message": e.message},
    }


@app.command()
@handles_errors
def tiers(
    aspect: Annotated[
        str,
        typer.Option("--aspect", metavar="W:H", help="Page shape as W:H, e.g. 1:1, 8.5:11, 16:9."),
    ] = "1:1",
    vram: VramOpt = None,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens",
            min=1,
            max=32768,
            metavar="N",
            help="Generation length to budget for.",
        ),
    ] = 512,
    json_out: TableJsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """The HD tier table: grid, image tokens and estimated peak VRAM per tier.

    \b
    ixcdoc tiers
    ixcdoc tiers --aspect 8.5:11 --vram 24
    """
    from ixcdoc.planning import tier_rows
    from ixcdoc.tasks import parse_aspect

    try:
        ah, aw = parse_aspect(aspect)
    except IxcdocError as e:
        raise typer.BadParameter(e.message) from None
    rows = tier_rows(aspect=(ah, aw), vram_gib=vram, max_new_tokens=max_new_tokens)
    if json_out or not sys.stdout.isatty():
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    from ixcdoc.cli.tables import Column, print_table

    columns = [
        Column("tier", 0),
        Column("grid", 0),
        Column("image tokens", 0),
        Column("bf16 GiB", 1),
        Column("4bit GiB", 2),
        Column("fits", 3, justify="left"),
        Column("batch auto", 4),
    ]
    cells = [
        [
            f"HD{r['tier']}",
            "{}x{}".format(*r["grid"]),
            str(r["image_tokens"]),
            f"{r['vram_gib']['bf16']:.1f}",
            f"{r['vram_gib']['4bit']:.1f}",
            _fits_cell(r["fits"]),
            _batch_cell(r["batch_auto"]),
        ]
        for r in rows
    ]
    title = f"HD tiers for a {aspect} page (estimated peak VRAM, see docs/vram.md)"
    print_table(Console(), err, title, columns, [(None, cells)], wide=wide)


# ---- model commands ------------------------------------------------------------------------


def run_job(
    job: Job,
    sources: Sources,
    *,
    model: str | None,
    device: str,
    quant: Quant,
    output: str | None,
    json_out: bool,
    quiet: bool,
    redo_failed: bool = False,
    stream: bool = True,
    out_dir: Path | None = None,
    out_format: str = "md",
    batch_size: str = "auto",
    workers: int = 0,
) -> None:
    """Run ``job`` over ``sources`` with the display; exit 0, 3 (some pages failed) or 130."""
    from ixcdoc.batch import run
    from ixcdoc.cli.display import Display

    display = Display(
        json_out=json_out,
        quiet=quiet,
        stream=stream,
        # with -o or --out-dir the files are the output; stdout stays empty
        text_out=output is None and out_dir is None,
        token_cap=job.new_tokens,
    )
    with interruptible(display, saved=output is not None or out_dir is not None):
        stats = run(
            job,
            sources,
            model=model,
            device=device,
            quant=quant.value,
            output=output,
            json_stream=sys.stdout if json_out else None,
            redo_failed=redo_failed,
            events=display,
            out_dir=out_dir,
            out_format=out_format,
            batch_size=parse_batch(batch_size),
            workers=workers,
        )
    saved = output is not None or out_dir is not None
    if not quiet and (stats.pages > 1 or stats.skipped or stats.skipped_failed or saved):
        # Every run that writes files says where they went, first run or rerun.
        timing = display.summary()
        where = f"; {timing}" if timing else ""
        where += f"; records in {stats.records_path}" if stats.records_path else ""
        if out_dir is not None:
            where += f"; {stats.files_written} files written to {out_dir}"
        summary_line(stats, where)
    if stats.any_failed:
        raise typer.Exit(EXIT_PARTIAL)


@contextlib.contextmanager
def interruptible(display: Display, *, saved: bool) -> Iterator[None]:
    """Around a batch run: Ctrl-C stops the display and exits 130 with one line (and the hint
    to resume when the records are saved); the display is stopped in every case."""
    try:
        yield
    except KeyboardInterrupt:
        display.stop()
        hint = " (every finished page is saved; run the same command again to resume)"
        err.print(Text(f"interrupted{hint if saved else ''}"), soft_wrap=not err.is_terminal)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        display.stop()


def summary_line(stats: BatchStats, where: str) -> None:
    """The line a batch run ends with on stderr: what was done, skipped and failed."""
    parts = [f"{stats.ok} ok"]
    if stats.failed:
        parts.append(f"{stats.failed} failed")
    if stats.blank:
        parts.append(f"{stats.blank} blank")
    if stats.skipped:
        parts.append(f"{stats.skipped} already done")
    if stats.skipped_failed:
        parts.append(f"{stats.skipped_failed} failed earlier (retry with --redo-failed)")
    # On a terminal wrapped at spaces (no path or number broken mid-word); elsewhere one line.
    err.print(Text(", ".join(parts) + where), soft_wrap=not err.is_terminal)


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


def _needs_output(redo_failed: bool, output: str | None) -> None:
    if redo_failed and output is None:
        raise UsageError("--redo-failed needs -o/--output (the file that records failures)")


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
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.tasks import ASK

    q = _question_from_stdin(doc, question)
    job = Job(
        ASK,
        prompt=q,
        question=q,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
        top_k=None if all_pages else top_k,
        num_beams=beams,
    )
    _needs_output(redo_failed, output)
    sources = Sources.read([doc], pages=pages, password=password, max_pixels=max_pixels)
    run_job(
        job,
        sources,
        model=model,
        device=device,
        quant=quant,
        output=output,
        json_out=json_out,
        quiet=quiet,
        redo_failed=redo_failed,
        stream=output is None,
        batch_size=batch_size,
    )


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
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.tasks import EXTRACT

    if out_dir is not None:
        _check_out_dir(out_dir, paths)
    if redo_failed and output is None and out_dir is None:
        raise UsageError("--redo-failed needs -o/--output or --out-dir (where failures are kept)")
    job = Job(
        EXTRACT,
        prompt or EXTRACT.prompt,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
        num_beams=beams,
    )
    if use_ray or ray_address is not None or replicas is not None:
        from ixcdoc.cli.scale import run_ray_job

        if out_dir is not None:
            raise UsageError("--out-dir does not work with --ray yet: use -o, then --out-dir")

        run_ray_job(
            job,
            paths,
            pages=pages,
            password=password,
            max_pixels=max_pixels,
            model=model,
            device=device,
            quant=quant,
            output=output,
            json_out=json_out,
            quiet=quiet,
            redo_failed=redo_failed,
            address=ray_address,
            replicas=replicas,
            verbose=verbose,
            batch_size=parse_batch(batch_size),
        )
        return
    sources = Sources.read(
        paths,
        pages=pages,
        password=password,
        max_pixels=max_pixels,
        exclude=[p for p in (output, out_dir) if p is not None],
    )
    run_job(
        job,
        sources,
        model=model,
        device=device,
        quant=quant,
        output=output,
        json_out=json_out,
        quiet=quiet,
        redo_failed=redo_failed,
        stream=output is None and out_dir is None,
        out_dir=out_dir,
        out_format=out_format.value,
        batch_size=batch_size,
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
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.tasks import CHART, CHART_TABLE

    preset = CHART_TABLE if table else CHART
    job = Job(
        preset,
        prompt or preset.prompt,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
        num_beams=beams,
    )
    _needs_output(redo_failed, output)
    sources = Sources.read([image], pages=pages, password=password, max_pixels=max_pixels)
    run_job(
        job,
        sources,
        model=model,
        device=device,
        quant=quant,
        output=output,
        json_out=json_out,
        quiet=quiet,
        redo_failed=redo_failed,
        stream=output is None,
        batch_size=batch_size,
    )
