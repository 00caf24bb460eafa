"""InternLM2 decoder with PLoRA linears and a static-shape KV cache (gpt-fast style).

This file knows nothing about files, devices or sampling: it is the maths only.

- Pre-norm blocks: ``attention_norm`` -> attention -> residual, ``ffn_norm`` -> SwiGLU MLP
  ``w2(silu(w1 x) * w3 x)`` -> residual; then ``model.norm`` and the untied ``output`` head.
- Packed ``wqkv`` rows are [n_kv groups][q_per_kv query heads, 1 key, 1 value][head_dim];
  query head i uses KV head i // q_per_kv (GQA).
- RoPE: non-interleaved rotate_half over the full head dim, inv_freq = 1/theta^(2i/d); cos/sin
  computed in fp32 and cast to the activation dtype before use (upstream's HF-4.33 cache does
  the same, so bf16 rounding matches).
- Attention: torch SDPA, or flash-attn 2 for cache-free causal prefill when the loader chose it
  (``set_attention_backend``; ``weights.attention_backend`` picks it for half precision on
  CUDA). Never an fp32 eager softmax over the whole sequence. No kernel is chosen here by
  device: the caller picks (the backend, and ``AttentionBatch.bmm`` for masked attention).
- KV cache: preallocated [B, n_kv, max_seq, head_dim] per layer, written at ``input_pos``; a
  decode step has constant shapes (mask over the whole cache) so it can be captured by
  torch.compile / CUDA graphs.
- Per-token host overhead: a decode step dispatches every op from Python, so the per-layer path
  avoids ops that do nothing (no-op dtype casts, full-batch slices), ropes q and k in one pass,
  and uses one additive cache mask built per forward (not per layer). Each of these computes
  exactly the same values as the straightforward form.

Forward contract (``InternLM2ForCausalLM.forward``):
``input_pos=None`` means a fresh sequence at positions 0..S-1 (prefill): causal attention over
the new keys only, which lets SDPA pick its flash kernel; the keys are also written to the cache
if one is set up. A tensor ``input_pos`` [S] continues a cached sequence: keys go into the cache
at those positions and queries attend over the cache with a position mask. A 2-D ``input_pos``
[B, S] gives every row its own positions (the batched engine: sequences of different lengths
decode together). Where the rows live in the cache is one typed value, ``AttentionBatch``
(``batch=``; None: batch row b is cache row b, the whole cache attended): ``row`` places the
batch in the cache (a prefill into one engine slot), ``span`` bounds the cached positions
attended, ``segments`` packs several prompts into one row (the engine's packed prefill: every
linear layer runs once over all their tokens, while attention and the cache writes run per
prompt, each into its own cache row; a prompt may start after a prefix already in its row, the
engine's reused system prompt), and ``bmm`` picks the masked-attention kernel.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ixcdoc.config import ModelConfig
from ixcdoc.model.plora import PLoRALinear, lora_scaling

LinearFactory = Callable[..., PLoRALinear]
# packed prefill: (new tokens, cache row, first position) per prompt; the positions before the
# first one are already in that cache row (a reused prompt prefix), 0 = a fresh prompt
Segments = Sequence[tuple[int, int, int]]


@dataclass(frozen=True)
class AttentionBatch:
    """Which cache rows and positions a forward's rows read and write: the slot layout of the
    batched engine, as one value (``InternLM2ForCausalLM.forward(batch=...)``).

    ``row``: batch row b reads and writes cache row ``row + b`` (a prefill into one slot).
    ``span``: cached queries attend to the first ``span`` positions only (the caller guarantees
    every query position is below it); None = the whole cache.
    ``segments``: packed prefill of several prompts, ``(length, cache_row, first)`` each; the
    inputs [1, T, D] hold their tokens back to back (lengths sum to T, ``input_pos`` None) at
    positions first..first+length-1 (first > 0: positions 0..first-1 are already in that cache
    row, a reused prefix); with ``last_only`` the logits are [1, n, V], each prompt's last token.
    ``bmm``: masked attention over the cache runs as ``baddbmm`` + softmax + ``bmm`` with a 3-D
    mask (per-row decode rows, and prefix-continuing prompts of at most ``BMM_MAX_ROWS``
    tokens) instead of SDPA with a 4-D mask; the caller's choice (the engine's runner takes it
    off CUDA, where SDPA's masked CPU kernel costs ~2 ms per call on a few query rows).
    """

    row: int = 0
    span: int | None = None
    segments: Segments | None = None
    bmm: bool = False


ONE_BATCH = AttentionBatch()  # batch row b is cache row b; the whole cache; SDPA


class RMSNorm(nn.Module):
    """RMSNorm with the variance in fp32 and the weight applied in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x if dtype == torch.float32 else x.float()  # a no-op cast still costs a dispatch
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (h if dtype == torch.float32 else h.to(dtype))


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
    """x: [B, H, S, D], cos/sin: [S, D] -> [B, H, S, D] (any shapes that broadcast)."""
    return x * cos + rotate_half(x) * sin


def cache_mask(
    positions: torch.Tensor, max_seq: int, q_per_kv: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask over the cache for queries at positions [S] -> [1, 1, g*S, max_seq].

    Per-row positions [B, S] give [B, 1, g*S, max_seq] (each row sees its own prefix).

    Query at position p sees cache slots 0..p (0.0), the rest is -inf. Rows are folded like the
    queries in ``Attention._attend_cache`` (row j*S + s is query s of head j of a KV group).
    SDPA turns a bool mask into exactly this tensor on every call; building it once per forward
    saves that conversion in every layer.
    """
    slots = torch.arange(max_seq, device=positions.device)
    if positions.dim() == 2:
        visible = slots <= positions[:, :, None]  # [B, S, M]
        if q_per_kv > 1:
            visible = visible.repeat(1, q_per_kv, 1)  # [B, g*S, M], row j*S + s as below
        mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~visible, float("-inf"))[:, None]
    visible = slots[None, :] <= positions[:, None]  # [S, M]
    if q_per_kv > 1:
        visible = visible.repeat(q_per_kv, 1)  # [g*S, M]
    mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
    return mask.masked_fill_(~visible, float("-inf"))[None, None]


# A prompt that continues a cached prefix takes the baddbmm path (``AttentionBatch.bmm``) only
# when it is this short:
# the path materializes its fp32 scores [n_kv, g*S, span] and softmaxes them, which for a page
# prompt of ~1,500 tokens costs ~4x SDPA's CPU kernel with the same mask (a 4-D mask
# selects it); the ~2 ms SDPA spends per call only matters for a few query rows.
BMM_MAX_ROWS = 64


def row_slots(positions: torch.Tensor, n_kv: int, max_seq: int) -> torch.Tensor:
    """Per-row positions [B, S] -> flat cache indices [B, n_kv * S] for ``KVCache.update``.

    Row b, KV head h, position p lives at (b * n_kv + h) * max_seq + p of the rows' cache
    viewed as [B * n_kv * max_seq, D]; the order (b, h, s) is k's [B, n_kv, S, D] order.
    """
    b, s = positions.shape
    heads = torch.arange(b * n_kv, device=positions.device).view(b, n_kv, 1) * max_seq
    return (heads + positions[:, None, :]).view(b, n_kv * s)


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
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, n_kv, S, D] into cache rows ``row``..``row + B - 1``; return those rows
        of the caches [B, n_kv, M, D].

        ``input_pos`` [S]: the same positions for every row. [B, n_kv * S]: flat indices into
        the rows' ``[B * n_kv * M]`` positions, one per written vector, from ``row_slots``
        (per-row positions; one ``index_copy_`` instead of an advanced-index put).
        """
        kc, vc = self.k, self.v
        b = k.shape[0]
        if row or b != kc.shape[0]:  # a smaller batch than allocated: a window of rows
            kc, vc = kc[row : row + b], vc[row : row + b]
        if k.dtype != kc.dtype:
            k, v = k.to(kc.dtype), v.to(vc.dtype)
        if input_pos.dim() == 2:  # every row at its own positions: flat indices (row_slots)
            d = k.shape[-1]
            kc.view(-1, d).index_copy_(0, input_pos.view(-1), k.reshape(-1, d))
            vc.view(-1, d).index_copy_(0, input_pos.view(-1), v.reshape(-1, d))
            return kc, vc
        kc.index_copy_(2, input_pos, k)
        vc.index_copy_(2, input_pos, v)
        return kc, vc


def flash_attention() -> Callable[..., torch.Tensor] | None:
    """flash-attn 2's ``flash_attn_func`` when it imports, else None."""
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
        self.backend = "sdpa"  # or "flash": flash-attn 2 for the causal prefill (the loader's pick)

    def _attend_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention at positions 0..S-1: q [B, H, S, D], k/v [B, n_kv, S, D]."""
        if self.backend == "flash" and (fa := flash_attention()) is not None:
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
        """q [B, H, S, D] over the cache k/v [B, n_kv, M, D], mask [1|B, 1, g*S, M] -> [B, H, S, D].

        A 3-D mask [B*n_kv, g*S, M] (``AttentionBatch.bmm``) selects the baddbmm path.

        The g query heads of a KV group are folded into the query length, so the (long) cache
        is read once per KV head and never repeated; ``mask`` comes folded the same way
        (``cache_mask``).
        """
        b, h, s, d = q.shape
        span = mask.shape[-1]
        if span != k.shape[2]:  # the batched engine attends only to the filled prefix
            k, v = k[:, :, :span], v[:, :, :span]
        qg = q.reshape(b, self.n_kv, self.q_per_kv * s, d)  # head 4*grp+j -> grp, row j*S + s
        if mask.dim() == 3:
            # the caller chose baddbmm, mask already [B*n_kv, g*S, span]: SDPA's CPU flash
            # kernel spends ~2 ms per call on a few query rows per sequence; baddbmm (scale and
            # mask fused), softmax, bmm compute the same softmax(QK^T/sqrt(d) + mask) V
            n = b * self.n_kv
            scores = torch.baddbmm(
                mask, qg.reshape(n, -1, d), k.reshape(n, span, d).transpose(1, 2), alpha=d**-0.5
            )
            o = torch.bmm(scores.softmax(-1), v.reshape(n, span, d))
        else:
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)  # [B, n_kv, g*S, D]
        return o.reshape(b, h, s, d)

    def _attend_packed(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        segments: Sequence[tuple[int, int, int, torch.Tensor | None]],
    ) -> torch.Tensor:
        """Prompts packed along the sequence: q [1, H, T, D], k/v [1, n_kv, T, D] -> [1, H, T, D].

        Segment i (``length``, ``row``, ``first``, ``mask``) holds the prompt's tokens at
        positions first..first+length-1; its keys go into cache row ``row``. A fresh prompt
        (first 0, mask None) attends causally to its own keys, through the same kernel call as
        an unpacked prefill of it; one that continues a cached prefix attends over its row of
        the cache with ``mask`` (``cache_mask`` of its positions).
        """
        if self.kv_cache is None and any(first for _, _, first, _ in segments):
            raise RuntimeError("a prompt that continues a cached prefix needs the KV cache")
        out: list[torch.Tensor] = []
        start = 0
        for length, row, _first, mask in segments:
            end = start + length
            ks, vs = k[:, :, start:end], v[:, :, start:end]
            if self.kv_cache is not None:
                k_row, v_row = self.kv_cache.update(positions[start:end], ks, vs, row)
            if mask is None:
                out.append(self._attend_causal(q[:, :, start:end], ks, vs))
            else:
                out.append(self._attend_cache(q[:, :, start:end], k_row, v_row, mask))
            start = end
        return torch.cat(out, dim=2)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        im_mask: torch.Tensor | None,
        cache_row: int = 0,
        segments: Sequence[tuple[int, int, int, torch.Tensor | None]] | None = None,
    ) -> torch.Tensor:
        """x: [B, S, D], cos/sin: [S, D], [S, 1, 1, D] or [B, S, 1, 1, D]; positions: [S] or [B, S].

        ``mask`` None = fresh causal prefill, else the additive cache mask [1 or B, 1, g*S,
        max_seq] from ``cache_mask``. ``cache_row``: the first cache row this batch uses.
        ``segments``: x [1, T, D] holds prompts back to back (packed prefill; ``mask`` None,
        ``positions`` their concatenated positions; see ``_attend_packed``).
        """
        b, s, _ = x.shape
        g, d = self.q_per_kv, self.head_dim
        if cos.dim() == 2:
            cos, sin = cos.view(s, 1, 1, d), sin.view(s, 1, 1, d)
        qkv = self.wqkv(x, im_mask).view(b, s, self.n_kv, g + 2, d)  # [B, S, n_kv, g+2, D]
        # q and k rotated in one pass (same elementwise maths as per tensor): [B, S, n_kv, g+1, D]
        qk = apply_rope(qkv[:, :, :, : g + 1], cos, sin)
        q = qk[:, :, :, :g].reshape(b, s, self.n_heads, d).transpose(1, 2)  # [B, H, S, D]
        k = qk[:, :, :, g].transpose(1, 2)  # [B, n_kv, S, D]
        v = qkv[:, :, :, g + 1].transpose(1, 2)  # [B, n_kv, S, D]
        if segments is not None:  # packed prompts: each attends to its own row only
            o = self._attend_packed(q, k, v, positions, segments)
        elif mask is None:
            if self.kv_cache is not None:
                self.kv_cache.update(positions, k, v, cache_row)
            o = self._attend_causal(q, k, v)
        else:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call setup_caches() first")
            k_all, v_all = self.kv_cache.update(positions, k, v, cache_row)  # [B, n_kv, M, D]
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

    def forward(
        self, x, cos, sin, positions, mask, im_mask, cache_row=0, segments=None
    ) -> torch.Tensor:
        h = self.attention(
            self.attention_norm(x), cos, sin, positions, mask, im_mask, cache_row, segments
        )
        x = x + h
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
        """The causal prefill's kernel: 'sdpa', or 'flash' (flash-attn 2: CUDA, fp16/bf16)."""
        if backend not in ("flash", "sdpa"):
            raise ValueError(f"unknown attention backend {backend!r}")
        if backend == "flash" and flash_attention() is None:
            raise ValueError("attention backend 'flash' needs the flash-attn package")
        for layer in self.model.layers:
            layer.attention.backend = backend

    def _bmm_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A cache mask [B, 1, g*S, M] in the ``baddbmm`` layout of ``Attention._attend_cache``:
        [B * n_kv, g*S, M], one copy per KV head (see ``AttentionBatch.bmm``)."""
        n_kv = self.config.num_key_value_heads
        return mask.expand(-1, n_kv, -1, -1).reshape(-1, *mask.shape[-2:])

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        im_mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        *,
        last_only: bool = False,
        batch: AttentionBatch | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """inputs_embeds [B, S, D], im_mask [B, S] bool, input_pos [S] -> fp32 logits [B, S, V].

        ``input_pos=None``: fresh sequence at 0..S-1; [B, S]: per-row positions. ``last_only``:
        logits of the last position only ([B, 1, V]); prefill of thousands of tokens needs no
        [S, 92544] tensor. ``batch``: where the rows live in the KV cache (``AttentionBatch``;
        None: row b is cache row b, the whole cache attended, SDPA). ``keep``: flat indices
        into the B * S positions; only their logits are computed, as [1, N, V] (a speculative
        verify step's padded positions need none).
        """
        batch = ONE_BATCH if batch is None else batch
        segments = batch.segments
        x = inputs_embeds
        s = x.shape[1]
        packed = None
        if segments is not None:
            if input_pos is not None or x.shape[0] != 1 or sum(n for n, _, _ in segments) != s:
                raise ValueError("segments need one packed row of prompts (input_pos None)")
            g = self.config.num_attention_heads // self.config.num_key_value_heads
            packed, pieces = [], []
            for n, row, first in segments:
                pos = torch.arange(first, first + n, device=x.device)
                pieces.append(pos)
                seg_mask = None
                if first:  # continues a cached prefix: attends over its row with a mask
                    seg_mask = cache_mask(pos, first + n, g, x.dtype)  # [1, 1, g*n, first+n]
                    if batch.bmm and n <= BMM_MAX_ROWS:
                        seg_mask = self._bmm_mask(seg_mask)
                packed.append((n, row, first, seg_mask))
            positions = torch.cat(pieces)
            mask = None
        elif input_pos is None:
            positions = torch.arange(s, device=x.device)
            mask = None
        else:
            positions = input_pos
            m = self.max_seq_length
            if m == 0:
                raise RuntimeError("input_pos given but no KV cache: call setup_caches() first")
            g = self.config.num_attention_heads // self.config.num_key_value_heads
            span = m if batch.span is None else min(batch.span, m)
            mask = cache_mask(positions, span, g, x.dtype)  # [1|B, 1, g*S, span], for all layers
            if positions.dim() == 2 and batch.bmm:  # the baddbmm per-row layout
                mask = self._bmm_mask(mask)
        if im_mask is not None and not bool(im_mask.any()):
            im_mask = None  # text-only: skip the per-layer LoRA gather entirely
        d = self.config.head_dim
        theta = self.config.rope_theta
        if positions.dim() == 2:  # per row: [B, S, 1, 1, D]; the cache writes as flat indices
            cos, sin = rope_cos_sin(positions.reshape(-1), d, theta, x.dtype)
            cos, sin = cos.view(*positions.shape, 1, 1, d), sin.view(*positions.shape, 1, 1, d)
            positions = row_slots(positions, self.config.num_key_value_heads, m)
        else:
            cos, sin = rope_cos_sin(positions, d, theta, x.dtype)
            cos, sin = cos.view(s, 1, 1, d), sin.view(s, 1, 1, d)  # over [B, S, n_kv, g, D]
        for layer in self.model.layers:
            x = layer(x, cos, sin, positions, mask, im_mask, batch.row, packed)
        if last_only and segments is not None:
            ends = torch.tensor([n for n, _, _ in segments], device=x.device).cumsum(0) - 1
            x = x[:, ends]
        elif last_only:
            x = x[:, -1:]
        elif keep is not None:
            x = x.reshape(-1, x.shape[-1])[keep][None]
        logits = self.output(self.model.norm(x))
        return logits if logits.dtype == torch.float32 else logits.float()
