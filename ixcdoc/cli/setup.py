"""Setup commands: ``doctor`` (is this installation ready?) and ``download`` (the weights)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ixcdoc.cli.app import app, err, handles_errors
from ixcdoc.cli.options import QuietOpt, VramOpt
from ixcdoc.errors import UsageError


@app.command()
@handles_errors
def doctor(
    selftest: Annotated[
        bool,
        typer.Option(
            "--selftest", help="Run the whole path on a tiny random model (CPU, seconds)."
        ),
    ] = False,
    keep: Annotated[
        Path | None,
        typer.Option(
            "--keep",
            metavar="DIR",
            help="With --selftest: keep the tiny checkpoint in DIR, to try any command with "
            "--model DIR --device cpu.",
        ),
    ] = None,
    vram: VramOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="The report as one JSON object.")
    ] = False,
) -> None:
    """Check GPU, CUDA, torch, bitsandbytes, flash-attn and cached weights; tiers that fit.

    \b
    ixcdoc doctor
    ixcdoc doctor --selftest
    ixcdoc doctor --selftest --keep tiny-model
    """
    from ixcdoc.doctor import doctor_report, try_command
    from ixcdoc.doctor import selftest as run_selftest
    from ixcdoc.planning import tier_rows
    from ixcdoc.tiling import DOCUMENT_TIERS
    from ixcdoc.tinyckpt import try_options

    if keep is not None and not selftest:
        raise UsageError("--keep needs --selftest (it keeps the self-test's tiny checkpoint)")
    report = doctor_report()
    rows = tier_rows(vram_gib=vram, tiers=DOCUMENT_TIERS)
    if json_out or not sys.stdout.isatty():
        sys.stdout.write(json.dumps({**report, "tiers": rows}) + "\n")
    else:
        out = Console(highlight=False)
        for key, value in report.items():
            if key in ("cached_models", "try"):
                continue
            out.print(f"[bold]{key:>14}[/]  {value}")
        cached = report["cached_models"]
        if cached:
            for m in cached:
                out.print(f"[bold]{'weights':>14}[/]  {m['id']} {m['gib']:.1f} GiB at {m['path']}")
        else:
            out.print(f"[bold]{'weights':>14}[/]  none cached (`ixcdoc download` fetches them)")
        fits = [r for r in rows if r["fits"]]
        if rows and rows[0]["fits"] is None:
            out.print(f"[bold]{'tiers':>14}[/]  no GPU: `ixcdoc tiers --vram GiB` plans for one")
        for q in ("bf16", "4bit"):
            ok = [f"HD{r['tier']}" for r in fits if r["fits"][q]]
            if rows and rows[0]["fits"] is not None:
                out.print(f"[bold]{'fits ' + q:>14}[/]  {', '.join(ok) or 'no tier'}")
                batch = [f"HD{r['tier']} {r['batch_auto'][q]}" for r in fits if r["fits"][q]]
                out.print(f"[bold]{'batch ' + q:>14}[/]  {', '.join(batch) or '-'} pages at once")
        if report["try"] and keep is None:
            why = "a tiny random model, no download: every command then runs on the CPU in seconds"
            out.print(f"[bold]{'try now':>14}[/]  {escape(report['try'])}  ({why})")
    if selftest:
        if not json_out:
            err.print("selftest: tiny random checkpoint, CPU", markup=False)

        def log(step: str, ms: float, detail: str) -> None:
            if not json_out:
                err.print(f"  ok  {step:<48} {ms:8.0f} ms  {detail}", markup=False)

        run_selftest(log, keep=keep)
        if not json_out:
            err.print("selftest passed: this installation can load and run the model", markup=False)
            if keep is not None:
                err.print(
                    f"kept the tiny random checkpoint in {keep}: any command runs on it with "
                    f"{try_options(str(keep))} (its answers are random text). Try, in seconds:",
                    markup=False,
                )
                err.print(f"  {try_command(keep)}", markup=False)


@app.command()
@handles_errors
def download(
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            help="Hub id [default: $IXCDOC_MODEL or the official 4KHD checkpoint].",
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", metavar="REF", help="Branch, tag or commit.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Fetch the weights, config and tokenizer into the local cache (never code).

    \b
    ixcdoc download
    HF_HOME=/data/hf ixcdoc download
    """
    from ixcdoc.config import DEFAULT_MODEL_ID
    from ixcdoc.hub import download_model

    model_id = model or os.environ.get("IXCDOC_MODEL") or DEFAULT_MODEL_ID
    if quiet or not err.is_terminal:
        path = download_model(model_id, revision=revision)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(desc: str, done: int, total: int | None) -> None:
                if desc not in tasks:
                    tasks[desc] = bar.add_task(desc, total=total)
                bar.update(tasks[desc], completed=done, total=total)

            path = download_model(model_id, revision=revision, progress=progress)
    sys.stdout.write(f"{path}\n")
