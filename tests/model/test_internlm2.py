"""InternLM2 decoder: packed wqkv, GQA attention, RoPE, KV cache and causality."""

from __future__ import annotations

import math

import pytest
import torch

from ixcdoc.config import ModelConfig
from ixcdoc.model.internlm2 import InternLM2ForCausalLM, RMSNorm
from ixcdoc.model.weights import attention_backend

CFG = ModelConfig(
    vocab_size=50,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    wqkv_lora_rank=2,
    lora_rank=4,
    rope_theta=10_000.0,
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def lm() -> InternLM2ForCausalLM:
    torch.manual_seed(0)
    m = InternLM2ForCausalLM(CFG)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return m.eval()


def _inputs(seed: int, s: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, s, CFG.hidden_size, generator=g)
    mask = torch.zeros(1, s, dtype=torch.bool)
    mask[0, 2:6] = True  # an "image" span
    return x, mask


def _eager_attention_reference(attn, x: torch.Tensor, theta: float) -> torch.Tensor:
    """Attention written out per head, eager softmax in fp32, repeat_kv by i // g."""
    s, d = x.shape[1], CFG.head_dim
    n_h, n_kv = CFG.num_attention_heads, CFG.num_key_value_heads
    g = n_h // n_kv
    qkv = (x[0] @ attn.wqkv.weight.T).reshape(s, n_kv, g + 2, d)
    pos = torch.arange(s, dtype=torch.float64)
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None] * inv[None]
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()

    def rope(t):  # rotate_half, halves (not interleaved)
        a, b = t[:, : d // 2], t[:, d // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    outs = []
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for h in range(n_h):
        grp, j = divmod(h, g)
        q, k, v = rope(qkv[:, grp, j]), rope(qkv[:, grp, g]), qkv[:, grp, g + 1]
        scores = (q @ k.T) / math.sqrt(d)
        scores = scores.masked_fill(~causal, float("-inf")).float().softmax(-1)
        outs.append(scores @ v)
    return torch.cat(outs, dim=-1) @ attn.wo.weight.T


def test_attention_matches_eager_reference(lm) -> None:
    attn = lm.model.layers[0].attention
    x = torch.randn(1, 9, CFG.hidden_size)
    pos = torch.arange(9)
    from ixcdoc.model.internlm2 import rope_cos_sin

    cos, sin = rope_cos_sin(pos, CFG.head_dim, CFG.rope_theta, x.dtype)
    with torch.inference_mode():
        ours = attn(x, cos, sin, pos, None, None)
    ref = _eager_attention_reference(attn, x, CFG.rope_theta)
    torch.testing.assert_close(ours[0], ref, rtol=1e-4, atol=1e-5)


def test_rmsnorm_fp32_variance() -> None:
    norm = RMSNorm(8, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = torch.randn(3, 8).bfloat16()
    xf = x.float()
    ref = norm.weight * (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    torch.testing.assert_close(norm(x), ref)


def test_cached_decode_equals_full_forward(lm) -> None:
    x, mask = _inputs(1, s=12)
    with torch.inference_mode():
        full = lm(x, mask)  # [1, 12, V], no cache
        lm.setup_caches(1, 64)
        try:
            pre = lm(x[:, :5], mask[:, :5])  # fresh prefill
            steps = [pre]
            for p in range(5, 12):
                steps.append(lm(x[:, p : p + 1], mask[:, p : p + 1], torch.tensor([p])))
            cached = torch.cat(steps, dim=1)
            # a multi-token chunk through the cache (mask path) as well
            chunk = lm(x[:, 8:12], mask[:, 8:12], torch.arange(8, 12))
        finally:
            lm.reset_caches()
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk, full[:, 8:12], rtol=1e-5, atol=1e-5)


def test_decode_step_shapes_are_static(lm) -> None:
    x, mask = _inputs(2, s=6)
    with torch.inference_mode():
        lm.setup_caches(1, 32)
        try:
            lm(x, mask)
            cache = lm.model.layers[0].attention.kv_cache
            shape = tuple(cache.k.shape)
            ptr = cache.k.data_ptr()
            for p in range(6, 10):
                out = lm(torch.randn(1, 1, CFG.hidden_size), None, torch.tensor([p]))
                assert out.shape == (1, 1, CFG.vocab_size)
                assert tuple(cache.k.shape) == shape == (1, 2, 32, CFG.head_dim)
                assert cache.k.data_ptr() == ptr  # written in place, never reallocated
        finally:
            lm.reset_caches()


def test_causality_future_tokens_do_not_change_past(lm) -> None:
    x, mask = _inputs(3, s=10)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 3, CFG.hidden_size)
    mask2 = mask.clone()
    mask2[0, 8] = True  # even a different im_mask in the future must not matter
    with torch.inference_mode():
        a, b = lm(x, mask), lm(y, mask2)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3


def test_im_mask_changes_only_masked_and_later_positions(lm) -> None:
    x, mask = _inputs(4, s=10)
    with torch.inference_mode():
        with_lora = lm(x, mask)  # image span 2..5
        without = lm(x, None)
    torch.testing.assert_close(with_lora[:, :2], without[:, :2], rtol=0, atol=1e-6)
    assert (with_lora[:, 2:] - without[:, 2:]).abs().max() > 1e-3


def test_last_only_matches_full(lm) -> None:
    x, mask = _inputs(5, s=7)
    with torch.inference_mode():
        torch.testing.assert_close(lm(x, mask, last_only=True), lm(x, mask)[:, -1:])


def test_input_pos_without_cache_is_an_error(lm) -> None:
    with pytest.raises(RuntimeError, match="setup_caches"):
        lm(torch.randn(1, 1, CFG.hidden_size), None, torch.tensor([3]))


def test_meta_construction_allocates_nothing() -> None:
    with torch.device("meta"):
        m = InternLM2ForCausalLM(CFG)
    assert all(p.is_meta for p in m.parameters())


@pytest.mark.gpu
def test_bf16_cuda_backends_agree_and_cache_matches(lm) -> None:
    m = InternLM2ForCausalLM(CFG).to("cuda", torch.bfloat16)
    m.load_state_dict({k: v.to("cuda", torch.bfloat16) for k, v in lm.state_dict().items()})
    x, mask = _inputs(6, s=40)
    x, mask = x.to("cuda", torch.bfloat16), mask.cuda()
    m.set_attention_backend(attention_backend(torch.device("cuda"), torch.bfloat16))
    with torch.inference_mode():
        auto = m(x, mask)  # flash-attn 2 when importable, else SDPA
        m.set_attention_backend("sdpa")
        sdpa = m(x, mask)
        m.setup_caches(1, 64)
        m(x[:, :30], mask[:, :30])
        steps = [m(x[:, p : p + 1], None, torch.tensor([p], device="cuda")) for p in range(30, 40)]
    torch.testing.assert_close(auto, sdpa, rtol=0, atol=5e-2)
    torch.testing.assert_close(torch.cat(steps, 1), sdpa[:, 30:], rtol=0, atol=5e-2)


def test_the_attention_batch_places_rows_and_picks_the_masked_kernel(lm, monkeypatch) -> None:
    """Two prompts in cache rows 1 and 2 (``row``), then one decode step with per-row positions
    over rows 0..2: the baddbmm kernel (``bmm=True``, the caller's pick) and SDPA give the same
    logits, and each row equals that prompt decoded alone at cache row 0."""
    from ixcdoc.model.internlm2 import AttentionBatch

    x0, m0 = _inputs(3, s=7)
    x1, m1 = _inputs(4, s=11)
    nxt = torch.randn(3, 1, CFG.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        alone = []
        for r, (x, m) in enumerate(((x0, m0), (x1, m1)), start=1):
            lm.reset_caches()
            lm.setup_caches(1, 32)
            lm(x, m)
            pos = torch.tensor([x.shape[1]])
            alone.append(lm(nxt[r : r + 1], None, pos)[0, -1])
        lm.reset_caches()
        lm.setup_caches(3, 32)
        lm(x0, m0, batch=AttentionBatch(row=1))
        lm(x1, m1, batch=AttentionBatch(row=2))
        pos = torch.tensor([[0], [7], [11]])  # row 0: a dummy row at position 0
        calls: list[int] = []
        real = torch.baddbmm
        monkeypatch.setattr(torch, "baddbmm", lambda *a, **k: calls.append(1) or real(*a, **k))
        sdpa = lm(nxt, None, pos, batch=AttentionBatch(span=16))[:, -1]
        assert calls == []
        bmm = lm(nxt, None, pos, batch=AttentionBatch(span=16, bmm=True))[:, -1]
        assert len(calls) == CFG.num_hidden_layers
    lm.reset_caches()
    torch.testing.assert_close(bmm, sdpa, rtol=0, atol=1e-5)
    torch.testing.assert_close(sdpa[1:], torch.stack(alone), rtol=0, atol=1e-5)


def test_the_loader_picks_the_prefill_kernel_not_the_decoder(lm) -> None:
    from ixcdoc.model.weights import attention_backend

    assert attention_backend(torch.device("cpu"), torch.bfloat16) == "sdpa"
    assert attention_backend(torch.device("cuda"), torch.float32) == "sdpa"
    assert lm.model.layers[0].attention.backend == "sdpa"  # a bare model: SDPA
    with pytest.raises(ValueError, match="unknown"):
        lm.set_attention_backend("auto")
