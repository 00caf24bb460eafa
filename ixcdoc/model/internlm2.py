"""InternLM2 decoder with PLoRA linears and a static-shape KV cache (gpt-fast style).

This file knows nothing about files, devices or sampling: it is the maths only.

- Pre-norm blocks: ``attention_norm`` -> attention -> residual, ``ffn_norm`` -> SwiGLU MLP
  ``w2(silu(w1 x) * w3 x)`` -> residual; then ``model.norm`` and the untied ``output`` head.
- Packed ``wqkv`` rows are [n_kv groups][q_per_kv query heads, 1 key, 1 value][head_dim];
  query head i uses KV head i // q_per_kv (GQA).
- RoPE: non-interleaved rotate_half over the full head dim, inv_freq = 1/theta^(2i/d); cos/sin
  computed in fp32 and cast to the activation dtype before use (upstream's HF-4.33 cache does
  the same, so bf16 rounding matches).
- Attention: torch SDPA (flash-attn 2 for cache-free causal prefill on CUDA when importable).
  Never an fp32 eager softmax over the whole sequence.
- KV cache: preallocated [B, n_kv, max_seq, head_dim] per layer, written at ``input_pos``; a
  decode step has constant shapes (mask over the whole cache) so it can be captured by
  torch.compile / CUDA graphs.

Forward contract (``InternLM2ForCausalLM.forward``):
``input_pos=None`` means a fresh sequence at positions 0..S-1 (prefill): causal attention over
the new keys only, which lets SDPA pick its flash kernel; the keys are also written to the cache
if one is set up. A tensor ``input_pos`` [S] continues a cached sequence: keys go into the cache
at those positions and queries attend over the cache with a position mask.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ixcdoc.config import ModelConfig
from ixcdoc.model.plora import PLoRALinear, lora_scaling

LinearFactory = Callable[..., PLoRALinear]


class RMSNorm(nn.Module):
    """RMSNorm with the variance in fp32 and the weight applied in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for positions [S] -> two [S, head_dim] tensors in ``dtype`` (computed in fp32)."""
    dev = positions.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=dev).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [S, D/2], same as einsum("i,j")
    emb = torch.cat([freqs, freqs], dim=-1)  # [S, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, D], cos/sin: [S, D] -> [B, H, S, D]."""
    return x * cos + rotate_half(x) * sin


class KVCache(nn.Module):
    """Static KV cache: k/v [B, n_kv, max_seq, head_dim], never resized during generation."""

    def __init__(
        self,
        max_batch_size: int,
        n_kv_heads: int,
        max_seq_length: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (max_batch_size, n_kv_heads, max_seq_length, head_dim)
        # zeros, not empty: masked slots still enter the matmul and must be finite.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_seq_length(self) -> int:
        return self.k.shape[2]

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, n_kv, S, D] at positions [S]; return the full caches [B, n_kv, M, D]."""
        b = k.shape[0]
        self.k[:b].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[:b].index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k[:b], self.v[:b]


def _flash_attn_func():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_func
    except Exception:  # a broken flash-attn build must not take the runtime down
        return None
    return flash_attn_func


class Attention(nn.Module):
    """GQA self-attention with packed PLoRA ``wqkv`` and PLoRA ``wo``."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.q_per_kv = self.n_heads // self.n_kv
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        qkv_out = self.n_kv * (self.q_per_kv + 2) * self.head_dim
        self.wqkv = make_linear("wqkv", d, qkv_out, cfg.wqkv_lora_rank)
        self.wo = make_linear("wo", self.n_heads * self.head_dim, d, cfg.lora_rank)
        self.kv_cache: KVCache | None = None
        self.backend = "auto"  # "auto": flash-attn 2 for CUDA prefill if importable; "sdpa"

    def unpack_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed [B, S, n_kv*(g+2)*D] -> q [B, S, H, D], k [B, S, n_kv, D], v [B, S, n_kv, D]."""
        b, s, _ = qkv.shape
        qkv = qkv.view(b, s, self.n_kv, self.q_per_kv + 2, self.head_dim)  # [B, S, n_kv, g+2, D]
        q = qkv[:, :, :, : self.q_per_kv].reshape(b, s, self.n_heads, self.head_dim)  # 4g+j
        return q, qkv[:, :, :, -2], qkv[:, :, :, -1]

    def _attend_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention at positions 0..S-1: q [B, H, S, D], k/v [B, n_kv, S, D]."""
        if (
            self.backend != "sdpa"
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and (fa := _flash_attn_func()) is not None
        ):
            # flash-attn wants [B, S, heads, D] and handles GQA itself.
            o = fa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return o.transpose(1, 2)
        # Repeat K/V to every query head (a transient of 2 x S x H x D) rather than rely on
        # enable_gqa, which not every SDPA kernel implements; with plain shapes, no mask and
        # is_causal, CUDA SDPA can always take its flash kernel.
        k = k.repeat_interleave(self.q_per_kv, dim=1)  # [B, H, S, D]
        v = v.repeat_interleave(self.q_per_kv, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def _attend_cache(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """q [B, H, S, D] over the cache k/v [B, n_kv, M, D] with mask [1, 1, S, M] -> [B, H, S, D].

        The g query heads of a KV group are folded into the query length, so the (long) cache
        is read once per KV head and never repeated; the mask is repeated per folded head.
        """
        b, h, s, d = q.shape
        g = self.q_per_kv
        qg = q.reshape(b, self.n_kv, g * s, d)  # head 4*grp+j -> group grp, row j*S + s
        mg = mask.expand(1, g, s, mask.shape[-1]).reshape(1, 1, g * s, mask.shape[-1])
        o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg)  # [B, n_kv, g*S, D]
        return o.reshape(b, h, s, d)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        im_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x: [B, S, D]; mask None = fresh causal prefill, else [1, 1, S, max_seq] bool."""
        b, s, _ = x.shape
        q, k, v = self.unpack_qkv(self.wqkv(x, im_mask))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if mask is None:
            if self.kv_cache is not None:
                self.kv_cache.update(positions, k, v)
            o = self._attend_causal(q, k, v)
        else:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call setup_caches() first")
            k_all, v_all = self.kv_cache.update(positions, k, v)  # [B, n_kv, M, D]
            o = self._attend_cache(q, k_all, v_all, mask)
        o = o.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)  # [B, S, H*D]
        return self.wo(o, im_mask)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 gate, w3 up, w2 down."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory) -> None:
        super().__init__()
        d, f, r = cfg.hidden_size, cfg.intermediate_size, cfg.lora_rank
        self.w1 = make_linear("w1", d, f, r)
        self.w3 = make_linear("w3", d, f, r)
        self.w2 = make_linear("w2", f, d, r)

    def forward(self, x: torch.Tensor, im_mask: torch.Tensor | None) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x, im_mask)) * self.w3(x, im_mask), im_mask)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, make_linear)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = FeedForward(cfg, make_linear)

    def forward(self, x, cos, sin, positions, mask, im_mask) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, positions, mask, im_mask)
        return x + self.feed_forward(self.ffn_norm(x), im_mask)


class InternLM2Model(nn.Module):
    """``model``: token embeddings, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, make_linear) for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def default_linear(name: str, in_features: int, out_features: int, rank: int) -> PLoRALinear:
    """Float PLoRA linear with the 4KHD scaling rule."""
    return PLoRALinear(in_features, out_features, rank, lora_scaling(name, rank))


class InternLM2ForCausalLM(nn.Module):
    """Decoder + untied ``output`` head; state-dict keys match the official checkpoint."""

    def __init__(self, cfg: ModelConfig, make_linear: LinearFactory = default_linear) -> None:
        super().__init__()
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        self.config = cfg
        self.model = InternLM2Model(cfg, make_linear)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [...] long -> [..., D]."""
        return self.model.tok_embeddings(ids)

    @property
    def max_seq_length(self) -> int:
        """Positions the KV cache holds (0 when none is set up)."""
        cache = self.model.layers[0].attention.kv_cache
        return 0 if cache is None else cache.max_seq_length

    def setup_caches(
        self, max_batch_size: int, max_seq_length: int, *, dtype: torch.dtype | None = None
    ) -> None:
        """Allocate the static KV caches, reusing existing ones that are large enough."""
        cfg = self.config
        emb = self.model.tok_embeddings.weight
        dtype = dtype or emb.dtype
        cur = self.model.layers[0].attention.kv_cache
        if (
            cur is not None
            and cur.k.shape[0] >= max_batch_size
            and cur.max_seq_length >= max_seq_length
            and cur.k.dtype == dtype
            and cur.k.device == emb.device
        ):
            return
        self.reset_caches()  # free first so two caches never coexist
        for layer in self.model.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size,
                cfg.num_key_value_heads,
                max_seq_length,
                cfg.head_dim,
                dtype=dtype,
                device=emb.device,
            )

    def reset_caches(self) -> None:
        """Drop the KV caches (frees their memory)."""
        for layer in self.model.layers:
            layer.attention.kv_cache = None

    def set_attention_backend(self, backend: str) -> None:
        """'auto' (flash-attn 2 for CUDA prefill when importable, else SDPA), 'sdpa'."""
        if backend not in ("auto", "sdpa"):
            raise ValueError(f"unknown attention backend {backend!r}")
        for layer in self.model.layers:
            layer.attention.backend = backend

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        im_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        *,
        last_only: bool = False,
    ) -> torch.Tensor:
        """inputs_embeds [B, S, D], im_mask [B, S] bool, input_pos [S] -> fp32 logits [B, S, V].

        ``input_pos=None``: fresh sequence at 0..S-1. ``last_only``: logits of the last
        position only ([B, 1, V]); prefill of thousands of tokens needs no [S, 92544] tensor.
        """
        x = inputs_embeds
        s = x.shape[1]
        if input_pos is None:
            positions = torch.arange(s, device=x.device)
            mask = None
        else:
            positions = input_pos
            m = self.max_seq_length
            if m == 0:
                raise RuntimeError("input_pos given but no KV cache: call setup_caches() first")
            # [1, 1, S, M]: query at position p sees cache slots 0..p.
            mask = (torch.arange(m, device=x.device)[None, :] <= positions[:, None])[None, None]
        if im_mask is not None and not bool(im_mask.any()):
            im_mask = None  # text-only: skip the per-layer LoRA gather entirely
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask, im_mask)
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)
        return self.output(x).float()
