"""Peak GPU memory estimate per tier and precision: arithmetic only, no torch.

peak = weights + KV cache + prefill activations + vision-tower activations + CUDA overhead

- weights: every parameter group counted from the config's shapes. bf16: 2 bytes each.
  4-bit: the base weights of the decoder linears (wqkv, wo, w1, w2, w3) are NF4, 0.5 byte per
  weight plus one fp32 absmax per 64-weight block (0.0625 byte); everything else (PLoRA A/B,
  embeddings, output head, vision tower, projector, norms) stays bf16.
- KV cache: ixcdoc preallocates a static cache for prompt + max_new_tokens positions:
  layers x 2 (K, V) x kv_heads x head_dim x 2 bytes per position (128 KiB for the 7B).
- prefill activations: attention runs in SDPA/flash kernels, so no seq x seq matrix exists;
  the largest transient is the SwiGLU MLP of one layer (w1 and w3 outputs and their product,
  3 x seq x intermediate) plus a few seq x hidden buffers (residual, normed input, attention
  output, q/k/v) and the PLoRA branch. Logits are computed for the last position only.
- vision tower: (crops + 1) x 577 tokens through one CLIP layer at a time (MLP 4x wide).
- overhead: CUDA context, cuBLAS workspace and allocator slack, a fixed amount.

The constants ``ACT_HIDDEN_BUFFERS`` and ``CUDA_OVERHEAD`` are the calibration knobs; they are
stated in docs/vram.md with how they were obtained.
"""

from __future__ import annotations

from dataclasses import dataclass

from ixcdoc.config import ModelConfig

GiB = 1024**3
BF16 = 2
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # 4-bit code + fp32 absmax per block of 64
ACT_HIDDEN_BUFFERS = 8  # seq x hidden bf16 buffers alive at the prefill peak
CUDA_OVERHEAD = int(0.75 * GiB)
PROMPT_TEXT_TOKENS = 400  # system block + template + a long question, in tokens
QUANTS = ("bf16", "4bit")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by group (numbers of weights, not bytes)."""

    decoder_linear: int  # base weights of wqkv, wo, w1, w2, w3: the 4-bit part
    plora: int
    embeddings: int  # tok_embeddings + output head
    norms: int
    vision: int  # CLIP tower
    projector: int  # vision_proj + the two separator vectors

    @property
    def total(self) -> int:
        return (
            self.decoder_linear
            + self.plora
            + self.embeddings
            + self.norms
            + self.vision
            + self.projector
        )


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Count parameters from the config's shapes (no model built)."""
    d, i, nl = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    qkv_out = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    linears = [(d, qkv_out), (d, d), (d, i), (d, i), (i, d)]  # (in, out): wqkv wo w1 w3 w2
    ranks = [cfg.wqkv_lora_rank] + [cfg.lora_rank] * 4
    decoder_linear = nl * sum(a * b for a, b in linears)
    plora = nl * sum(r * (a + b) for (a, b), r in zip(linears, ranks, strict=True))
    v = cfg.vision
    grid = v.image_size // v.patch_size
    vd, vi = v.hidden_size, v.intermediate_size
    vit_layer = 4 * (vd * vd + vd) + (vd * vi + vi) + (vi * vd + vd) + 4 * vd
    vision = (
        vd  # class embedding
        + v.num_channels * v.patch_size**2 * vd  # patch embedding (no bias)
        + (grid * grid + 1) * vd  # position embedding
        + 2 * vd  # pre_layrnorm
        + v.num_hidden_layers * vit_layer
    )
    m = cfg.merged_dim
    projector = (m * d + d) + (d * d + d) + 2 * m
    return ParamCounts(
        decoder_linear=decoder_linear,
        plora=plora,
        embeddings=2 * cfg.vocab_size * d,
        norms=(2 * nl + 1) * d,
        vision=vision,
        projector=projector,
    )


def weight_bytes(cfg: ModelConfig, quant: str) -> int:
    """Bytes of weights on the GPU for ``bf16`` or ``4bit``."""
    p = param_counts(cfg)
    if quant == "bf16":
        return p.total * BF16
    if quant == "4bit":
        return int(p.decoder_linear * NF4_BYTES_PER_WEIGHT) + (p.total - p.decoder_linear) * BF16
    raise ValueError(f"unknown precision {quant!r}")


def kv_bytes_per_token(cfg: ModelConfig) -> int:
    """KV cache bytes per position (bf16 K and V in every layer)."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * BF16


def kv_cache_bytes(cfg: ModelConfig, positions: int, itemsize: int = BF16) -> int:
    """KV cache bytes for ``positions`` positions (over all slots) in elements of ``itemsize``
    bytes: the engine allocates this, and the sizing rules count it."""
    return positions * kv_bytes_per_token(cfg) * itemsize // BF16


def size_text(n: int) -> str:
    """Bytes for people: "1.5 GiB", or "12.0 MiB" below one GiB."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class VramEstimate:
    """Estimated peak GPU memory for one page, in bytes, by part."""

    quant: str
    weights: int
    kv_cache: int
    activations: int
    vision: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.vision + self.overhead

    @property
    def total_gib(self) -> float:
        return self.total / GiB


def prefill_activation_bytes(cfg: ModelConfig, tokens: int) -> int:
    """Peak activations of a prefill forward over ``tokens`` tokens (one prompt or a pack)."""
    d, i = cfg.hidden_size, cfg.intermediate_size
    mlp = 3 * tokens * i * BF16
    lora = tokens * cfg.lora_rank * BF16 * 2
    return mlp + ACT_HIDDEN_BUFFERS * tokens * d * BF16 + lora + cfg.vocab_size * 4


def estimate_vram(
    cfg: ModelConfig,
    image_tokens: int,
    crops: int,
    *,
    quant: str,
    max_new_tokens: int = 512,
    text_tokens: int = PROMPT_TEXT_TOKENS,
) -> VramEstimate:
    """Peak GPU memory for a page of ``image_tokens`` (``crops`` local crops) at ``quant``."""
    seq = image_tokens + text_tokens
    kv = (seq + max_new_tokens) * kv_bytes_per_token(cfg)
    act = prefill_activation_bytes(cfg, seq)
    v = cfg.vision
    vis_tokens = (crops + 1) * ((v.image_size // v.patch_size) ** 2 + 1)
    vision = vis_tokens * (v.intermediate_size + 4 * v.hidden_size) * BF16
    # the merged, projected image features live until prefill ends
    vision += image_tokens * (cfg.merged_dim + cfg.hidden_size) * BF16
    return VramEstimate(quant, weight_bytes(cfg, quant), kv, act, vision, CUDA_OVERHEAD)


# -- many sequences (the batched engine) ----------------------------------------------------------

VISION_BATCH_TILES = 56  # ViT tiles the engine encodes per admission round (ixcdoc.engine)
MAX_AUTO_BATCH = 256  # auto never asks for more slots than this


POSITION_ROUND = 256  # slots are sized in steps of this many positions


def round_positions(positions: int) -> int:
    """``positions`` rounded up to ``POSITION_ROUND`` (at least one step), so nearby runs share
    cache shapes. Callers size slots with ``sizing.slot_positions``; the rounding sits here,
    below it, because this memory model must count what the engine allocates."""
    return -(-max(positions, 1) // POSITION_ROUND) * POSITION_ROUND


@dataclass(frozen=True)
class BatchVramEstimate:
    """Estimated peak GPU memory of the engine running ``batch`` sequences, by part."""

    quant: str
    batch: int
    beams: int
    weights: int
    kv_cache: int  # every slot row: batch x beams x slot positions x KV bytes per position
    prefill: int  # activations of one packed prefill (up to a slot's positions of prompts)
    vision: int  # one admission round's ViT batch
    decode: int  # logits of one decode step for every row
    overhead: int

    @property
    def total(self) -> int:
        return (
            self.weights + self.kv_cache + self.prefill + self.vision + self.decode + self.overhead
        )

    @property
    def total_gib(self) -> float:
        return self.total / GiB


def estimate_batch_vram(
    cfg: ModelConfig,
    batch: int,
    image_tokens: int,
    crops: int,
    *,
    quant: str,
    max_new_tokens: int = 512,
    beams: int = 1,
    text_tokens: int = PROMPT_TEXT_TOKENS,
) -> BatchVramEstimate:
    """Peak memory of ``batch`` requests of ``image_tokens`` (``crops`` crops), ``beams`` each.

    weights + KV per position x every position a slot reserves (beams have their own rows; the
    prompt is prefilled once and copied into them) + the activations of one packed prefill
    (the engine packs prompts up to one slot's positions per forward; the decode tokens that
    ride along are a rounding error) + the vision batch of one admission round (at least
    ``VISION_BATCH_TILES`` tiles) + fp32 logits of a decode step.
    """
    one = estimate_vram(
        cfg, image_tokens, crops, quant=quant, max_new_tokens=0, text_tokens=text_tokens
    )
    rows = batch * beams
    slot = round_positions(image_tokens + text_tokens + max_new_tokens)
    kv = rows * slot * kv_bytes_per_token(cfg)
    prefill = prefill_activation_bytes(cfg, slot)
    v = cfg.vision
    tiles = max(VISION_BATCH_TILES, crops + 1)
    vis_tokens = tiles * ((v.image_size // v.patch_size) ** 2 + 1)
    vision = vis_tokens * (v.intermediate_size + 4 * v.hidden_size) * BF16
    vision += image_tokens * (cfg.merged_dim + cfg.hidden_size) * BF16
    decode = rows * cfg.vocab_size * 4 * 2  # logits and one processed copy
    return BatchVramEstimate(
        quant, batch, beams, one.weights, kv, prefill, vision, decode, one.overhead
    )


def auto_batch_size(
    cfg: ModelConfig,
    free_bytes: int,
    image_tokens: int,
    crops: int,
    max_new_tokens: int,
    quant: str,
    *,
    beams: int = 1,
    text_tokens: int = PROMPT_TEXT_TOKENS,
) -> int:
    """The most requests ``estimate_batch_vram`` fits in ``free_bytes`` (0: not even one)."""

    def total(batch: int) -> int:
        return estimate_batch_vram(
            cfg,
            batch,
            image_tokens,
            crops,
            quant=quant,
            max_new_tokens=max_new_tokens,
            beams=beams,
            text_tokens=text_tokens,
        ).total

    fixed, one = total(0), total(1)  # the estimate is linear in the batch
    per = one - fixed
    if free_bytes < one:
        return 0
    return min((free_bytes - fixed) // per, MAX_AUTO_BATCH)


def available_ram() -> int | None:
    """Bytes of RAM a new allocation can still get (None when unknown): the kernel's
    MemAvailable, or less when this process's container (memory cgroup, v2 or v1) allows less.
    Swap is not counted: a KV cache in swap is no cache."""
    left = _meminfo_available()
    cgroup = _cgroup_left()
    if cgroup is not None:
        left = cgroup if left is None else min(left, cgroup)
    return left


_MEMINFO = "/proc/meminfo"


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None when absent or unreadable."""
    try:
        with open(_MEMINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "MemAvailable":
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_dirs() -> list[tuple[str, str, str]]:
    """(folder, limit file, usage file) of this process's memory cgroup, its own first (from
    /proc/self/cgroup), then the mount's root (what a container with a cgroup namespace sees)."""
    v2 = ("memory.max", "memory.current")
    v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    out: list[tuple[str, str, str]] = []
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    out.append((f"/sys/fs/cgroup{path}", *v2))
                elif "memory" in controllers.split(","):
                    out.append((f"/sys/fs/cgroup/memory{path}", *v1))
    except (OSError, ValueError):
        pass
    return [*out, ("/sys/fs/cgroup", *v2), ("/sys/fs/cgroup/memory", *v1)]


def _cgroup_left() -> int | None:
    """What this process's memory cgroup still allows (limit - usage); None without a limit."""
    for folder, limit_name, usage_name in _cgroup_dirs():
        try:
            with open(f"{folder}/{limit_name}", encoding="ascii") as f:
                limit_text = f.read().strip()
            with open(f"{folder}/{usage_name}", encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 2**60:  # "max", or v1's no limit
            continue
        return max(int(limit_text) - usage, 0)
    return None
