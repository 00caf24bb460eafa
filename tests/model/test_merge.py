"""ViT batch, 2x2 merge, separators and projector: parity with upstream and invariants."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.errors import ModelError
from ixcdoc.model import merge
from ixcdoc.model.weights import load_model
from ixcdoc.tiling import image_token_count

from .upstream import TINY_CKPT, case_id, encode_cases, tensor

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return load_model(TINY_CKPT)


@pytest.mark.parametrize("case", encode_cases(), ids=case_id)
def test_vit_input_matches_upstream(model, case) -> None:
    px = tensor(case["pixel"])
    vi = model.vit_input(px)
    assert list(vi.shape) == case["vit_input_shape"]
    torch.testing.assert_close(vi, tensor(case["vit_input"]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", encode_cases(), ids=case_id)
def test_pre_proj_and_embeds_match_upstream(model, case) -> None:
    px = tensor(case["pixel"])
    with torch.inference_mode():
        pre = model.vision_tokens(model.vit(model.vit_input(px)), px)
        emb = model.encode_image(px)
    assert pre.shape[0] == case["n_image_tokens"]
    torch.testing.assert_close(pre, tensor(case["pre_proj"]), rtol=0, atol=ATOL)
    torch.testing.assert_close(emb, tensor(case["embeds"]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", encode_cases(), ids=case_id)
def test_token_count_equals_tiling(model, case) -> None:
    rows, cols = case["grid_rows"], case["grid_cols"]
    with torch.inference_mode():
        n = model.encode_image(tensor(case["pixel"])).shape[0]
    assert n == image_token_count(rows, cols, tile=56, patch=14) == case["n_image_tokens"]


def test_real_size_token_counts() -> None:
    # doc §2.4 table at the real tile: the merge layout and tiling must agree on it
    feats = torch.zeros(1 + 5 * 11, 576, 2)
    merged = merge.merge_2x2(feats)
    out = merge.layout_tokens(merged, 5, 11, torch.zeros(1, 1, 8), torch.zeros(1, 1, 1, 8))
    assert out.shape[0] == image_token_count(5, 11) == 8137


def test_merge_channel_order_tl_tr_bl_br() -> None:
    g, c = 4, 1
    # feature value = 10 * row + col of the patch in a g x g grid
    grid = torch.tensor([[10.0 * r + q for q in range(g)] for r in range(g)])
    feats = grid.reshape(1, g * g, c)
    m = merge.merge_2x2(feats)  # [1, 2, 2, 4]
    assert m[0, 0, 0].tolist() == [0.0, 1.0, 10.0, 11.0]  # TL, TR, BL, BR
    assert m[0, 1, 0].tolist() == [20.0, 21.0, 30.0, 31.0]
    assert m[0, 0, 1].tolist() == [2.0, 3.0, 12.0, 13.0]


def test_separator_positions() -> None:
    rows, cols, m, c4 = 2, 3, 2, 4
    merged = torch.randn(1 + rows * cols, m, m, c4)
    glb = torch.full((1, 1, c4), 7.0)
    sub = torch.full((1, 1, 1, c4), -3.0)
    out = merge.layout_tokens(merged, rows, cols, glb, sub)
    assert out.shape[0] == image_token_count(rows, cols, tile=56, patch=14)
    is_sub = (out == -3.0).all(-1)
    is_glb = (out == 7.0).all(-1)
    n_glb_part = m * (m + 1)
    # global view: a newline (sub_GN) after each of its m rows
    assert is_sub[:n_glb_part].nonzero().squeeze(1).tolist() == [m, 2 * m + 1]
    # one glb_GN right after the global part, nowhere else
    assert is_glb.nonzero().squeeze(1).tolist() == [n_glb_part]
    # local grid: (rows*m) rows of (cols*m) tokens, each followed by sub_GN
    local = is_sub[n_glb_part + 1 :]
    width = cols * m + 1
    assert local.nonzero().squeeze(1).tolist() == [width * (i + 1) - 1 for i in range(rows * m)]
    # raster order: the second token row of the local grid starts with crop (0,0)'s row 1
    first_of_row1 = out[n_glb_part + 1 + width]
    torch.testing.assert_close(first_of_row1, merged[1, 1, 0])
    # and the token after crop (0,0)'s row 0 is crop (0,1)'s row 0
    torch.testing.assert_close(out[n_glb_part + 1 + m], merged[2, 0, 0])


def test_crops_are_row_major_and_global_view_first() -> None:
    tile = 4
    px = torch.arange(2 * 3, dtype=torch.float32).reshape(1, 1, 2, 3)
    px = px.repeat_interleave(tile, 2).repeat_interleave(tile, 3).expand(1, 3, 8, 12).clone()
    batch = merge.vit_batch(px, tile)
    assert batch.shape == (7, 3, tile, tile)
    assert [batch[i, 0, 0, 0].item() for i in range(1, 7)] == [0, 1, 2, 3, 4, 5]
    ref = torch.nn.functional.interpolate(px, size=(tile, tile), mode="bicubic")
    torch.testing.assert_close(batch[0:1], ref)


def test_global_view_computed_in_fp32() -> None:
    px = torch.randn(1, 3, 112, 56)
    ref = merge.global_view(px, 56)
    bf = merge.global_view(px.bfloat16(), 56)
    assert bf.dtype == torch.bfloat16
    ref_from_bf = torch.nn.functional.interpolate(
        px.bfloat16().float(), size=(56, 56), mode="bicubic", align_corners=False
    ).bfloat16()
    torch.testing.assert_close(bf, ref_from_bf, rtol=0, atol=0)
    assert ref.shape == (1, 3, 56, 56)


def test_count_mismatch_names_both_counts() -> None:
    with pytest.raises(ModelError, match=r"emitted 12 .* gives 13"):
        merge.check_token_count(12, 1, 1, 56, 14)


def test_bad_hd_tensor_is_an_error() -> None:
    with pytest.raises(ModelError, match="not a multiple"):
        merge.vit_batch(torch.zeros(1, 3, 57, 56), 56)
