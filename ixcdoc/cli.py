"""The command line: thin Typer commands over the library. The only module that imports Typer
and Rich. Heavy modules (torch, PyMuPDF, the model) are imported inside command bodies so that
``ixcdoc --help`` stays fast.

stdout carries results only (answers, text, JSON lines, the plan table); everything for people
(progress, warnings, errors) goes to stderr. Errors are one red line; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ixcdoc import __version__
from ixcdoc.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, IxcdocError
from ixcdoc.tasks import parse_hd

try:  # Typer >= 0.22 vendors Click under typer._click; older Typer uses Click itself.
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError

    NoArgsIsHelpError = None  # type: ignore[assignment,misc]

EXAMPLES = """\
Examples:

\b
  ixcdoc ask paper.pdf "What dataset is used in Table 3?"
  maim -s | ixcdoc ask - "what does the error say?"
  ixcdoc extract scans/ -o scans.jsonl
  ixcdoc extract invoice.pdf --json | jq -r .text
  ixcdoc extract tiny-print.pdf --hd 55
  ixcdoc chart revenue.png --table
  ixcdoc plan scans/ --vram 24
  ixcdoc doctor --selftest
  ixcdoc download
"""

app = typer.Typer(
    name="ixcdoc",
    help="Read documents with InternLM-XComposer2-4KHD on your own GPU.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"debug": False}
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def _fail_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True)


def handles_errors(fn: F) -> F:
    """Translate library errors into one red line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except IxcdocError as e:
            if _state["debug"]:
                raise
            _fail_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


# ---- shared options: one definition each ------------------------------------------------


def _hd_callback(value: str) -> str:
    try:
        parse_hd(value)
    except IxcdocError as e:
        raise typer.BadParameter(e.message) from None
    return value


def _pages_callback(value: str | None) -> str | None:
    if value is None:
        return None
    from ixcdoc.inputs import parse_page_spec

    try:
        parse_page_spec(value)
    except IxcdocError as e:
        raise typer.BadParameter(e.message) from None
    return value


HdOpt = Annotated[
    str,
    typer.Option(
        "--hd",
        help="HD tier: 'auto' (per page) or N = max 336-px crops (9, 16, 25, 55, ...).",
        callback=_hd_callback,
    ),
]


class Quant(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    q4 = "4bit"


class Task(str, Enum):
    ask = "ask"
    extract = "extract"
    chart = "chart"


QuantOpt = Annotated[
    Quant,
    typer.Option(
        "--quant", help="Weights precision on CUDA: auto (bf16 if it fits, else 4bit), bf16, 4bit."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        envvar="IXCDOC_MODEL",
        help="Hub id or local checkpoint folder [default: internlm/internlm-xcomposer2-4khd-7b].",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cuda, cuda:N, or cpu (float32, slow).")
]
MaxNewOpt = Annotated[
    int | None,
    typer.Option("--max-new-tokens", min=1, help="Generation limit [default: per task]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per page on stdout.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Append JSON lines to this file (resumable)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
PagesOpt = Annotated[
    str | None,
    typer.Option(
        "--pages",
        help="Pages to read, 1-based: 1,3-5 (applies to every file).",
        callback=_pages_callback,
    ),
]
PasswordOpt = Annotated[str | None, typer.Option("--password", help="Password for encrypted PDFs.")]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels", min=1, help="Refuse images larger than this [default: 100000000]."
    ),
]
VramOpt = Annotated[
    float | None,
    typer.Option("--vram", min=1, help="Plan for a GPU with this many GiB free (no GPU needed)."),
]
PromptOpt = Annotated[
    str | None, typer.Option("--prompt", help="Replace the task's preset instruction.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ixcdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Read documents with InternLM-XComposer2-4KHD on your own GPU."""
    _state["debug"] = debug


# ---- plan ----------------------------------------------------------------------------------


@app.command()
@handles_errors
def plan(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, globs, or - for stdin.")],
    task: Annotated[
        Task, typer.Option("--task", help="Which command's tier policy to plan for.")
    ] = Task.extract,
    hd: HdOpt = "auto",
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    vram: VramOpt = None,
    max_new_tokens: MaxNewOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Dry run, no model: per page native size, DPI, tier, grid, image tokens, VRAM.

    \b
    ixcdoc plan paper.pdf
    ixcdoc plan scans/ --task extract --vram 24 --json
    """
    from ixcdoc.pipeline import plan_pages

    rows, failures = plan_pages(
        paths,
        task=task.value,
        hd=parse_hd(hd),
        pages=pages,
        password=password,
        max_pixels=max_pixels,
        vram_gib=vram,
        max_new_tokens=max_new_tokens,
        stdin=sys.stdin.buffer if "-" in paths else None,
        on_error=lambda e: _fail_line(e.message),
    )
    if json_out or not sys.stdout.isatty():
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        for e in failures:
            sys.stdout.write(json.dumps(_error_row(e), ensure_ascii=False) + "\n")
    else:
        Console().print(plan_table(rows, task=task.value))
    if failures:
        raise typer.Exit(EXIT_PARTIAL)


def plan_table(rows: list[dict[str, Any]], *, task: str) -> Any:
    """The plan as a Rich table (one row per page)."""
    from rich.table import Table

    t = Table(title=f"ixcdoc plan (task: {task})", title_justify="left")
    for col, just in [
        ("source", "left"),
        ("page", "right"),
        ("native WxH", "right"),
        ("dpi", "right"),
        ("tier", "right"),
        ("why", "left"),
        ("grid", "right"),
        ("padded WxH", "right"),
        ("tokens", "right"),
        ("bf16 GiB", "right"),
        ("4bit GiB", "right"),
        ("fits", "left"),
    ]:
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        h, w = r["native_size"]
        ph, pw = r["padded_size"]
        fits = r["fits"]
        t.add_row(
            r["source"],
            f"{r['page']}/{r['page_count']}",
            f"{w}x{h}",
            "-" if r["render_dpi"] is None else f"{r['render_dpi']:.0f}",
            f"HD{r['tier']}",
            r["tier_reason"],
            "{}x{}".format(*r["grid"]),
            f"{pw}x{ph}",
            str(r["image_tokens"]),
            f"{r['vram_gib']['bf16']:.1f}",
            f"{r['vram_gib']['4bit']:.1f}",
            "no GPU" if fits is None else ", ".join(q for q, ok in fits.items() if ok) or "none",
        )
    return t


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
        str, typer.Option("--aspect", help="Page shape as W:H, e.g. 1:1, 8.5:11, 16:9.")
    ] = "1:1",
    vram: VramOpt = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="Generation length to budget for.")
    ] = 512,
    json_out: JsonOpt = False,
) -> None:
    """The HD tier table: grid, image tokens and estimated peak VRAM per tier.

    \b
    ixcdoc tiers
    ixcdoc tiers --aspect 8.5:11 --vram 24
    """
    from ixcdoc.pipeline import tier_rows

    try:
        aw, ah = (float(x) for x in aspect.split(":"))
        if aw <= 0 or ah <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"--aspect must look like 8.5:11, got {aspect!r}") from None
    rows = tier_rows(aspect=(ah, aw), vram_gib=vram, max_new_tokens=max_new_tokens)
    if json_out or not sys.stdout.isatty():
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    from rich.table import Table

    t = Table(title=f"HD tiers for a {aspect} page (estimated peak VRAM, see docs/vram.md)")
    for col in ("tier", "grid", "image tokens", "bf16 GiB", "4bit GiB", "fits"):
        t.add_column(col, justify="right")
    for r in rows:
        fits = r["fits"]
        t.add_row(
            f"HD{r['tier']}",
            "{}x{}".format(*r["grid"]),
            str(r["image_tokens"]),
            f"{r['vram_gib']['bf16']:.1f}",
            f"{r['vram_gib']['4bit']:.1f}",
            "no GPU" if fits is None else ", ".join(q for q, ok in fits.items() if ok) or "none",
        )
    Console().print(t)


# ---- model commands ------------------------------------------------------------------------


def _not_yet(command: str) -> None:
    raise IxcdocError(
        f"`ixcdoc {command}` needs the model runtime, which is not in this build yet; "
        "`ixcdoc plan` works today"
    )


@app.command()
@handles_errors
def ask(
    doc: Annotated[str, typer.Argument(help="PDF or image, or - for bytes on stdin.")],
    question: Annotated[
        str | None, typer.Argument(help="The question (else read from stdin).")
    ] = None,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about a document, citing the page.

    \b
    ixcdoc ask paper.pdf "What dataset is used in Table 3?"
    maim -s | ixcdoc ask - "what does the error say?"
    """
    _not_yet("ask")


@app.command()
@handles_errors
def extract(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, globs, or - for stdin.")],
    output: OutputOpt = None,
    json_out: JsonOpt = False,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    prompt: PromptOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe every page of files and folders.

    \b
    ixcdoc extract scans/ -o scans.jsonl
    ixcdoc extract invoice.pdf --json | jq -r .text
    """
    _not_yet("extract")


@app.command()
@handles_errors
def chart(
    image: Annotated[str, typer.Argument(help="Chart image or PDF page, or - for stdin.")],
    table: Annotated[
        bool, typer.Option("--table", help="Give the chart's data as a table.")
    ] = False,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    json_out: JsonOpt = False,
    prompt: PromptOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Summarize a chart; --table gives its data as a Markdown table.

    \b
    ixcdoc chart revenue.png
    ixcdoc chart revenue.png --table
    """
    _not_yet("chart")


def main() -> None:
    """Console entry point: one red line for usage errors, exit codes as documented."""
    try:
        code = app(standalone_mode=False)
    except UsageError as e:
        if NoArgsIsHelpError is not None and isinstance(e, NoArgsIsHelpError):
            typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
            sys.exit(EXIT_USAGE)
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        _fail_line(e.format_message() + hint)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":  # pragma: no cover
    main()
