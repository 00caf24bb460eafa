"""``ixcdoc plan`` and ``ixcdoc tiers``: the dry run, no model, JSON lines when piped.

Expected grids and token counts come from the independent geometry in tests/cli/helpers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ixcdoc.errors import EXIT_PARTIAL
from tests.cli.helpers import (
    Invoke,
    corrupt_pdf,
    encrypted_pdf,
    expected_grid,
    expected_tokens,
    subprocess_env,
    text_pdf,
    text_png,
)

ROOT = Path(__file__).resolve().parents[2]

EXTRACT_FLOOR = 16  # extract's lowest tier (docs: the task presets' floor and ceiling)


def json_lines(stdout: str) -> list[dict]:
    assert stdout.endswith("\n")
    return [json.loads(line) for line in stdout.splitlines()]


def tall_png(tmp_path: Path) -> Path:
    """A 300 x 900 (width x height) PNG: native size [900, 300]."""
    path = tmp_path / "tall.png"
    Image.new("RGB", (300, 900), (200, 30, 30)).save(path)
    return path


def test_plan_of_a_known_image(tmp_path: Path, invoke: Invoke) -> None:
    png = tall_png(tmp_path)
    res = invoke(["plan", png])
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    (row,) = json_lines(res.stdout)
    # 900 px fit in 3 crops of 336 px (HD3), below extract's floor: the floor is used.
    rows, cols = expected_grid(900, 300, EXTRACT_FLOOR)
    assert (rows, cols) == (6, 2)  # the helper's own sanity: scale 6 along the long side
    assert row["source"] == str(png)
    assert (row["page"], row["page_count"]) == (1, 1)
    assert row["native_size"] == [900, 300]
    assert row["render_dpi"] is None  # an image is not rendered
    assert row["task"] == "extract"
    assert row["tier"] == EXTRACT_FLOOR
    assert "floor" in row["tier_reason"]
    assert row["grid"] == [rows, cols]
    assert row["padded_size"] == [rows * 336, cols * 336]
    assert row["image_tokens"] == 144 * (rows * cols + 1) + 12 * (rows + 1) + 1 == 1957
    assert row["fits"] is None and row["gpu"] is None  # no GPU here, none assumed
    assert row["vram_gib"]["4bit"] < row["vram_gib"]["bf16"]


def test_plan_forced_tier_and_assumed_vram(tmp_path: Path, invoke: Invoke) -> None:
    png = tall_png(tmp_path)
    res = invoke(["plan", png, "--hd", "25", "--vram", "8", "--json"])
    assert res.exit_code == 0, res.stderr
    (row,) = json_lines(res.stdout)
    rows, cols = expected_grid(900, 300, 25)
    assert row["tier"] == 25
    assert row["tier_reason"] == "forced by --hd"
    assert row["grid"] == [rows, cols] == [8, 3]
    assert row["image_tokens"] == expected_tokens(rows, cols)
    assert row["fits"]["bf16"] is False  # 7B weights alone are ~15 GiB in bf16
    assert row["gpu"] is not None and "8" in row["gpu"]

    roomy = json_lines(invoke(["plan", png, "--hd", "25", "--vram", "80"]).stdout)[0]
    assert roomy["fits"] == {"bf16": True, "4bit": True}
    assert roomy["vram_gib"] == row["vram_gib"]  # the estimate does not depend on the GPU


def test_plan_task_ceiling_downscales(tmp_path: Path, invoke: Invoke) -> None:
    """A huge page: extract stops at its ceiling, ask at a lower one."""
    big = tmp_path / "big.png"
    Image.new("L", (4000, 4000), 128).save(big)
    ext = json_lines(invoke(["plan", big]).stdout)[0]
    ask = json_lines(invoke(["plan", big, "--task", "ask"]).stdout)[0]
    assert ask["tier"] < ext["tier"]
    for row in (ext, ask):
        rows, cols = expected_grid(4000, 4000, row["tier"])
        assert row["grid"] == [rows, cols]
        assert row["image_tokens"] == expected_tokens(rows, cols)
        assert "ceiling" in row["tier_reason"]


def test_plan_goes_on_past_encrypted_and_corrupt_files(tmp_path: Path, invoke: Invoke) -> None:
    png = tall_png(tmp_path)
    locked = encrypted_pdf(tmp_path / "locked.pdf")
    broken = corrupt_pdf(tmp_path / "broken.pdf")
    two = text_pdf(tmp_path / "two.pdf", ["first page", "second page"])
    res = invoke(["plan", png, locked, broken, two])
    assert res.exit_code == EXIT_PARTIAL
    rows = json_lines(res.stdout)
    good = [r for r in rows if r.get("status") != "error"]
    bad = [r for r in rows if r.get("status") == "error"]
    assert [(r["source"], r["page"]) for r in good] == [(str(png), 1), (str(two), 1), (str(two), 2)]
    for r in good:
        assert r["page_count"] == (1 if r["source"] == str(png) else 2)
        assert r["render_dpi"] is None or r["render_dpi"] > 0
        h, w = r["native_size"]
        assert r["grid"] == list(expected_grid(h, w, r["tier"]))
    codes = {r["source"]: r["error"]["code"] for r in bad}
    assert codes == {str(locked): "password_required", str(broken): "corrupt"}
    # One red line per bad file on stderr, naming it.
    lines = res.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("error: ") for line in lines)
    assert str(locked) in lines[0] and str(broken) in lines[1]

    # The right password opens the locked file: every page plans and the run exits 0.
    ok = invoke(["plan", locked, "--password", "open"])
    assert ok.exit_code == 0, ok.stderr
    assert [r["page"] for r in json_lines(ok.stdout)] == [1]


def test_plan_pages_selects_and_out_of_range_fails(tmp_path: Path, invoke: Invoke) -> None:
    pdf = text_pdf(tmp_path / "three.pdf", ["one", "two", "three"])
    res = invoke(["plan", pdf, "--pages", "1,3"])
    assert res.exit_code == 0
    assert [r["page"] for r in json_lines(res.stdout)] == [1, 3]
    res = invoke(["plan", pdf, "--pages", "5"])
    assert res.exit_code == EXIT_PARTIAL
    (row,) = json_lines(res.stdout)
    assert row["error"]["code"] == "page_out_of_range"


def test_plan_reads_stdin(tmp_path: Path, invoke: Invoke) -> None:
    png = tall_png(tmp_path)
    res = invoke(["plan", "-"], input=png.read_bytes())
    assert res.exit_code == 0, res.stderr
    (row,) = json_lines(res.stdout)
    assert row["source"] == "-"
    assert row["native_size"] == [900, 300]


def test_tiers_json_rows(invoke: Invoke) -> None:
    res = invoke(["tiers", "--json"])
    assert res.exit_code == 0
    rows = json_lines(res.stdout)
    assert [r["tier"] for r in rows] == [1, 4, 9, 16, 25, 36, 45, 55, 65]
    for r in rows:
        rows_, cols = expected_grid(1000, 1000, r["tier"])  # a square page
        assert r["grid"] == [rows_, cols]
        assert r["padded_size"] == [rows_ * 336, cols * 336]
        assert r["image_tokens"] == expected_tokens(rows_, cols)
        assert r["fits"] is None
    bf16 = [r["vram_gib"]["bf16"] for r in rows]
    assert bf16 == sorted(bf16)  # more crops never need less memory


def test_tiers_aspect_and_vram(invoke: Invoke) -> None:
    res = invoke(["tiers", "--aspect", "16:9", "--vram", "24"])
    assert res.exit_code == 0
    rows = json_lines(res.stdout)
    for r in rows:
        assert r["grid"] == list(expected_grid(900, 1600, r["tier"]))
        assert set(r["fits"]) == {"bf16", "4bit"}
    # 24 GiB: 4-bit fits wherever bf16 does, and at HD1 at least 4-bit fits.
    assert all(r["fits"]["4bit"] for r in rows if r["fits"]["bf16"])
    assert rows[0]["fits"]["4bit"] is True


def test_plan_table_for_a_terminal(tmp_path: Path, invoke: Invoke) -> None:
    """On a terminal, plan prints a table; its cells come from the same rows as --json.
    (tests/cli/test_cli_plan_terminal.py runs it in a real terminal at several widths.)"""
    import re

    from rich.console import Console

    from ixcdoc.cli.plan import print_plan

    png = tall_png(tmp_path)
    (row,) = json_lines(invoke(["plan", png, "--vram", "8"]).stdout)
    console = Console(width=320, record=True, color_system=None)
    print_plan([row], task="extract", wide=True, out=console)
    lines = console.export_text().splitlines()
    assert lines[2] == str(png)  # the document's name above its pages
    cells = re.split(r"\s{2,}", lines[3].strip())
    assert cells[:5] == ["1/1", "300x900", "-", f"HD{row['tier']}", "{}x{}".format(*row["grid"])]
    rows, cols = row["grid"]
    assert cells[5:7] == [f"{cols * 336}x{rows * 336}", str(row["image_tokens"])]  # padded WxH
    fits = ", ".join(q for q in ("bf16", "4bit") if row["fits"][q]) or "none"
    assert cells[9:] == [fits, "{bf16}/{4bit}".format(**row["batch_auto"]), row["tier_reason"]]


def test_a_forced_tier_past_the_context_is_lowered_with_the_reason(
    tmp_path: Path, invoke: Invoke
) -> None:
    """--hd 200 on a square page: 200 crops would be ~29k image tokens, over 16384 positions."""
    img = tmp_path / "square.png"
    Image.new("RGB", (1000, 1000), "white").save(img)
    res = invoke(["plan", str(img), "--hd", "200", "--max-new-tokens", "512", "--json"])
    assert res.exit_code == 0, res.stderr
    row = json.loads(res.stdout)
    rows, cols = row["grid"]
    tokens = expected_tokens(rows, cols)
    assert row["image_tokens"] == tokens
    assert tokens + 400 + 512 <= 16384  # image + prompt budget + answer fit the positions
    assert "exceeds the model's 16384 positions" in row["tier_reason"]
    # The tier just above the one chosen would not have fit (the largest that fits was kept).
    nr, nc = expected_grid(1000, 1000, row["tier"] + 1)
    bigger = row["tier"] + 1
    while (nr, nc) == (rows, cols):  # tiers that add no crop change nothing: look further
        bigger += 1
        nr, nc = expected_grid(1000, 1000, bigger)
    assert expected_tokens(nr, nc) + 400 + 512 > 16384


def test_hd_above_the_cap_is_a_usage_error(tmp_path: Path, invoke: Invoke) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (100, 100), "white").save(img)
    res = invoke(["plan", str(img), "--hd", "4200"])
    assert res.exit_code == 2
    assert "--hd 4200 is too large" in res.stderr


def test_tiers_show_the_batch_size_auto_would_pick(invoke: Invoke) -> None:
    """More crops per page, fewer pages at once; 4-bit weights leave room for more; none
    without a GPU to plan for."""
    rows = [
        json.loads(x) for x in invoke(["tiers", "--vram", "80", "--json"]).stdout.split("\n") if x
    ]
    sizes = [r["batch_auto"]["bf16"] for r in rows if r["tier"] in (9, 16, 25, 55)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4 and sizes[-1] >= 1
    assert all(r["batch_auto"]["4bit"] >= r["batch_auto"]["bf16"] for r in rows)
    small = [
        json.loads(x) for x in invoke(["tiers", "--vram", "18", "--json"]).stdout.split("\n") if x
    ]
    assert [r["batch_auto"]["bf16"] for r in small if r["tier"] == 65] == [0]  # does not fit
    plain = invoke(["tiers", "--json"]).stdout.split("\n")[0]
    if json.loads(plain)["fits"] is None:  # no GPU here: nothing to size
        assert json.loads(plain)["batch_auto"] is None


def test_a_closed_output_pipe_ends_quietly(tmp_path: Path) -> None:
    pages = [text_png(tmp_path / f"p{i:03d}.png", f"page {i}") for i in range(400)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ixcdoc.cli", "plan", "--json", *map(str, pages)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, like `| head -1`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141), err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
