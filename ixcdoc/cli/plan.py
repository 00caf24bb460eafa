"""``plan`` and ``tiers``: the dry runs, no model. Per page (``plan``) or per tier (``tiers``):
the tier, its crop grid, image tokens and the peak VRAM each precision needs."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ixcdoc.cli.app import app, err, fail_line, handles_errors
from ixcdoc.cli.options import (
    HdOpt,
    JsonOpt,
    MaxNewOpt,
    MaxPixelsOpt,
    PageOptions,
    PagesOpt,
    PasswordOpt,
    PathsArg,
    TableJsonOpt,
    Task,
    VramOpt,
    WideOpt,
)
from ixcdoc.errors import EXIT_PARTIAL, IxcdocError
from ixcdoc.tasks import PRESETS, parse_hd

if TYPE_CHECKING:
    from ixcdoc.cli.tables import Column


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
    from ixcdoc.planning import plan_pages

    sources = PageOptions(pages, password, max_pixels).read(paths)
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
