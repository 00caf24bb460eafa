"""4-bit (bitsandbytes NF4) for decoder base weights: load, forward and generate on CPU.

Tolerance vs float32, found on this tiny random checkpoint: NF4 with 64-wide blocks has a
relative weight error of ~0.09 (RMS), and the two-layer random model passes it through with
little averaging, so per-position logits differ by ~25% relative on average (cosine > 0.87).
That is the codec, not the plumbing: the plumbing is checked exactly against a float model
whose base weights are the dequantized NF4 weights (1e-5).
"""

from __future__ import annotations

import pytest
import torch

from ixcdoc.config import ModelConfig
from ixcdoc.generate import SamplingConfig, generate
from ixcdoc.model.plora import PLoRALinear
from ixcdoc.model.weights import build_meta_model, load_model

from .upstream import TINY_CKPT, chat_cases, chat_parts

bnb = pytest.importorskip("bitsandbytes")
from ixcdoc.model.quant import PLoRALinear4bit, make_linear_4bit  # noqa: E402


def quantized_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers (packed 4-bit weights count as stored)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.numel() * t.element_size()
    for m in model.modules():
        if isinstance(m, PLoRALinear4bit) and m.is_quantized:
            st = m.weight.quant_state
            total += st.absmax.numel() * st.absmax.element_size()
            if st.nested:
                total += st.state2.absmax.numel() * st.state2.absmax.element_size()
    return total


@pytest.fixture(scope="module")
def q4():
    return load_model(TINY_CKPT, quant="4bit")


@pytest.fixture(scope="module")
def fp():
    return load_model(TINY_CKPT)


def _logits(model, case_index: int = 0) -> torch.Tensor:
    embeds, im_mask = model.splice(chat_parts(chat_cases()[case_index]))
    with torch.inference_mode():
        return model(embeds, im_mask)[0]


def test_only_decoder_base_weights_are_quantized(q4) -> None:
    quantized = {n for n, m in q4.named_modules() if isinstance(m, PLoRALinear4bit)}
    assert len(quantized) == 2 * 5
    assert all(n.rsplit(".", 1)[-1] in ("wqkv", "wo", "w1", "w2", "w3") for n in quantized)
    for n in quantized:
        m = q4.get_submodule(n)
        assert m.is_quantized and m.weight.dtype == torch.uint8
        assert m.Plora_A.weight.dtype == torch.float32
        assert m.Plora_B.weight.dtype == torch.float32
    for name, p in q4.named_parameters():
        if not any(name.startswith(n + ".weight") for n in quantized):
            assert p.dtype == torch.float32, name  # embeddings, head, ViT, projector, GN, LoRA
    assert quantized_bytes(q4) < sum(p.numel() * 4 for p in load_model(TINY_CKPT).parameters())


def test_4bit_equals_float_model_with_dequantized_weights(q4) -> None:
    deq = load_model(TINY_CKPT)
    with torch.no_grad():
        for n, m in q4.named_modules():
            if isinstance(m, PLoRALinear4bit):
                w = bnb.functional.dequantize_4bit(m.weight, m.weight.quant_state)
                deq.get_submodule(n).weight.copy_(w)
    for i in range(2):
        torch.testing.assert_close(_logits(q4, i), _logits(deq, i), rtol=0, atol=1e-5)


def test_4bit_logits_close_to_float(q4, fp) -> None:
    w = fp.model.layers[0].feed_forward.w1.weight
    wq = q4.model.layers[0].feed_forward.w1.weight
    w_deq = bnb.functional.dequantize_4bit(wq, wq.quant_state)
    rel_w = ((w_deq - w).norm() / w.norm()).item()
    assert 0.03 < rel_w < 0.15  # NF4: ~0.09; 0 would mean nothing was quantized
    for i in range(2):
        a, b = _logits(q4, i), _logits(fp, i)
        rel = (a - b).norm(dim=-1) / b.norm(dim=-1)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert rel.mean() < 0.35 and rel.max() < 0.7
        assert cos.min() > 0.8


def test_4bit_generate_runs_on_cpu(q4) -> None:
    embeds, im_mask = q4.splice(chat_parts(chat_cases()[1]))
    cfg = SamplingConfig(max_new_tokens=6)
    a = generate(q4, embeds, im_mask, config=cfg)
    b = generate(q4, embeds, im_mask, config=cfg)
    assert a.n_tokens == 6 and a.stop_reason == "max_new_tokens"
    assert a.token_ids == b.token_ids  # deterministic
    q4.reset_caches()


def test_7b_4bit_meta_build_keeps_the_checkpoint_key_set() -> None:
    cfg = ModelConfig()
    float_keys = {k: v.shape for k, v in build_meta_model(cfg).state_dict().items()}
    q_model = build_meta_model(cfg, make_linear_4bit())
    q_keys = {k: v.shape for k, v in q_model.state_dict().items()}
    assert q_keys == float_keys  # the loader's strict check works unchanged
    n_q = sum(isinstance(m, PLoRALinear4bit) for m in q_model.modules())
    n_lin = sum(isinstance(m, PLoRALinear) for m in q_model.modules())
    assert n_q == n_lin == 32 * 5


@pytest.mark.gpu
def test_4bit_on_cuda_bf16() -> None:
    model = load_model(TINY_CKPT, quant="4bit", dtype=torch.bfloat16, device="cuda")
    fp = load_model(TINY_CKPT, device="cuda")
    a, b = _logits(model, 1), _logits(fp, 1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.8
    embeds, im_mask = model.splice(chat_parts(chat_cases()[1]))
    res = generate(model, embeds, im_mask, config=SamplingConfig(max_new_tokens=4))
    assert res.n_tokens == 4


def test_storage_matches_the_vram_estimate(q4) -> None:
    # ixcdoc.vram plans 0.5 byte per weight + one fp32 absmax per 64 weights (no double quant)
    for m in q4.modules():
        if isinstance(m, PLoRALinear4bit):
            n = m.in_features * m.out_features
            st = m.weight.quant_state
            assert m.weight.numel() * m.weight.element_size() == n // 2
            assert not st.nested and st.absmax.numel() * 4 == n * 4 // 64
