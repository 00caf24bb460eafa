"""The many-sequence memory model: each term recomputed from first principles."""

from __future__ import annotations

import pytest

from ixcdoc.config import ModelConfig
from ixcdoc.vram import (
    CUDA_OVERHEAD,
    GiB,
    auto_batch_size,
    estimate_batch_vram,
    estimate_vram,
    weight_bytes,
)

CFG = ModelConfig()  # the official 7B
HD25_TOKENS, HD25_CROPS = 3817, 25


def test_kv_term_counts_every_row_and_every_reserved_position() -> None:
    est = estimate_batch_vram(CFG, 16, HD25_TOKENS, HD25_CROPS, quant="bf16", max_new_tokens=512)
    # 32 layers x K,V x 8 KV heads x 128 dims x 2 bytes = 128 KiB per position;
    # a slot holds 3817 image + 400 text + 512 new = 4729 positions, rounded up to 4864.
    assert est.kv_cache == 16 * 4864 * 32 * 2 * 8 * 128 * 2
    beams = estimate_batch_vram(
        CFG, 16, HD25_TOKENS, HD25_CROPS, quant="bf16", max_new_tokens=512, beams=3
    )
    assert beams.kv_cache == 3 * est.kv_cache  # each beam owns its rows


def test_other_terms() -> None:
    est = estimate_batch_vram(CFG, 8, HD25_TOKENS, HD25_CROPS, quant="4bit", max_new_tokens=512)
    assert est.weights == weight_bytes(CFG, "4bit")
    # one packed prefill holds up to a slot's 4864 positions of prompts: the MLP's three
    # [tokens, 14336] buffers, 8 [tokens, 4096] buffers, the PLoRA branch (rank 256, two
    # buffers) and one fp32 logits row, all bf16
    assert est.prefill == 4864 * (3 * 14336 + 8 * 4096 + 2 * 256) * 2 + 92544 * 4
    single = estimate_vram(CFG, HD25_TOKENS, HD25_CROPS, quant="4bit")
    assert est.prefill > single.activations  # a pack may be longer than one page's prompt
    assert est.overhead == CUDA_OVERHEAD
    assert est.decode == 8 * 92544 * 4 * 2  # fp32 logits [rows, vocab] and one copy
    # vision: 56 tiles (one HD55 page) x 577 tokens x (MLP 4096 + 4 x 1024) x 2 bytes,
    # plus the merged (4096) and projected (4096) image features
    assert est.vision == 56 * 577 * (4096 + 4096) * 2 + 3817 * (4096 + 4096) * 2
    assert est.total == sum(
        (est.weights, est.kv_cache, est.prefill, est.vision, est.decode, est.overhead)
    )


def test_auto_batch_size_is_the_largest_that_fits() -> None:
    args = (HD25_TOKENS, HD25_CROPS, 512, "bf16")
    for free_gib in (24, 40, 80, 141):
        free = free_gib * GiB
        n = auto_batch_size(CFG, free, *args)
        assert n >= 1
        fits = estimate_batch_vram(CFG, n, HD25_TOKENS, HD25_CROPS, quant="bf16").total
        over = estimate_batch_vram(CFG, n + 1, HD25_TOKENS, HD25_CROPS, quant="bf16").total
        assert fits <= free < over
    assert auto_batch_size(CFG, 16 * GiB, *args) == 0  # bf16 weights alone are 17.2 GB
    four = auto_batch_size(CFG, 24 * GiB, HD25_TOKENS, HD25_CROPS, 512, "4bit")
    assert four > auto_batch_size(CFG, 24 * GiB, *args)
    assert auto_batch_size(CFG, 80 * GiB, *args, beams=3) < auto_batch_size(CFG, 80 * GiB, *args)


@pytest.mark.parametrize("batch", [1, 64])
def test_batch_of_one_is_close_to_the_single_page_estimate(batch) -> None:
    one = estimate_vram(CFG, HD25_TOKENS, HD25_CROPS, quant="bf16", max_new_tokens=512)
    b = estimate_batch_vram(CFG, batch, HD25_TOKENS, HD25_CROPS, quant="bf16", max_new_tokens=512)
    # the slot rounds its positions up to 256 and the vision batch may hold 56 tiles
    assert b.total >= one.total if batch == 1 else b.total > 10 * one.kv_cache


@pytest.mark.parametrize("beams", [1, 3])
def test_kv_term_is_what_the_engine_allocates(monkeypatch, beams) -> None:
    """The estimate's KV bytes for a batch equal the cache tensors ``chat_batch`` allocates for
    it, beams included (a tiny checkpoint on the CPU in float32: twice the estimate's bf16)."""
    import torch

    from ixcdoc.engine import ChatRequest
    from ixcdoc.engine.runner import ModelRunner
    from ixcdoc.runtime import load
    from tests.model.upstream import TINY_CKPT

    from .conftest import page

    dm = load(TINY_CKPT, device="cpu")
    allocated: list[int] = []
    dtypes: set[torch.dtype] = set()
    real_init = ModelRunner.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        allocated.append(sum(k.nbytes + v.nbytes for k, v in self._caches()))
        dtypes.update(k.dtype for k, _ in self._caches())

    monkeypatch.setattr(ModelRunner, "__init__", spy)
    req = ChatRequest([page(300, 200, seed=1)], "Transcribe.", hd=4, max_new_tokens=300)
    req.num_beams = beams
    [ans, _] = dm.chat_batch([req, req], max_batch=2 * beams)
    assert dtypes == {torch.float32}
    est = estimate_batch_vram(
        dm.config,
        2,
        ans.n_image_tokens,
        sum(r * c for r, c in ans.grids),
        quant="bf16",
        max_new_tokens=300,
        beams=beams,
        text_tokens=ans.prompt_tokens - ans.n_image_tokens,
    )
    assert allocated == [est.kv_cache * 4 // 2]  # float32 here, bf16 in the estimate
