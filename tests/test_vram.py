"""The VRAM model's parts, pinned against independent counts."""

from __future__ import annotations

import json

import torch

from ixcdoc.config import ModelConfig
from ixcdoc.vram import (
    CUDA_OVERHEAD,
    GiB,
    estimate_vram,
    kv_bytes_per_token,
    param_counts,
    weight_bytes,
)
from tests.conftest import UPSTREAM


def test_7b_parameter_count_and_bf16_size_match_the_published_checkpoint() -> None:
    # Architecture doc: 8.597 B parameters, 17.195 GB in bf16 (shards of 10 GB + 7.2 GB).
    p = param_counts(ModelConfig())
    assert round(p.total / 1e9, 3) == 8.597
    assert round(weight_bytes(ModelConfig(), "bf16") / 1e9, 2) == 17.19
    # 32 layers x (wqkv 6144x4096 + wo 4096^2 + 3 x 4096x14336)
    assert p.decoder_linear == 32 * (6144 * 4096 + 4096 * 4096 + 3 * 4096 * 14336)


def test_counts_equal_the_tensors_of_a_real_checkpoint_in_the_official_layout() -> None:
    ckpt = UPSTREAM / "tiny_ckpt"
    cfg = ModelConfig.from_file(ckpt / "config.json")
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(torch.load(ckpt / shard, weights_only=True, map_location="cpu"))
    cfg = ModelConfig(
        **{**cfg.__dict__, "wqkv_lora_rank": 8, "lora_rank": 16}  # ranks live in the weights
    )
    p = param_counts(cfg)
    assert p.total == sum(t.numel() for t in tensors.values())
    linear_names = ("wqkv.weight", "wo.weight", "w1.weight", "w2.weight", "w3.weight")
    base = sum(
        t.numel()
        for k, t in tensors.items()
        if k.startswith("model.layers.") and k.endswith(linear_names)
    )
    assert p.decoder_linear == base
    assert p.plora == sum(t.numel() for k, t in tensors.items() if "Plora_" in k)
    assert p.vision == sum(t.numel() for k, t in tensors.items() if k.startswith("vit."))


def test_4bit_weights_are_nf4_decoder_linears_plus_bf16_rest() -> None:
    cfg = ModelConfig()
    p = param_counts(cfg)
    expect = p.decoder_linear * 0.5 + p.decoder_linear / 64 * 4 + (p.total - p.decoder_linear) * 2
    assert weight_bytes(cfg, "4bit") == int(expect)
    assert 7.0e9 < weight_bytes(cfg, "4bit") < 7.4e9


def test_kv_cache_is_128_kib_per_token_for_the_7b() -> None:
    assert kv_bytes_per_token(ModelConfig()) == 32 * 2 * 8 * 128 * 2 == 128 * 1024


def test_estimate_parts_grow_as_documented() -> None:
    cfg = ModelConfig()
    small = estimate_vram(cfg, 1489, 9, quant="bf16", max_new_tokens=512)
    big = estimate_vram(cfg, 7297, 49, quant="bf16", max_new_tokens=512)
    assert small.weights == big.weights == weight_bytes(cfg, "bf16")
    assert big.kv_cache - small.kv_cache == (7297 - 1489) * 128 * 1024
    # activations are linear in sequence length (no seq x seq term)
    mid = estimate_vram(cfg, (1489 + 7297) // 2, 29, quant="bf16", max_new_tokens=512)
    assert abs(2 * mid.activations - small.activations - big.activations) < 1e6
    assert small.overhead == CUDA_OVERHEAD
    assert small.total == small.weights + small.kv_cache + small.activations + small.vision + (
        small.overhead
    )
    q = estimate_vram(cfg, 7297, 49, quant="4bit")
    assert q.total < big.total and abs(q.total_gib - q.total / GiB) < 1e-9


def test_memory_left_on_the_cpu_honours_a_container_limit(tmp_path, monkeypatch) -> None:
    from ixcdoc import sizing, vram
    from ixcdoc.engine import runner as runner_mod

    cpu = torch.device("cpu")
    meminfo = tmp_path / "meminfo"
    # odd lines (no value, no colon) are skipped; MemAvailable is in kB
    meminfo.write_text("MemTotal: 100 kB\nWeird:\nnonsense\nMemAvailable:    1000 kB\n")
    monkeypatch.setattr(vram, "_MEMINFO", str(meminfo))
    v2 = tmp_path / "v2"
    v2.mkdir()
    monkeypatch.setattr(vram, "_cgroup_dirs", lambda: [(str(v2), "memory.max", "memory.current")])
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("5\n")
    assert runner_mod._free_bytes(cpu) == 1000 * 1024  # no limit: the machine's
    (v2 / "memory.max").write_text("300000\n")
    (v2 / "memory.current").write_text("100000\n")
    assert runner_mod._free_bytes(cpu) == 200_000  # the container's, smaller
    assert sizing.available_ram() == 200_000  # what --batch-size auto shares out on the CPU
    (v2 / "memory.max").write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert runner_mod._free_bytes(cpu) == 1000 * 1024
    meminfo.write_text("MemTotal: 100 kB\n")
    assert runner_mod._free_bytes(cpu) is None  # nothing known: no refusal
    assert sizing.available_ram() == 0
    assert runner_mod._free_bytes(torch.device("meta")) is None
