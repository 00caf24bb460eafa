"""What a person sees on a real terminal: every character of every page, wrapped, and a
progress display that tells the truth (a tmux pane of 40, 80 and 200 columns).

The text on the screen is compared with the ``--json`` text of the same command, with the
whitespace taken out of both: wrapping may only turn a space into a line break.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.cells import cell_len

from tests.cli.helpers import IXCDOC, Checkpoints, model_args, subprocess_env
from tests.cli.terminal import needs_tmux, run_in_terminal

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|\x1b[=>]")

pytestmark = [needs_tmux, pytest.mark.slow]


def _squeeze(s: str) -> str:
    """``s`` without whitespace, control characters as the terminal shows them."""
    from ixcdoc.cli.wrapping import shown

    return "".join("".join(map(shown, s)).split())


def _json_texts(args: list[str]) -> list[dict]:
    """The records the same command prints with --json (stdout off a terminal)."""
    out = subprocess.run(
        [*IXCDOC, *args, "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        timeout=300,
        check=True,
    ).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def _screen(args: list[str], width: int) -> list[str]:
    screen = run_in_terminal([*IXCDOC, *args], width=width, env=subprocess_env(), cwd=ROOT)
    assert screen.exit_code == 0, "\n".join(screen.lines)
    wide = [line for line in screen.lines if cell_len(line) > width]
    assert not wide, f"lines wider than {width} columns: {wide}"
    return screen.lines


@pytest.mark.parametrize("width", [40, 80, 200])
def test_a_streamed_answer_is_on_the_screen_whole(ckpts: Checkpoints, width: int) -> None:
    args = [
        "ask",
        "samples/screenshot.png",
        "What does the screen say?",
        *model_args(ckpts.normal, max_new_tokens=160),
    ]
    (rec,) = _json_texts(args)
    assert len(rec["text"]) > 2 * width  # long enough to wrap several times at any width
    lines = _screen(args, width)
    note = max(k for k, line in enumerate(lines) if line.startswith("(samples/screenshot.png"))
    assert _squeeze("\n".join(lines[:note])) == _squeeze(rec["text"])
    assert "page 1/1, HD" in _squeeze("".join(lines[note:])).replace("page1/1,HD", "page 1/1, HD")


@pytest.mark.parametrize(
    ("args", "width"),
    [
        (["extract", "samples/"], 40),
        (["extract", "samples/"], 200),
        (["ask", "samples/scan.pdf", "Who signed it?", "--all-pages"], 80),
    ],
)
def test_every_page_of_a_run_is_on_the_screen_whole(
    ckpts: Checkpoints, args: list[str], width: int
) -> None:
    args = [*args, *model_args(ckpts.normal, max_new_tokens=48)]
    records = _json_texts(args)
    assert len(records) >= 2
    lines = _screen(args, width)
    screen = _squeeze("\n".join(lines))
    for rec in records:
        assert _squeeze(rec["text"]) in screen, rec["source"]
        assert f"page{rec['page']}/{rec['page_count']}" in screen
    # The progress display is gone; the summary gives the run's means in its place.
    assert not any(line.startswith("running ") for line in lines)
    # The summary closes the screen; it wraps over as many lines as the width needs.
    first = max(k for k, line in enumerate(lines) if line.startswith(f"{len(records)} ok;"))
    summary = _squeeze(" ".join(lines[first:]))
    assert summary.startswith(f"{len(records)}ok;{len(records)}pagesin")
    assert "pages/s" in summary and "tok/s" in summary


def test_piped_to_a_program_on_the_same_terminal_nothing_is_torn(ckpts: Checkpoints) -> None:
    """``extract samples/ | cat`` on a terminal: cat writes the pages to the terminal while
    ixcdoc runs, so a redrawn progress display there would be torn and left in pieces between
    them. Every page's text is on the screen whole, no progress frame is, and the summary
    line ends it."""
    args = ["extract", "samples/", *model_args(ckpts.normal, max_new_tokens=48)]
    records = _json_texts(args)
    screen = run_in_terminal(
        ["sh", "-c", '"$@" | cat', "sh", *IXCDOC, *args],
        width=80,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert screen.exit_code == 0, "\n".join(screen.lines)
    text = "\n".join(screen.lines)
    assert "pages · eta" not in text and "tok/s ·" not in text, text
    assert not any(line.startswith("running ") for line in screen.lines), text
    # cat writes the text raw: the terminal shows no control character (the random model
    # writes some), so both sides are compared without them.
    flat = _printable(text)
    for rec in records:
        header = f"==> {rec['source']} page {rec['page']}/{rec['page_count']} <=="
        assert _printable(header + rec["text"]) in flat, rec["source"]
    first = max(k for k, line in enumerate(screen.lines) if line.startswith(f"{len(records)} ok;"))
    # (how many tokens came from drafts depends on the measured step times: not compared)
    tokens = sum(r["timings"]["tokens"] for r in records)
    summary = _squeeze(" ".join(screen.lines[first:]))
    assert re.fullmatch(rf".*,{tokens:,}tokens,.*fromdrafts\(\d+of{tokens:,}\)", summary), summary


def _printable(s: str) -> str:
    """``s`` without whitespace and without the characters a terminal does not draw."""
    return "".join(c for c in s if c.isprintable() and not c.isspace())


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux's script is not installed")
def test_the_progress_display_names_the_pages_in_flight_and_counts_tokens(
    ckpts: Checkpoints, tmp_path: Path
) -> None:
    """Every frame the display drew, as recorded by ``script``: pages done out of the total,
    the pages in flight by name, tokens and rates, and each page's text shown as soon as it
    finished (pages 1-2 of 4 with two slots: before pages 3-4 start)."""
    log = tmp_path / "typescript"
    args = ["extract", "samples/paper.pdf", "samples/scan.pdf", "--batch-size", "2"]
    args += model_args(ckpts.normal, max_new_tokens=24)
    records = _json_texts(args)
    command = " ".join(f"'{a}'" for a in [*IXCDOC, *args])
    screen = run_in_terminal(
        ["script", "-q", "-e", "-c", command, str(log)],
        width=100,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert screen.exit_code == 0, "\n".join(screen.lines)
    frames = ANSI.sub("", log.read_bytes().decode("utf-8", "replace"))
    # Pages in flight by name from the start (the second document is counted once opened).
    assert re.search(r"0/[24] pages · eta -:--", frames)
    assert "running 2: paper.pdf p1 (0 tok), paper.pdf p2 (0 tok)" in frames
    # An ETA from tokens before any page finished (a bound, "<"), then from finished pages.
    assert re.search(r"0/[24] pages · eta < \d+:\d\d", frames)
    assert re.search(r"[123]/4 pages · eta \d+:\d\d", frames)
    assert re.search(r"\d+ tokens · [\d.]+ tok/s · [\d.]+ pages/s", frames)
    assert re.search(r"running \d: .*scan\.pdf p2 \(\d+ tok\)", frames)
    assert "4/4 pages" in frames
    # A page's text is on the screen when it finishes, before the last page has started.
    flat = _squeeze(frames)
    firsts = [flat.find(_squeeze(r["text"])) for r in records if "paper" in r["source"]]
    assert all(k >= 0 for k in firsts)
    assert min(firsts) < flat.find("scan.pdfp2(")


def test_the_summary_says_how_many_tokens_came_from_drafts_in_40_columns(
    ckpts: Checkpoints, tmp_path: Path
) -> None:
    """A born-digital PDF drafts from its text layer: the last line gives the share of the
    records' tokens accepted from drafts, floored, wrapped at spaces on a narrow terminal;
    ``--speculate off`` says nothing of drafts."""
    out = tmp_path / "out.jsonl"
    args = ["extract", "samples/paper.pdf", "-o", str(out), *model_args(ckpts.normal, 24)]
    screen = _squeeze("\n".join(_screen(args, 40)))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    tokens = sum(r["timings"]["tokens"] for r in recs)
    accepted = sum(r["timings"]["accepted_tokens"] for r in recs)
    assert len(recs) == 2 and all(r["timings"]["draft_tokens"] > 0 for r in recs)
    share = f"{100 * accepted // tokens}% of tokens from drafts ({accepted:,} of {tokens:,})"
    assert _squeeze(share) in screen
    off = tmp_path / "off.jsonl"
    args = ["extract", "samples/paper.pdf", "-o", str(off), "--speculate", "off"]
    screen = _squeeze("\n".join(_screen([*args, *model_args(ckpts.normal, 24)], 40)))
    assert "2ok;2pagesin" in screen and "drafts" not in screen
