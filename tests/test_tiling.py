"""HD tier geometry and token counts against independent computations and upstream outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ixcdoc.errors import UsageError
from ixcdoc.tiling import (
    hd_geometry,
    image_token_count,
    merged_side,
    min_tier_for_native,
)
from tests.conftest import UPSTREAM


def upstream_geometry(w: int, h: int, hd: int, tile: int) -> tuple[int, int]:
    """Independent transcription of upstream HD_transform + padding_336: output (W, H)."""
    trans = False
    if w < h:
        w, h, trans = h, w, True
    ratio = w / h
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd:
        scale += 1
    scale -= 1
    new_w = int(scale * tile)
    new_h = max(1, int(new_w / ratio))
    tar = int(np.ceil(new_h / tile) * tile)
    out_w, out_h = new_w, tar
    return (out_h, out_w) if trans else (out_w, out_h)


def count_tokens_by_layout(rows: int, cols: int, g: int) -> int:
    """Count the spliced image sequence by building it token by token."""
    seq: list[str] = []
    for _ in range(g):  # global view: g rows of g tokens, each row ends in a newline
        seq += ["g"] * g + ["sub_GN"]
    seq.append("glb_GN")
    for _ in range(rows):
        for _ in range(g):  # one token row across all crops of this crop row
            seq += ["l"] * (g * cols) + ["sub_GN"]
    return len(seq)


SIZES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (30, 40),
    (40, 30),
    (336, 336),
    (337, 336),
    (900, 300),
    (300, 900),
    (1650, 1275),
    (1275, 1650),
    (3508, 2480),
    (1600, 3840),
    (50, 10000),
    (10000, 50),
    (7, 9999),
]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("tile", [336, 56])
def test_geometry_matches_upstream_transcription_for_every_tier(h: int, w: int, tile: int) -> None:
    for hd in range(1, 66):
        g = hd_geometry(h, w, hd, tile)
        assert (g.padded_w, g.padded_h) == upstream_geometry(w, h, hd, tile), (h, w, hd)
        assert g.padded_h % tile == 0 and g.padded_w % tile == 0
        assert 1 <= g.rows * g.cols <= hd
        # The scale is the largest that fits: one more would exceed the budget.
        lw, lh = max(h, w), min(h, w)
        assert (g.scale + 1) * math.ceil((g.scale + 1) / (lw / lh)) > hd


@pytest.mark.parametrize("h,w", SIZES)
def test_portrait_is_the_transpose_of_landscape(h: int, w: int) -> None:
    for hd in (1, 9, 16, 25, 55, 65):
        a, b = hd_geometry(h, w, hd), hd_geometry(w, h, hd)
        assert (a.padded_h, a.padded_w) == (b.padded_w, b.padded_h)
        assert (a.rows, a.cols) == (b.cols, b.rows)
        assert (a.pad_top, a.pad_bottom, a.pad_left, a.pad_right) == (
            b.pad_left,
            b.pad_right,
            b.pad_top,
            b.pad_bottom,
        )


def test_padding_is_centred_and_white_only_on_the_short_side() -> None:
    g = hd_geometry(900, 300, 9)  # portrait: padding goes left and right
    assert g.pad_top == g.pad_bottom == 0
    assert g.pad_left + g.pad_right == g.padded_w - g.resized_w
    assert g.pad_right - g.pad_left in (0, 1)


@pytest.mark.parametrize("rows", range(1, 12))
@pytest.mark.parametrize("cols", range(1, 12))
def test_token_count_equals_layout_count(rows: int, cols: int) -> None:
    assert image_token_count(rows, cols) == count_tokens_by_layout(rows, cols, 12)
    assert image_token_count(rows, cols, tile=56) == count_tokens_by_layout(rows, cols, 2)


def test_token_count_documented_values() -> None:
    # The 336-px formula from the paper's code: 144 (hw + 1) + 12 (h + 1) + 1.
    for rows, cols, n in [(3, 3, 1489), (4, 4, 2509), (5, 5, 3817), (7, 7, 7297), (5, 11, 8137)]:
        assert image_token_count(rows, cols) == n
        assert n == 144 * (rows * cols + 1) + 12 * (rows + 1) + 1
    assert hd_geometry(1600, 3840, 55).image_tokens() == 8137


def test_upstream_preprocess_fixtures_geometry() -> None:
    for f in sorted((UPSTREAM / "preprocess").glob("*.json")):
        d = json.loads(f.read_text())
        w, h = d["input_size"]
        g = hd_geometry(h, w, d["hd_num"])
        assert [g.padded_w, g.padded_h] == d["output_size"], f.name
        assert (g.rows, g.cols) == (d["grid_rows"], d["grid_cols"]), f.name
        assert g.image_tokens() == d["image_tokens_real"], f.name


def test_bad_tiers_and_sizes_are_usage_errors() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UsageError):
            hd_geometry(10, 10, bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        hd_geometry(0, 10, 9)
    with pytest.raises(UsageError):
        merged_side(tile=50, patch=14)


@pytest.mark.parametrize("h,w", [*SIZES, (2200, 1700), (1584, 1224), (4000, 3000)])
def test_min_tier_for_native_is_minimal_and_does_not_downscale(h: int, w: int) -> None:
    hd = min_tier_for_native(h, w)
    assert not hd_geometry(h, w, hd).downscaled
    if hd > 1:
        assert hd_geometry(h, w, hd - 1).downscaled
    tiny = min_tier_for_native(h, w, 56)
    assert not hd_geometry(h, w, tiny, 56).downscaled
