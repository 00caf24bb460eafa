"""``ixcdoc eval``: score the model on a document benchmark (docs/accuracy.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ixcdoc.cli.app import app, err, handles_errors
from ixcdoc.cli.options import (
    BeamsOpt,
    DeviceOpt,
    FileOutputOpt,
    MaxNewOpt,
    ModelOpt,
    Quant,
    QuantOpt,
    QuietOpt,
    RedoOpt,
    RunOptions,
    hd_callback,
)
from ixcdoc.cli.running import interruptible, load_model, summary_line
from ixcdoc.errors import EXIT_PARTIAL

SAVED_ANSWERS = " (answered questions are saved; run the same command again to resume)"

# ---- eval -----------------------------------------------------------------------------------


def _eval_hd_callback(value: str | None) -> str | None:
    return None if value is None else hd_callback(value)


EvalHdOpt = Annotated[
    str | None,
    typer.Option(
        "--hd",
        metavar="auto|N",
        help="'auto' (planner, ask preset) or N [default: upstream's tier for the benchmark].",
        callback=_eval_hd_callback,
    ),
]


def eval_table(rows: list[Any]) -> Any:
    """The evaluation report as a Rich table (one row per benchmark and setting)."""
    from rich.table import Table

    t = Table(title="ixcdoc eval (95% CI: normal approximation)", title_justify="left")
    paged = any(r.page_accuracy is not None for r in rows)  # a multi-page benchmark
    for col, just in [
        ("benchmark", "left"),
        ("split", "left"),
        ("precision", "left"),
        ("hd", "left"),
        ("beams", "right"),
        ("n", "right"),
        ("failed", "right"),
        ("score", "right"),
        ("95% CI", "right"),
        *([("page acc", "right")] if paged else []),
        ("paper", "right"),
        ("tiers", "left"),
        ("s/question", "right"),
    ]:
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        digits = 0 if r.unit == "/1000" else 1
        ci = "-" if r.ci_low is None else f"{r.ci_low:.{digits}f}-{r.ci_high:.{digits}f}"
        paper = "-" if r.paper is None else f"{r.paper:.{digits}f} ({r.paper_split})"
        t.add_row(
            r.title,
            r.split,
            str(r.precision),
            r.hd_setting,
            str(r.num_beams),
            str(r.n),
            str(r.failed),
            f"{r.score:.{digits}f}{r.unit if r.unit != '%' else ''}",
            ci,
            *([_percent(r.page_accuracy)] if paged else []),
            paper,
            " ".join(f"{k}:{v}" for k, v in r.tiers.items()) or "-",
            "-" if r.seconds_mean is None else f"{r.seconds_mean:.2f}",
        )
    return t


def _nothing() -> None:
    """No progress bar to stop."""


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


@app.command(name="eval")
@handles_errors
def eval_(
    benchmark: Annotated[
        str,
        typer.Argument(
            metavar="BENCHMARK",
            help="docvqa, infovqa, chartqa, ocrbench, mpdocvqa; or 'report' to re-score a file.",
        ),
    ],
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="The dataset folder (docs/accuracy.md); for 'report', a JSONL."
        ),
    ],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Only the first N questions.")
    ] = None,
    hd: EvalHdOpt = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split", metavar="NAME", help="Dataset split [default: val; OCRBench: test]."
        ),
    ] = None,
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    beams: BeamsOpt = 1,
    output: FileOutputOpt = None,
    redo_failed: RedoOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score the model on a document benchmark, as the IXC2-4KHD paper reports it.

    Reads a local copy of the benchmark (nothing is downloaded), answers every question with
    upstream's evaluation prompt and tier, scores it (ANLS, relaxed accuracy, OCRBench hits)
    and prints the score with its 95% confidence interval next to the paper's number.
    MP-DocVQA questions span a document's pages: each is answered from the page the model's
    screening chooses (as ask does), and the report adds the page accuracy.

    \b
    ixcdoc eval docvqa data/docvqa -o docvqa.jsonl
    ixcdoc eval chartqa "data/ChartQA Dataset" --limit 200 --hd auto
    ixcdoc eval mpdocvqa data/mp-docvqa --limit 200 -o mpdocvqa.jsonl
    ixcdoc eval report docvqa.jsonl
    """
    from ixcdoc.evaluation.report import report_dict, summarize

    if benchmark == "report":
        from ixcdoc.evaluation.results import load_records

        rows = summarize(load_records(data, repair=False).records())
    else:
        from ixcdoc.evaluation.answering import run_eval
        from ixcdoc.evaluation.datasets import benchmark as find_benchmark
        from ixcdoc.evaluation.datasets import check_images, read_items

        bench = find_benchmark(benchmark)
        run = RunOptions(
            model=model,
            device=device,
            quant=quant,
            quiet=quiet,
            output=output,
            json_out=json_out,
            redo_failed=redo_failed,
        )
        run.check_redo()
        # The dataset first: a wrong path or a partial download must not cost a 17 GB load
        # to report.
        items = read_items(bench.name, data, split)
        check_images(items[:limit] if limit else items, data)
        total = min(len(items), limit) if limit else len(items)
        dm = load_model(run)
        saved = SAVED_ANSWERS if output is not None else None
        bar = None
        if not quiet and err.is_terminal and total > 1:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            bar = Progress(
                TextColumn(bench.title),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
            )
            bar.start()
            task_id = bar.add_task("eval", total=total)

        def progress(rec: Any) -> None:
            # A question that failed is one line on stderr, as a page of extract is.
            if rec is not None and rec["status"] == "error" and rec.get("error"):
                from rich.markup import escape

                why = escape(f"{rec['question_id']}: {rec['error']['message']}")
                line = f"[bold red]error:[/] {why}"
                (bar.console if bar is not None else err).print(line, markup=True)
            if bar is not None:
                bar.advance(task_id)

        with interruptible(bar.stop if bar is not None else _nothing, hint=saved):
            summary = run_eval(
                dm,
                bench.name,
                data,
                items=items,
                limit=limit,
                hd=hd,
                split=split,
                max_new_tokens=max_new_tokens,
                output=output,
                redo_failed=redo_failed,
                progress=progress,
                num_beams=beams,
            )
        if summary.repaired_bytes and not quiet:
            err.print(f"repaired {output}: cut a torn last line", markup=False)
        if not quiet:
            counts = [
                (summary.answered, "answered"),
                (summary.failed, "failed"),
                (summary.skipped, "already done"),
                (summary.skipped_failed, "failed earlier (retry: --redo-failed)"),
            ]
            summary_line(counts, f"; records in {output}" if output else "")
        rows = summarize(summary.records)
    if json_out or not sys.stdout.isatty():
        sys.stdout.write(json.dumps(report_dict(rows), ensure_ascii=False) + "\n")
    else:
        Console().print(eval_table(rows))
    if benchmark != "report" and any(r.failed for r in rows):
        raise typer.Exit(EXIT_PARTIAL)  # as extract: the records say which questions failed
