"""Helpers for the CLI tests: inputs on disk, an independent tier geometry, record reading.

The geometry here is written from the upstream HD_transform description (and the token formula
in the product docs), not by calling ``ixcdoc.tiling``, so that plan output is checked against
a second implementation.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw
from typer.testing import Result

from ixcdoc.records import PageRecord, validate_line
from tests.inputs.builders import add_text_page


@dataclass(frozen=True)
class Checkpoints:
    """Tiny random checkpoints in the official layout (the ``ckpts`` fixture writes them)."""

    normal: Path  # seed 0: greedy output is arbitrary text
    loop: Path  # greedy output repeats a three-token cycle forever


# invoke(args, input=None) -> Result: the ``invoke`` fixture, the app run in-process.
Invoke = Callable[..., Result]

# The console entry point as a module: ``main()`` turns usage errors into one red line.
IXCDOC = [sys.executable, "-m", "ixcdoc.cli"]


def subprocess_env() -> dict[str, str]:
    """The environment for a child ixcdoc: offline hub, no colour, no surprise model."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"})
    env.pop("IXCDOC_MODEL", None)
    return env


def model_args(ckpt: Path, max_new_tokens: int = 4) -> list[str]:
    """Options that run a tiny checkpoint on the CPU with a short generation."""
    return ["--model", str(ckpt), "--device", "cpu", "--max-new-tokens", str(max_new_tokens)]


# ---- inputs --------------------------------------------------------------------------------


def text_png(path: Path, label: str, size: tuple[int, int] = (160, 120)) -> Path:
    """A white PNG of size (width, height) with a line of black text and a box: not blank."""
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.text((6, 6), label, fill="black")
    draw.rectangle((10, 30, size[0] - 10, size[1] - 10), outline="black", width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def white_png(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """An all-white PNG of size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def text_pdf(
    path: Path, pages: Sequence[str | None], size: tuple[float, float] = (200, 150)
) -> Path:
    """A PDF with one page per entry: that text (a real text layer), or a blank page for None."""
    doc = pymupdf.open()
    for text in pages:
        if text is None:
            doc.new_page(width=size[0], height=size[1])
        else:
            add_text_page(doc, [(10, text)], size=size)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def scan_page(label: str, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A white page image of (width, height) with a line of text and a box: not blank."""
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.text((10, 10), label, fill="black")
    draw.rectangle((20, 60, size[0] - 20, size[1] - 20), outline="black", width=3)
    return im


def scan_pdf(
    path: Path,
    pages: Sequence[str | None],
    *,
    texts: Mapping[int, str] | None = None,
    size: tuple[float, float] = (400, 300),
) -> Path:
    """A PDF with one page per label, as a scanner makes it: the page is an image of the label
    (``scan_page``) and has no text layer; None is a white page. ``texts`` {page: text} makes
    those 1-based pages born-digital instead (a real text layer), for mixed documents."""
    doc = pymupdf.open()
    for number, label in enumerate(pages, 1):
        if texts is not None and number in texts:
            add_text_page(doc, [(10, texts[number])], size=size)
            continue
        page = doc.new_page(width=size[0], height=size[1])
        if label is not None:
            buf = io.BytesIO()
            scan_page(label).save(buf, "PNG")
            page.insert_image(page.rect, stream=buf.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def encrypted_pdf(path: Path) -> Path:
    """A one-page AES-256 encrypted PDF (user password "open")."""
    doc = pymupdf.open()
    add_text_page(doc, [(10, "locked content")], size=(200, 150))
    doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="open", owner_pw="owner")
    doc.close()
    return path


def corrupt_pdf(path: Path) -> Path:
    """A file that starts like a PDF and ends after three lines: beyond repair."""
    path.write_bytes(b"%PDF-1.7\n1 0 obj\n<<")
    return path


# ---- independent geometry ------------------------------------------------------------------


def expected_grid(h: int, w: int, hd: int, tile: int = 336) -> tuple[int, int]:
    """(rows, cols) of the crop grid upstream HD_transform gives an (h, w) page at tier hd."""
    transposed = w < h
    long_side, short_side = (h, w) if transposed else (w, h)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd:
        scale += 1
    scale -= 1
    new_short = int(scale * tile / ratio)
    short_crops = math.ceil(new_short / tile)
    return (scale, short_crops) if transposed else (short_crops, scale)


def expected_tokens(rows: int, cols: int, tile: int = 336, patch: int = 14) -> int:
    """Image tokens for a rows x cols grid: 144(hw+1) + 12(h+1) + 1 for 336-px tiles.

    In general, with g = tile / patch / 2 merged tokens per crop side: g^2 (hw+1) + g (h+1) + 1.
    """
    g = tile // patch // 2
    return g * g * (rows * cols + 1) + g * (rows + 1) + 1


# ---- records -------------------------------------------------------------------------------


def parse_lines(text: str) -> list[PageRecord]:
    """Validate every line of a JSONL text (each must end with a newline) into records."""
    assert text == "" or text.endswith("\n"), f"JSONL must end with a newline: {text[-80:]!r}"
    return [validate_line(line) for line in text.splitlines(keepends=True)]


def read_records(path: Path) -> list[PageRecord]:
    """Every line of a JSONL file, each checked with ``validate_line`` (no torn tail allowed)."""
    return parse_lines(path.read_text(encoding="utf-8"))


def page_keys(records: Sequence[PageRecord]) -> list[tuple[str, int | None]]:
    """(source, page) of each record, in file order."""
    return [(r.source, r.page) for r in records]


def run_in_terminal(
    args: Sequence[str], env: dict[str, str], timeout: float = 120.0
) -> tuple[int, str]:
    """Run a command with stdout on a pseudo-terminal, as a person sees it: (exit code, what
    the terminal showed, colours and carriage returns removed). Stderr is discarded."""
    import pty
    import re
    import select
    import subprocess
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        list(args), stdout=slave, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{args} did not finish in {timeout} s")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return code, re.sub(r"\x1b\[[0-9;]*m", "", text)
