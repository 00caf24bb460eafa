"""The Typer app, its error handling and the options the commands share.

stdout carries results only (answers, text, JSON lines, the plan table); everything for people
(progress, warnings, errors) goes to stderr. Errors are one red line; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import functools
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
    EXIT_TERMINATED,
    EXIT_USAGE,
    IxcdocError,
    Terminated,
    UsageError,
)
from ixcdoc.tasks import PRESETS, parse_hd

try:  # Typer >= 0.22 vendors Click under typer._click; older Typer uses Click itself.
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError as ClickUsageError

    NoArgsIsHelpError = None  # type: ignore[assignment,misc]


def _plain_argument_help() -> None:
    """Help shows arguments as ``PATH...`` and ``[QUESTION]``, as Unix tools do.

    Typer 0.2x prints ``{PATH...}`` in the usage line and a ``<list[str]>`` type next to each
    argument; our arguments carry their own metavars, so both are noise. Older Typer has
    neither hook and needs nothing.
    """
    arg = getattr(typer.core, "TyperArgument", None)
    if arg is None or not hasattr(arg, "_usage_display_name"):  # pragma: no cover
        return
    arg.display_type_rich = lambda self, ctx: None
    arg._usage_display_name = lambda self: self.metavar or self.name.upper()


_plain_argument_help()

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


def fail_line(message: str) -> None:
    """One red ``error:`` line on stderr (the message is text, never Rich markup: a file
    named "scan[1].pdf" must print as it is)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)


def handles_errors(fn: F) -> F:
    """Translate library errors into one red line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except IxcdocError as e:
            if _state["debug"]:
                raise
            fail_line(e.message)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:
            err.print("terminated")
            raise typer.Exit(EXIT_TERMINATED) from None
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly with SIGPIPE's status, as Unix
            # tools do. stdout now points at devnull so the final flush cannot raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None

    return wrapper  # type: ignore[return-value]


# ---- shared options: one definition each ------------------------------------------------


def hd_callback(value: str) -> str:
    """Validate --hd (auto or a whole number) as a usage error."""
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


def _device_callback(value: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value.strip()):
        raise typer.BadParameter(f"use auto, cuda, cuda:N or cpu, got {value!r}")
    return value.strip()


HdOpt = Annotated[
    str,
    typer.Option(
        "--hd",
        metavar="auto|N",
        help="HD tier: 'auto' (per page) or N = max 336-px crops (9, 16, 25, 55, ...).",
        callback=hd_callback,
    ),
]


class Quant(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    q4 = "4bit"


# The task names come from the presets (one list for the CLI, the records and the planner).
Task = Enum("Task", [(name, name) for name in PRESETS], type=str)  # type: ignore[misc]


QuantOpt = Annotated[
    Quant,
    typer.Option(
        "--quant",
        metavar="auto|bf16|4bit",
        help="Weights: auto (CUDA: bf16 if it fits, else 4bit; CPU: float32), bf16, 4bit.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        envvar="IXCDOC_MODEL",
        metavar="ID|PATH",
        help="Hub id or local checkpoint folder [default: internlm/internlm-xcomposer2-4khd-7b].",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="auto, cuda, cuda:N, or cpu (slow; float32 unless --quant bf16).",
        callback=_device_callback,
    ),
]
MaxNewOpt = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        min=1,
        max=32768,  # the model's positions: no answer can be longer
        metavar="N",
        help="Generation limit [default: per task].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per page on stdout.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", metavar="FILE", help="Append JSON lines to this file (resumable)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
PagesOpt = Annotated[
    str | None,
    typer.Option(
        "--pages",
        metavar="RANGES",
        help="Pages to read, 1-based: 1,3-5 (applies to every file).",
        callback=_pages_callback,
    ),
]
PasswordOpt = Annotated[
    str | None,
    typer.Option("--password", metavar="TEXT", help="Password for encrypted PDFs."),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        min=1,
        metavar="N",
        help="Refuse images larger than this [default: 100000000].",
    ),
]


def _vram_callback(value: float | None) -> float | None:
    from ixcdoc.tasks import check_vram_gib

    try:
        return check_vram_gib(value)
    except IxcdocError as e:
        raise typer.BadParameter(e.message) from None


VramOpt = Annotated[
    float | None,
    typer.Option(
        "--vram",
        metavar="GIB",
        callback=_vram_callback,
        help="Plan for a GPU with this many GiB free (no GPU needed).",
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option("--prompt", metavar="TEXT", help="Replace the task's preset instruction."),
]


def parse_batch(value: str) -> int | None:
    """``--batch-size``: "auto" -> None (what memory allows), else a whole number >= 1."""
    text = value.strip().lower()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--batch-size must be 'auto' or a whole number >= 1, got {value!r}")
    return n


def _batch_callback(value: str) -> str:
    try:
        parse_batch(value)
    except IxcdocError as e:
        raise typer.BadParameter(e.message) from None
    return value


BatchOpt = Annotated[
    str,
    typer.Option(
        "--batch-size",
        metavar="auto|N",
        help="Pages in flight on the GPU at once: auto (what memory allows) or N; 1 runs one "
        "page at a time.",
        callback=_batch_callback,
    ),
]
BeamsOpt = Annotated[
    int,
    typer.Option(
        "--beams",
        min=1,
        max=16,
        metavar="N",
        help="Beam search with N beams (upstream's demo uses 3); 1 is greedy.",
    ),
]
PathsArg = Annotated[
    list[str],
    typer.Argument(metavar="PATH...", help="Files, folders, globs, or - for stdin."),
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
    from ixcdoc.verbosity import set_verbose

    _state["debug"] = debug
    set_verbose(True if debug else None)  # library warnings only with --debug (or IXCDOC_DEBUG)


# ---- model commands ------------------------------------------------------------------------

RedoOpt = Annotated[
    bool, typer.Option("--redo-failed", help="With -o: retry pages recorded as failed.")
]
TopKOpt = Annotated[
    int,
    typer.Option(
        "--top-k",
        min=1,
        metavar="N",
        help="Answer the N best pages for the question (text layer, else the model's screening).",
    ),
]
AllPagesOpt = Annotated[
    bool,
    typer.Option(
        "--all-pages", help="Answer every selected page in turn (no ranking, no screening)."
    ),
]


def load_model(
    model: str | None, device: str, quant: Quant, quiet: bool, *, lines: bool = False
) -> Any:
    """Load once per process, with a spinner on a terminal (for commands that hold a model
    themselves; the batch commands load through ``ixcdoc.batch.run``). ``lines``: also say
    "loading" off a terminal, and what was loaded in how long (unless ``quiet``)."""
    import time

    from ixcdoc.hub import model_name
    from ixcdoc.runtime import load

    what = f"loading {model_name(model)} ({quant.value}, {device})"
    t0 = time.perf_counter()
    if quiet or not err.is_terminal:
        if lines and not quiet:
            err.print(what, markup=False)
        dm = load(model, device=device, quant=quant.value)
    else:
        from rich.text import Text

        with err.status(Text(what)):  # a folder named "ckpt[1]" is text, not markup
            dm = load(model, device=device, quant=quant.value)
    if lines and not quiet:
        took = time.perf_counter() - t0
        err.print(f"loaded in {took:.1f} s: {dm.precision} on {dm.device}", markup=False)
    return dm


def main() -> None:
    """Console entry point: one red line for usage errors, exit codes as documented."""
    try:
        code = app(standalone_mode=False)
    except ClickUsageError as e:
        if NoArgsIsHelpError is not None and isinstance(e, NoArgsIsHelpError):
            typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
            sys.exit(EXIT_USAGE)
        hint = f" (see: {e.ctx.command_path} --help)" if e.ctx else ""
        fail_line(e.format_message() + hint)
        code = EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)
