"""Preprocessing: pixel-exact HD_transform, normalization and the global view."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ixcdoc.model.merge import global_view
from ixcdoc.preprocess import CLIP_MEAN, CLIP_STD, hd_transform, to_pixels
from tests.conftest import UPSTREAM

CASES = sorted((UPSTREAM / "preprocess").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_hd_transform_is_pixel_exact_with_upstream(case) -> None:
    d = json.loads(case.read_text())
    img = Image.open(UPSTREAM / d["image"]).convert("RGB")
    out = hd_transform(img, d["hd_num"])
    assert list(out.size) == d["output_size"]
    digest = hashlib.sha256(np.asarray(out, dtype=np.uint8).tobytes()).hexdigest()
    assert digest == d["rgb_sha256"]


def test_tiny_tile_hd_images_match_upstream() -> None:
    manifest = json.loads((UPSTREAM / "tiny" / "manifest.json").read_text())
    for e in manifest["encode"]:
        img = Image.open(UPSTREAM / e["image"]).convert("RGB")
        out = np.asarray(hd_transform(img, e["hd_num"], tile=56))
        ref = np.asarray(Image.open(UPSTREAM / e["hd_image_png"]).convert("RGB"))
        assert out.shape == ref.shape and np.array_equal(out, ref), e["hd_image_png"]
        pix = to_pixels(img, e["hd_num"], tile=56)
        ref_pix = torch.load(UPSTREAM / e["pixel"], weights_only=True)
        assert pix.shape == ref_pix.shape
        assert torch.allclose(pix, ref_pix, atol=1e-5, rtol=0)


def test_to_pixels_equals_independent_normalization() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    pix = to_pixels(img, 4, tile=56)
    hd = np.asarray(hd_transform(img, 4, tile=56)).astype(np.float64) / 255.0
    expect = (hd - np.array(CLIP_MEAN)) / np.array(CLIP_STD)  # [H, W, 3]
    assert pix.shape == (1, 3, hd.shape[0], hd.shape[1])
    got = pix[0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - expect).max() < 1e-5


def test_white_padding_normalizes_to_the_white_value() -> None:
    img = Image.new("RGB", (300, 40), (0, 0, 0))  # wide strip: padded top and bottom
    pix = to_pixels(img, 1, tile=56)
    white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pix[0, :, 0, 0], white, atol=1e-6)
    assert torch.allclose(pix[0, :, -1, -1], white, atol=1e-6)


def test_global_view_and_normalized_strip_match_upstream() -> None:
    img = Image.open(UPSTREAM / "images" / "tiny_40x30.png").convert("RGB")
    pix = to_pixels(img, 9)
    strip = torch.load(
        UPSTREAM / "preprocess" / "tiny_40x30_hd9_normalized_rows0-111_cols0-335.pt",
        weights_only=True,
    )
    assert torch.allclose(pix[0, :, :112, :336], strip.reshape(3, 112, 336), atol=1e-5)
    ref = torch.load(UPSTREAM / "preprocess" / "tiny_40x30_hd9_global_view.pt", weights_only=True)
    got = global_view(pix, 336)
    assert got.shape == (1, 3, 336, 336)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_global_view_keeps_dtype_and_computes_in_float32() -> None:
    pix = torch.randn(1, 3, 112, 56)
    out = global_view(pix.to(torch.bfloat16), tile=56)
    assert out.dtype == torch.bfloat16
    ref = global_view(pix.to(torch.bfloat16).float(), tile=56)
    assert torch.equal(out, ref.to(torch.bfloat16))


def test_hd_image_made_ahead_equals_a_fresh_transform_at_any_tier() -> None:
    from ixcdoc.preprocess import hd_image

    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, size=(90, 60, 3), dtype=np.uint8), "RGB")
    ahead = hd_image(img, 9, tile=56)
    assert ahead.size == img.size
    assert np.array_equal(np.asarray(ahead.at(9, 56)), np.asarray(hd_transform(img, 9, tile=56)))
    lower = ahead.at(4, 56)  # an OOM retry at a lower tier starts from the native page
    assert np.array_equal(np.asarray(lower), np.asarray(hd_transform(img, 4, tile=56)))
