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
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from ixcdoc import __version__
from ixcdoc.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    IxcdocError,
    UsageError,
)
from ixcdoc.tasks import parse_hd

try:  # Typer >= 0.22 vendors Click under typer._click; older Typer uses Click itself.
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

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
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly with SIGPIPE's status, as Unix
            # tools do. stdout now points at devnull so the final flush cannot raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None

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
        ("grid RxC", "right"),
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

RedoOpt = Annotated[
    bool, typer.Option("--redo-failed", help="With -o: retry pages recorded as failed.")
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", min=1, help="PDFs with text: read the N best-matching pages.")
]
AllPagesOpt = Annotated[
    bool, typer.Option("--all-pages", help="Answer every selected page in turn.")
]


def _load_model(model: str | None, device: str, quant: Quant, quiet: bool) -> Any:
    """Load once per process, with a spinner on a terminal."""
    from ixcdoc.runtime import load

    label = model or os.environ.get("IXCDOC_MODEL") or "internlm/internlm-xcomposer2-4khd-7b"
    if quiet or not err.is_terminal:
        return load(model, device=device, quant=quant.value)
    with err.status(f"loading {label} ({quant.value}, {device})"):
        return load(model, device=device, quant=quant.value)


class _Display:
    """What a run shows: streamed text or records on stdout, progress and notes on stderr."""

    def __init__(
        self, *, json_out: bool, quiet: bool, markers: bool, stream: bool, text_out: bool = True
    ) -> None:
        self.json_out = json_out or not text_out  # records only: no text on stdout
        self.quiet = quiet
        self.markers = markers
        self.tty = sys.stdout.isatty()
        self.stream = stream and not json_out
        self.progress: Any = None
        self.task_id: Any = None
        self.live: Any = None
        self.text = ""
        self.out = Console(highlight=False, soft_wrap=True)

    # progress bar (stderr, terminal only)
    def start_progress(self, total: int) -> None:
        if self.quiet or not err.is_terminal or total <= 1:
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
        self.task_id = self.progress.add_task("pages", total=total, rate="")

    def advance(self) -> None:
        if self.progress is not None:
            t = self.progress.tasks[0]
            self.progress.advance(self.task_id)
            speed = t.finished_speed or t.speed
            self.progress.update(self.task_id, rate=f"{speed:.2f} pages/s" if speed else "")

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _screen(self) -> Console:
        """Where results go on a terminal: above the live progress bar while it runs.

        A second Console on stdout would write past Rich's live display and tear the bar;
        both streams are the same terminal here, so the progress console prints them.
        """
        return self.progress.console if self.progress is not None else self.out

    def note(self, message: str) -> None:
        if not self.quiet:
            err.print(message, markup=False)

    # per page
    def will_stream(self, total: int) -> bool:
        """True when page text is shown live as it is generated (one page on a terminal)."""
        progress = not self.quiet and err.is_terminal and total > 1
        return self.stream and self.tty and not progress

    def on_start(self, prep: Any, tier: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, description=f"{prep.source} p{prep.page} HD{tier}")
        if self.live is not None:  # a retry at a lower tier: drop the partial text
            self.live.stop()
            self.live = None
        self.text = ""
        if self.stream and self.tty and self.progress is None:
            from rich.live import Live
            from rich.markdown import Markdown

            if self.markers:  # the header goes above the text that streams under it
                self.out.rule(f"{prep.source} page {prep.page}/{prep.page_count}", style="dim")
            self.live = Live(Markdown(""), console=self.out, refresh_per_second=8)
            self.live.start()

    def on_text(self, delta: str) -> None:
        self.text += delta
        if self.live is not None:
            from rich.markdown import Markdown

            self.live.update(Markdown(self.text))

    def on_record(self, prep: Any, rec: Any) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            streamed = True
        else:
            streamed = False
        if rec.status == "error":
            line = f"[bold red]error:[/] {rec.error.message}"
            (self.progress.console if self.progress else err).print(line, markup=True)
        elif self.json_out:
            pass
        else:
            where = f"{rec.source} page {rec.page}/{rec.page_count}"
            if self.markers and not streamed:
                header = f"==> {where} <=="
                if self.tty:
                    self._screen().rule(where, style="dim")
                else:
                    sys.stdout.write(header + "\n")
            if self.tty and not streamed:
                from rich.markdown import Markdown

                self._screen().print(Markdown(rec.text))
            elif not self.tty:
                sys.stdout.write(rec.text + "\n")
                sys.stdout.flush()
            notes = []
            if "blank" in rec.flags:
                notes.append("blank page: not sent to the model")
            if "repetition" in rec.flags:
                notes.append("stopped a repetition loop; output trimmed")
            if "tier_fallback" in rec.flags:
                notes.append(f"out of GPU memory; retried at HD{rec.tier}")
            if not self.quiet:
                tier = f", HD{rec.tier} {rec.grid[0]}x{rec.grid[1]}" if rec.grid else ""
                t = rec.timings
                speed = ""
                if t.decode_ms and t.tokens:
                    speed = f", {t.tokens} tokens, {1000 * t.tokens / t.decode_ms:.1f} tok/s"
                msg = f"({where}{tier}{speed}{'; ' + '; '.join(notes) if notes else ''})"
                (self.progress.console if self.progress else err).print(
                    msg, style="dim", markup=False
                )
        self.advance()


def _run_task(
    paths: list[str],
    spec: Any,
    *,
    model: str | None,
    device: str,
    quant: Quant,
    pages: str | None,
    password: str | None,
    max_pixels: int | None,
    output: Path | None,
    json_out: bool,
    quiet: bool,
    redo_failed: bool = False,
    stdin_data: bytes | None = None,
    stream: bool = True,
    markers: bool | None = None,
) -> None:
    """Load the model once and run ``spec`` on every page; exit 0, 3 or 130."""
    import io

    from ixcdoc.pipeline import NotLoaded, Runner, count_pages, run_batch
    from ixcdoc.records import JsonlWriter, load_existing

    if "-" in paths and stdin_data is None:
        stdin_data = sys.stdin.buffer.read()  # read once: counted, then run
    state = None
    if output is not None:
        state = load_existing(output)
        if state.repaired_bytes and not quiet:
            err.print(
                f"repaired {output}: cut a torn last line ({state.repaired_bytes} bytes) "
                "left by an interrupted run",
                markup=False,
            )

    def stdin() -> Any:
        return None if stdin_data is None else io.BytesIO(stdin_data)

    # Inputs first: a mistyped path must not cost a 17 GB load (or download) to report.
    counted = count_pages(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin()
    )
    total = counted.pages + counted.errors
    if counted.pages:
        dm = _load_model(model, device, quant, quiet)
        runner = Runner(dm, model_name=str(dm.model_id), revision=dm.revision, gpu=dm.gpu_budget())
    else:  # nothing readable: record the failures without loading anything
        runner = Runner(NotLoaded(model, device), model_name=NotLoaded.name_of(model))
    if markers is None:
        markers = total != 1
    display = _Display(
        json_out=json_out,
        quiet=quiet,
        markers=markers,
        stream=stream,
        text_out=output is None,  # with -o the records are the output; stdout stays empty
    )
    writers = []
    if output is not None:
        writers.append(JsonlWriter(output))
    if json_out:
        writers.append(JsonlWriter("-"))

    def sink(rec: Any) -> None:
        for w in writers:
            w.write(rec)

    display.start_progress(total)
    stats = None
    try:
        stats = run_batch(
            runner,
            spec,
            paths,
            pages=pages,
            password=password,
            max_pixels=max_pixels,
            stdin=stdin(),
            state=state,
            redo_failed=redo_failed,
            sink=sink,
            on_start=display.on_start,
            on_text=display.on_text if display.will_stream(total) else None,
            on_record=display.on_record,
            on_skip=lambda prep: display.advance(),
        )
    except KeyboardInterrupt:
        display.stop()
        for w in writers:
            w.close()
        hint = " (every finished page is saved; run the same command again to resume)"
        err.print(f"interrupted{hint if output is not None else ''}", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        display.stop()
        for w in writers:
            w.close()
    if not quiet and (total > 1 or stats.skipped or stats.skipped_failed):
        parts = [f"{stats.ok} ok"]
        if stats.failed:
            parts.append(f"{stats.failed} failed")
        if stats.blank:
            parts.append(f"{stats.blank} blank")
        if stats.skipped:
            parts.append(f"{stats.skipped} already done")
        if stats.skipped_failed:
            parts.append(f"{stats.skipped_failed} failed earlier (retry with --redo-failed)")
        err.print(", ".join(parts) + (f"; records in {output}" if output else ""), markup=False)
    if stats.any_failed:
        raise typer.Exit(EXIT_PARTIAL)


def _question_from_stdin(doc: str, question: str | None) -> str:
    if question is not None and question.strip():
        return question.strip()
    if doc != "-" and not sys.stdin.isatty():
        text = sys.stdin.read().strip()
        if text:
            return text
    raise UsageError("no question given: pass it after DOC, or pipe it on stdin")


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
    all_pages: AllPagesOpt = False,
    top_k: TopKOpt = 1,
    password: PasswordOpt = None,
    max_pixels: MaxPixelsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about a document, citing the page.

    Multi-page PDFs with a text layer: the page(s) that best match the question (BM25) are
    read. Scans and pages without text: every selected page is answered in turn.

    \b
    ixcdoc ask paper.pdf "What dataset is used in Table 3?"
    maim -s | ixcdoc ask - "what does the error say?"
    echo "what is the total?" | ixcdoc ask invoice.pdf
    """
    import io

    from ixcdoc.pipeline import RunSpec, ask_pages
    from ixcdoc.tasks import ASK

    q = _question_from_stdin(doc, question)
    spec = RunSpec(task=ASK, prompt=q, question=q, hd=parse_hd(hd), max_new_tokens=max_new_tokens)
    data = sys.stdin.buffer.read() if doc == "-" else None
    if not all_pages:
        chosen = ask_pages(
            doc,
            q,
            stdin=None if data is None else io.BytesIO(data),
            pages=pages,
            top_k=top_k,
            password=password,
            max_pixels=max_pixels,
        )
        if chosen:
            pages = ",".join(map(str, chosen))
    _run_task(
        [doc],
        spec,
        model=model,
        device=device,
        quant=quant,
        pages=pages,
        password=password,
        max_pixels=max_pixels,
        output=None,
        json_out=json_out,
        quiet=quiet,
        stdin_data=data,
    )


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
    max_pixels: MaxPixelsOpt = None,
    prompt: PromptOpt = None,
    redo_failed: RedoOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe every page of files and folders.

    Text goes to stdout (pages marked "==> FILE page N/M <=="); --json prints one record
    per page; -o FILE.jsonl appends records and resumes where an earlier run stopped.

    \b
    ixcdoc extract scans/ -o scans.jsonl
    ixcdoc extract invoice.pdf --json | jq -r .text
    ixcdoc extract tiny-print.pdf --hd 55
    """
    from ixcdoc.pipeline import RunSpec
    from ixcdoc.tasks import EXTRACT

    if redo_failed and output is None:
        raise UsageError("--redo-failed needs -o/--output (the file that records failures)")
    spec = RunSpec(
        task=EXTRACT,
        prompt=prompt or EXTRACT.prompt,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
    )
    _run_task(
        paths,
        spec,
        model=model,
        device=device,
        quant=quant,
        pages=pages,
        password=password,
        max_pixels=max_pixels,
        output=output,
        json_out=json_out,
        quiet=quiet,
        redo_failed=redo_failed,
        stream=output is None,
    )


@app.command()
@handles_errors
def chart(
    image: Annotated[str, typer.Argument(help="Chart image or PDF, or - for stdin.")],
    table: Annotated[
        bool, typer.Option("--table", help="Give the chart's data as a Markdown table.")
    ] = False,
    hd: HdOpt = "auto",
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: MaxNewOpt = None,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    json_out: JsonOpt = False,
    prompt: PromptOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Summarize a chart; --table gives its data as a Markdown table.

    \b
    ixcdoc chart revenue.png
    ixcdoc chart revenue.png --table
    """
    from ixcdoc.pipeline import RunSpec
    from ixcdoc.tasks import CHART, CHART_TABLE

    preset = CHART_TABLE if table else CHART
    spec = RunSpec(
        task=preset,
        prompt=prompt or preset.prompt,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
    )
    _run_task(
        [image],
        spec,
        model=model,
        device=device,
        quant=quant,
        pages=pages,
        password=password,
        max_pixels=None,
        output=None,
        json_out=json_out,
        quiet=quiet,
    )


# ---- serve ---------------------------------------------------------------------------------


@app.command()
@handles_errors
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; anything but loopback needs a key.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="IXCDOC_API_KEY", help="Require 'Authorization: Bearer KEY'."
        ),
    ] = None,
    allow_urls: Annotated[
        bool,
        typer.Option("--allow-urls", help="Fetch http(s) image URLs (a server-side request)."),
    ] = False,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Waiting requests before 429.")
    ] = 64,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, help="Largest request body (413).")
    ] = 20.0,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="Name in /v1/models [default: the hub id or folder]."),
    ] = None,
    max_pixels: MaxPixelsOpt = None,
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (/v1/chat/completions).

    \b
    ixcdoc serve --port 8000
    ixcdoc serve --host 0.0.0.0 --api-key "$KEY"
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        err.print("ixcdoc serve needs: pip install 'ixcdoc[serve]'", markup=False)
        raise typer.Exit(1) from None
    from ixcdoc.serve.run import is_loopback
    from ixcdoc.serve.run import serve as run_server

    if not is_loopback(host) and not api_key:
        raise UsageError(
            f"--host {host} makes the server reachable from other machines: set --api-key "
            "(or IXCDOC_API_KEY) as well"
        )
    dm = _load_model(model, device, quant, quiet)
    run_server(
        dm,
        host=host,
        port=port,
        api_key=api_key,
        announce=lambda url: err.print(f"listening on {url}", markup=False),
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        allow_urls=allow_urls,
        model_name=model_name,
    )


# ---- setup commands --------------------------------------------------------------------------


@app.command()
@handles_errors
def doctor(
    selftest: Annotated[
        bool,
        typer.Option(
            "--selftest", help="Run the whole path on a tiny random model (CPU, seconds)."
        ),
    ] = False,
    vram: VramOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check GPU, CUDA, torch, bitsandbytes, flash-attn and cached weights; tiers that fit.

    \b
    ixcdoc doctor
    ixcdoc doctor --selftest
    """
    from ixcdoc.pipeline import doctor_report, tier_rows
    from ixcdoc.pipeline import selftest as run_selftest

    report = doctor_report()
    rows = tier_rows(vram_gib=vram, tiers=(9, 16, 25, 36, 55, 65))
    if json_out or not sys.stdout.isatty():
        sys.stdout.write(json.dumps({**report, "tiers": rows}) + "\n")
    else:
        out = Console(highlight=False)
        for key, value in report.items():
            if key == "cached_models":
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
    if selftest:
        if not json_out:
            err.print("selftest: tiny random checkpoint, CPU", markup=False)

        def log(step: str, ms: float, detail: str) -> None:
            if not json_out:
                err.print(f"  ok  {step:<48} {ms:8.0f} ms  {detail}", markup=False)

        run_selftest(log)
        if not json_out:
            err.print("selftest passed: this installation can load and run the model", markup=False)


@app.command()
@handles_errors
def download(
    model: Annotated[
        str | None,
        typer.Argument(help="Hub id [default: $IXCDOC_MODEL or the official 4KHD checkpoint]."),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch, tag or commit.")
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


def main() -> None:
    """Console entry point: one red line for usage errors, exit codes as documented."""
    try:
        code = app(standalone_mode=False)
    except ClickUsageError as e:
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
