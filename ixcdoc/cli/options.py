"""The options the commands share, declared once: each an ``Annotated`` Typer type with its
flag, metavar, help and check (a bad value is a usage error, not a traceback), and the values
they become (``RunOptions``, ``PageOptions``, ``make_job``). A command lists the options it
takes in its signature, in the order its ``--help`` shows them, and passes them on as one value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ixcdoc.errors import IxcdocError, UsageError
from ixcdoc.outdir import FORMATS
from ixcdoc.tasks import PRESETS, parse_hd

if TYPE_CHECKING:
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.tasks import TaskPreset


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
# -o stays the text typed: a trailing slash means a folder, everywhere (Path would drop it).
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE|DIR/",
        help="Append JSON lines to this file (resumable); DIR/ gets a new shard per run.",
    ),
]


def file_only(value: str | None) -> str | None:
    """An output that can only be a file (``eval -o``, ``merge -o``): ``DIR/`` is a usage
    error, never a file named DIR."""
    if value is not None and value.endswith(("/", os.sep)):
        raise typer.BadParameter(f"{value} names a folder (a trailing slash); give a file name")
    return value


FileOutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Append JSON lines to this file (resumable).",
        callback=file_only,
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


def _speculate_callback(value: str) -> str:
    from ixcdoc.engine.request import SPECULATE_MODES

    if value not in SPECULATE_MODES:
        raise typer.BadParameter(f"use {' or '.join(SPECULATE_MODES)}, got {value!r}")
    return value


SpeculateOpt = Annotated[
    str,
    typer.Option(
        "--speculate",
        metavar="auto|off",
        help="auto: the model checks drafts (the page's text layer, its own earlier output) "
        "several tokens per step, the same text faster; off: one token per step.",
        callback=_speculate_callback,
    ),
]
PathsArg = Annotated[
    list[str],
    typer.Argument(metavar="PATH...", help="Files, folders, globs, or - for stdin."),
]


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


# ---- the values the options become ----------------------------------------------------------


@dataclass(frozen=True)
class PageOptions:
    """--pages, --password, --max-pixels: which pages of the inputs are read, and how."""

    pages: str | None
    password: str | None
    max_pixels: int | None

    def read(self, paths: list[str], *, exclude: Sequence[str | os.PathLike[str]] = ()) -> Sources:
        """The inputs as pages to run (``exclude``: this run's own output files and folders)."""
        from ixcdoc.inputs import Sources

        return Sources.read(
            paths,
            pages=self.pages,
            password=self.password,
            max_pixels=self.max_pixels,
            exclude=exclude,
        )


@dataclass(frozen=True)
class RunOptions:
    """The options a model command passes on: the model and where it runs, where the results
    go and how the run is shown."""

    model: str | None
    device: str
    quant: Quant
    quiet: bool
    output: str | None = None
    json_out: bool = False
    redo_failed: bool = False
    batch_size: str | None = None  # --batch-size as typed; None: the command has no such option

    @property
    def slots(self) -> int | None:
        """Pages (or requests) in flight at once: None is what memory allows."""
        return None if self.batch_size is None else parse_batch(self.batch_size)

    def load_args(self) -> dict[str, Any]:
        """``model``, ``device`` and ``quant`` as ``runtime.load`` and ``batch.run`` take them."""
        return {"model": self.model, "device": self.device, "quant": self.quant.value}

    def check_redo(self) -> None:
        """--redo-failed retries what a records file says failed: without -o there is none."""
        if self.redo_failed and self.output is None:
            raise UsageError("--redo-failed needs -o/--output (the file that records failures)")


def make_job(
    preset: TaskPreset,
    prompt: str,
    *,
    hd: str,
    max_new_tokens: int | None,
    beams: int,
    speculate: str = "auto",
    **more: Any,
) -> Job:
    """The job --hd, --max-new-tokens, --beams and --speculate describe for a task's pages."""
    from ixcdoc.pagerun import Job

    return Job(
        preset,
        prompt,
        hd=parse_hd(hd),
        max_new_tokens=max_new_tokens,
        num_beams=beams,
        speculate=speculate,
        **more,
    )
