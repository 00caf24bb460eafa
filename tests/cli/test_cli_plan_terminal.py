"""``ixcdoc plan`` and ``ixcdoc tiers`` as a person sees them: the real CLI in a real terminal
(a tmux pane) 40, 80 and 200 columns wide, read back from the screen.

Nothing may be broken mid-word: no line is wider than the terminal (except a document's name,
which the terminal itself wraps), every name and size appears whole, and each page's tier,
grid and image tokens on the screen are those of ``--json``.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.helpers import IXCDOC, subprocess_env
from tests.cli.terminal import Screen, needs_tmux, run_in_terminal

pytestmark = needs_tmux

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = (40, 80, 200)
# Every column of the plan table, as --wide shows them.
PLAN_HEADERS = [
    "page",
    "native WxH",
    "dpi",
    "tier",
    "grid RxC",
    "padded WxH",
    "tokens",
    "bf16 GiB",
    "4bit GiB",
    "fits",
    "batch auto",
    "why",
]
PAGE = re.compile(r"^\s*(\d+)/(\d+)\s")  # a page row starts with "page/count"
SIZE = re.compile(r"\d+x\d+")
HIDDEN = re.compile(r"hidden at (\d+) columns: (.*) \(--wide shows them\)")


@pytest.fixture(scope="module")
def long_named(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scan whose name is longer than 80 columns, with spaces and Rich markup in it."""
    d = tmp_path_factory.mktemp("long")
    path = d / "quarterly report [bold]draft :smile: scanned at the front desk copier 0001.png"
    Image.new("RGB", (2480, 3508), "white").save(path)
    return path


def plan_json(args: list[str]) -> list[dict]:
    """The same plan as JSON lines (stdout is a pipe here)."""
    out = subprocess.run(
        [*IXCDOC, "plan", *args, "--json"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def on_screen(args: list[str], width: int) -> Screen:
    screen = run_in_terminal([*IXCDOC, *args], width=width, env=subprocess_env(), cwd=ROOT)
    assert screen.exit_code == 0, "\n".join(screen.lines)
    return screen


def page_rows(screen: Screen, sources: set[str]) -> dict[tuple[str, int], list[str]]:
    """(source, page) -> the words of its row, the source being the name line above it."""
    rows: dict[tuple[str, int], list[str]] = {}
    source = None
    for line in screen.lines:
        if line.rstrip() in sources:
            source = line.rstrip()
        elif m := PAGE.match(line):
            assert source is not None, line
            rows[(source, int(m.group(1)))] = line.split()
    return rows


def tier_grid_tokens(words: list[str]) -> tuple[int, list[int], int]:
    """Tier, grid and image tokens from a row's words: the tier is the HDn word, the grid the
    word after it; the tokens are the next plain number (padded WxH may come between)."""
    k = next((i for i, w in enumerate(words) if re.fullmatch(r"HD\d+", w)), None)
    assert k is not None and k + 2 < len(words), f"no tier, grid and tokens in {words}"
    assert re.fullmatch(r"\d+x\d+", words[k + 1]), f"no grid after the tier in {words}"
    tokens = next((int(w) for w in words[k + 2 :] if w.isdigit()), None)
    assert tokens is not None, f"no token count in {words}"
    return int(words[k][2:]), [int(x) for x in words[k + 1].split("x")], tokens


def hidden_columns(screen: Screen) -> list[str]:
    """The columns the note on stderr names (its lines joined back), or none."""
    text = " ".join(line.strip() for line in screen.lines)
    m = HIDDEN.search(text)
    return [] if m is None else m.group(2).split(", ")


def check_plan_screen(screen: Screen, rows: list[dict], width: int) -> None:
    sources = {r["source"] for r in rows}
    assert sources, "nothing planned"
    for line in screen.lines:
        if line.rstrip() not in sources:  # a name longer than the terminal wraps as text
            assert len(line) <= width, f"{len(line)} > {width}: {line!r}"
    for s in sources:
        assert s in [line.rstrip() for line in screen.lines], f"{s!r} is not whole on a line"
    # Every size on the screen is a whole size of a page (a broken one, "1469x19" + "01",
    # matches none); from 80 columns up the native sizes are there.
    sizes = set()
    for r in rows:
        (h, w), (ph, pw) = r["native_size"], r["padded_size"]
        sizes |= {f"{w}x{h}", f"{pw}x{ph}", "{}x{}".format(*r["grid"])}
    shown = {m for line in screen.lines if line.rstrip() not in sources for m in SIZE.findall(line)}
    assert shown <= sizes, shown - sizes
    if width >= 80:
        assert {"{1}x{0}".format(*r["native_size"]) for r in rows} <= shown
    # Each page on the screen once, with the tier, grid and tokens of --json.
    on = page_rows(screen, sources)
    assert set(on) == {(r["source"], r["page"]) for r in rows}
    for r in rows:
        words = on[(r["source"], r["page"])]
        assert words[0] == f"{r['page']}/{r['page_count']}"
        assert tier_grid_tokens(words) == (r["tier"], r["grid"], r["image_tokens"])


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_fits_the_terminal(width: int, long_named: Path) -> None:
    args = ["samples", str(long_named)]
    rows = plan_json(args)
    assert len(rows) == 7 and rows[-1]["source"] == str(long_named)
    screen = on_screen(["plan", *args], width)
    check_plan_screen(screen, rows, width)
    hidden = hidden_columns(screen)
    assert set(hidden) <= set(PLAN_HEADERS)
    if width == 200:
        assert hidden == []  # every column fits
    else:
        assert hidden and "padded WxH" in hidden  # the least important goes first
        assert not {"page", "tier", "grid RxC", "tokens", "why"} & set(hidden)


def test_plan_for_a_gpu_you_do_not_have() -> None:
    """The README's example: ask's tiers for a 24 GiB GPU, on a PDF, at each width."""
    args = ["samples/paper.pdf", "--task", "ask", "--vram", "24"]
    rows = plan_json(args)
    assert [r["page"] for r in rows] == [1, 2] and all(r["fits"] for r in rows)
    for width in WIDTHS:
        check_plan_screen(on_screen(["plan", *args], width), rows, width)


def test_plan_wide_shows_every_column(long_named: Path) -> None:
    args = ["samples/chart.png", str(long_named)]
    rows = plan_json(args)
    screen = on_screen(["plan", *args, "--wide"], 80)
    # The header is one line (the terminal wrapped it: the screen joins it back).
    header = next((line for line in screen.lines if line.startswith("page")), "")
    assert re.split(r"\s{2,}", header.strip()) == PLAN_HEADERS
    assert hidden_columns(screen) == []
    on = page_rows(screen, {r["source"] for r in rows})
    for r in rows:
        words = on[(r["source"], r["page"])]
        (h, w), (ph, pw) = r["native_size"], r["padded_size"]
        assert f"{w}x{h}" in words and f"{pw}x{ph}" in words
        assert tier_grid_tokens(words) == (r["tier"], r["grid"], r["image_tokens"])


@pytest.mark.parametrize("width", (40, 80))
def test_tiers_fit_the_terminal(width: int) -> None:
    rows = [
        json.loads(line)
        for line in subprocess.run(
            [*IXCDOC, "tiers", "--aspect", "8.5:11", "--json"],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.splitlines()
    ]
    screen = on_screen(["tiers", "--aspect", "8.5:11"], width)
    assert all(len(line) <= width for line in screen.lines), screen.lines
    on = {line.split()[0]: line.split() for line in screen.lines if re.match(r"\s*HD\d+ ", line)}
    assert list(on) == [f"HD{r['tier']}" for r in rows]
    for r in rows:
        words = on[f"HD{r['tier']}"]
        assert words[1] == "{}x{}".format(*r["grid"]) and words[2] == str(r["image_tokens"])
