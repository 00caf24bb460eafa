"""The upstream-style decode loop that ``benchmarks/decode.py`` compares ixcdoc with.

Written for this benchmark after the upstream remote code (the transformers-4.33-style
InternLM2 with IXC2's PLoRA) and transformers' greedy search; nothing here is imported from
either. What it keeps from them, because that is where their per-token host time goes:

- a dynamic KV cache: ``past_key_values`` tuples grown by ``torch.cat`` every step;
- eager attention: explicit ``repeat_kv``, ``matmul``, additive mask, fp32 ``softmax``,
  ``matmul``, with the shape checks of the original;
- a RoPE table sliced to the current length and gathered by ``position_ids`` in every layer;
- decode steps entering through ``input_ids``, so the model builds an all-False ``im_mask`` and
  every PLoRA linear syncs on ``torch.sum(im_mask) > 0`` and adds its LoRA branch times 0;
- a 4-D additive mask rebuilt each step from a 2-D attention mask that grows by ``torch.cat``,
  position ids from its ``cumsum``, full-vocabulary fp32 logits;
- a Python ``generate`` loop: ``prepare_inputs_for_generation``, a logits-processor list whose
  call inspects each processor's signature, EOS bookkeeping with ``unfinished_sequences`` and
  a ``.max() == 0`` sync, a max-length stopping criterion.

``from_ixcdoc`` builds it on the very tensors of a loaded ixcdoc model (``assign=True``, no
copy), so both loops compute with the same weights.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ixcdoc.config import ModelConfig
from ixcdoc.model.plora import lora_scaling


class RMSNorm(nn.Module):
    """Upstream RMSNorm: variance in fp32, weight applied in the input dtype."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class RotaryEmbedding(nn.Module):
    """A cos/sin table for every position up to max_position_embeddings, sliced per call."""

    def __init__(
        self, dim: int, max_positions: int, base: float, device: torch.device | None = None
    ) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        t = torch.arange(max_positions, dtype=inv_freq.dtype, device=device)
        freqs = torch.einsum("i,j->ij", t, inv_freq)  # [P, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, D]
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows 0..seq_len-1 of the table in x's dtype: two [seq_len, D] tensors."""
        return self.cos_cached[:seq_len].to(x.dtype), self.sin_cached[:seq_len].to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [..., D]: (-second half, first half)."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, S, D], k [B, n_kv, S, D], table [P, D], position_ids [B, S]."""
    cos = cos[position_ids].unsqueeze(1)  # [B, 1, S, D]
    sin = sin[position_ids].unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, n_kv, S, D] -> [B, n_kv * n_rep, S, D] (a copy)."""
    b, n_kv, s, d = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(b, n_kv, n_rep, s, d)
    return hidden_states.reshape(b, n_kv * n_rep, s, d)


class PLoRA(nn.Linear):
    """Upstream PLoRA: a Linear plus a LoRA branch at image positions (x0 when there are none)."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.lora_scaling = scaling
        self.Plora_A = nn.Linear(in_features, rank, bias=False)
        self.Plora_B = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor, im_mask: torch.Tensor | None = None) -> torch.Tensor:
        res = super().forward(x)
        if im_mask is not None:
            if torch.sum(im_mask) > 0:  # a host sync in every linear of every step
                part_x = x[im_mask]
                res[im_mask] += self.Plora_B(self.Plora_A(part_x)) * self.lora_scaling
            else:
                part_x = x[:, :1]
                res[:, :1] += self.Plora_B(self.Plora_A(part_x)) * 0
        return res


class Attention(nn.Module):
    """Eager GQA attention over a ``torch.cat``-grown cache (upstream's non-flash path)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.num_key_value_heads = cfg.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        qkv_out = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        r, r_qkv = cfg.lora_rank, cfg.wqkv_lora_rank
        self.wqkv = PLoRA(self.hidden_size, qkv_out, r_qkv, lora_scaling("wqkv", r_qkv))
        self.wo = PLoRA(self.num_heads * self.head_dim, self.hidden_size, r, lora_scaling("wo", r))
        self.rotary_emb = RotaryEmbedding(
            self.head_dim, cfg.max_position_embeddings, cfg.rope_theta
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None,
        im_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """hidden_states [B, S, D] -> ([B, S, D], (k, v) each [B, n_kv, past + S, head_dim])."""
        bsz, q_len, _ = hidden_states.size()
        g = self.num_key_value_groups
        qkv = self.wqkv(hidden_states, im_mask)
        qkv = qkv.view(bsz, q_len, self.num_key_value_heads, g + 2, self.head_dim)
        query_states = qkv[..., :g, :].reshape(bsz, q_len, self.num_heads, self.head_dim)
        key_states = qkv[..., -2, :]
        value_states = qkv[..., -1, :]
        query_states = query_states.transpose(1, 2)  # [B, H, S, D]
        key_states = key_states.transpose(1, 2)  # [B, n_kv, S, D]
        value_states = value_states.transpose(1, 2)

        kv_seq_len = key_states.shape[-2]
        if past_key_value is not None:
            kv_seq_len += past_key_value[0].shape[-2]
        cos, sin = self.rotary_emb(value_states, seq_len=kv_seq_len)
        query_states, key_states = apply_rotary_pos_emb(
            query_states, key_states, cos, sin, position_ids
        )
        if past_key_value is not None:
            key_states = torch.cat([past_key_value[0], key_states], dim=2)
            value_states = torch.cat([past_key_value[1], value_states], dim=2)
        past_key_value = (key_states, value_states)

        key_states = repeat_kv(key_states, g)  # [B, H, T, D]
        value_states = repeat_kv(value_states, g)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(
            self.head_dim
        )
        if attn_weights.size() != (bsz, self.num_heads, q_len, kv_seq_len):
            raise ValueError(f"attention weights of size {tuple(attn_weights.size())}")
        if attention_mask is not None:
            if attention_mask.size() != (bsz, 1, q_len, kv_seq_len):
                raise ValueError(f"attention mask of size {tuple(attention_mask.size())}")
            attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)  # [B, H, S, D]
        if attn_output.size() != (bsz, self.num_heads, q_len, self.head_dim):
            raise ValueError(f"attention output of size {tuple(attn_output.size())}")
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
        return self.wo(attn_output, im_mask), past_key_value


class MLP(nn.Module):
    """SwiGLU with three PLoRA linears."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, f, r = cfg.hidden_size, cfg.intermediate_size, cfg.lora_rank
        self.w1 = PLoRA(d, f, r, lora_scaling("w1", r))
        self.w3 = PLoRA(d, f, r, lora_scaling("w3", r))
        self.w2 = PLoRA(f, d, r, lora_scaling("w2", r))

    def forward(self, x: torch.Tensor, im_mask: torch.Tensor | None) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x, im_mask)) * self.w3(x, im_mask), im_mask)


class DecoderLayer(nn.Module):
    """Pre-norm block returning the tuple ``(hidden_states, present_key_value)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = MLP(cfg)
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value, im_mask):
        residual = hidden_states
        hidden_states = self.attention_norm(hidden_states)
        hidden_states, present = self.attention(
            hidden_states, attention_mask, position_ids, past_key_value, im_mask
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.feed_forward(self.ffn_norm(hidden_states), im_mask)
        return (residual + hidden_states, present)


def _make_causal_mask(
    bsz: int, tgt_len: int, dtype: torch.dtype, device: torch.device, past: int
) -> torch.Tensor:
    """Additive causal mask [B, 1, S, past + S] (finfo.min above the diagonal)."""
    mask = torch.full((tgt_len, tgt_len), torch.finfo(dtype).min, device=device)
    cond = torch.arange(mask.size(-1), device=device)
    mask.masked_fill_(cond < (cond + 1).view(mask.size(-1), 1), 0)
    mask = mask.to(dtype)
    if past > 0:
        zeros = torch.zeros(tgt_len, past, dtype=dtype, device=device)
        mask = torch.cat([zeros, mask], dim=-1)
    return mask[None, None, :, :].expand(bsz, 1, tgt_len, tgt_len + past)


def _expand_mask(mask: torch.Tensor, dtype: torch.dtype, tgt_len: int) -> torch.Tensor:
    """2-D keep-mask [B, T] -> additive [B, 1, S, T]."""
    bsz, src_len = mask.size()
    expanded = mask[:, None, None, :].expand(bsz, 1, tgt_len, src_len).to(dtype)
    inverted = 1.0 - expanded
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


@dataclass
class CausalLMOutput:
    """``logits`` [B, S, V] fp32 and the grown ``past_key_values``."""

    logits: torch.Tensor
    past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class InternLM2ForCausalLM(nn.Module):
    """Decoder + untied head; state-dict keys as in the official checkpoint (and ixcdoc)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = nn.Module()
        self.model.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.model.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        inputs_embeds: torch.Tensor | None = None,
        im_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> CausalLMOutput:
        """Upstream's forward: a prefill from ``inputs_embeds`` or decode from ``input_ids``."""
        if im_mask is None and inputs_embeds is not None:
            im_mask = torch.zeros(inputs_embeds.shape[:2]).to(inputs_embeds.device).bool()
        if input_ids is not None:
            batch_size, seq_length = input_ids.shape[:2]
        else:
            batch_size, seq_length = inputs_embeds.shape[:2]
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if inputs_embeds is None:
            inputs_embeds = self.model.tok_embeddings(input_ids)
            im_mask = torch.zeros(inputs_embeds.shape[:2]).to(inputs_embeds.device).bool()
        dev, dtype = inputs_embeds.device, inputs_embeds.dtype
        if position_ids is None:
            position_ids = torch.arange(past, seq_length + past, dtype=torch.long, device=dev)[None]
        if attention_mask is None:
            attention_mask = torch.ones(
                (batch_size, seq_length + past), dtype=torch.bool, device=dev
            )
        mask4 = _expand_mask(attention_mask, dtype, tgt_len=seq_length)
        if seq_length > 1:
            mask4 = mask4 + _make_causal_mask(batch_size, seq_length, dtype, dev, past)
        hidden_states = inputs_embeds
        next_cache: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
        for idx, layer in enumerate(self.model.layers):
            pkv = past_key_values[idx] if past_key_values is not None else None
            outputs = layer(hidden_states, mask4, position_ids, pkv, im_mask)
            hidden_states = outputs[0]
            next_cache += (outputs[1],)
        hidden_states = self.model.norm(hidden_states)
        logits = self.output(hidden_states).float()  # every position, full vocabulary
        return CausalLMOutput(logits=logits, past_key_values=next_cache)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        im_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> dict[str, object]:
        """The per-step input dict, as upstream builds it."""
        if past_key_values is not None:
            past_length = past_key_values[0][0].shape[2]
            if input_ids.shape[1] > past_length:
                remove_prefix_length = past_length
            else:
                remove_prefix_length = input_ids.shape[1] - 1
            input_ids = input_ids[:, remove_prefix_length:]
        position_ids = kwargs.get("position_ids")
        if attention_mask is not None and position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            if past_key_values:
                position_ids = position_ids[:, -input_ids.shape[1] :]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs: dict[str, object] = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update(
            {
                "position_ids": position_ids,
                "past_key_values": past_key_values,
                "use_cache": kwargs.get("use_cache"),
                "attention_mask": attention_mask,
                "im_mask": im_mask,
            }
        )
        return model_inputs


class RepetitionPenalty:
    """HF's RepetitionPenaltyLogitsProcessor over [B, V] scores."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] == 0:
            return scores
        score = torch.gather(scores, 1, input_ids)
        score = torch.where(score < 0, score * self.penalty, score / self.penalty)
        return scores.scatter(1, input_ids, score)


class LogitsProcessorList(list):
    """HF's list: each call inspects every processor's signature before calling it."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        for processor in self:
            params = inspect.signature(processor.__call__).parameters
            if len(params) > 2:
                scores = processor(input_ids, scores, **kwargs)
            else:
                scores = processor(input_ids, scores)
        return scores


@dataclass
class ReferenceResult:
    """Generated ids (EOS bookkeeping as HF: pads after a stop), timings."""

    token_ids: list[int]
    prefill_ms: float
    decode_ms: float
    decode_steps: int


@torch.no_grad()
def greedy_generate(
    model: InternLM2ForCausalLM,
    inputs_embeds: torch.Tensor,
    im_mask: torch.Tensor | None,
    *,
    max_new_tokens: int,
    eos_token_id: Sequence[int],
    pad_token_id: int,
    repetition_penalty: float = 1.0,
    on_token: Callable[[int], None] | None = None,
) -> ReferenceResult:
    """HF-4.33-style greedy search from ``inputs_embeds`` [1, L, D] (upstream ``model.chat``)."""
    # inputs_embeds given: HF starts input_ids empty and the attention mask at ones [B, L].
    dev = inputs_embeds.device
    input_ids = torch.ones((1, 0), dtype=torch.long, device=dev)
    model_kwargs: dict[str, object] = {
        "inputs_embeds": inputs_embeds,
        "im_mask": im_mask,
        "use_cache": True,
        "attention_mask": torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=dev),
    }
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(repetition_penalty))
    eos = torch.tensor(list(eos_token_id), device=dev)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.long, device=dev)
    max_length = input_ids.shape[-1] + max_new_tokens
    t0 = time.perf_counter()
    t1 = t0
    steps = 0
    while True:
        model_inputs = model.prepare_inputs_for_generation(input_ids, **model_kwargs)
        outputs = model(**model_inputs)
        next_token_logits = outputs.logits[:, -1, :]
        scores = processors(input_ids, next_token_logits)
        next_tokens = torch.argmax(scores, dim=-1)
        next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        model_kwargs["past_key_values"] = outputs.past_key_values
        mask = model_kwargs["attention_mask"]
        model_kwargs["attention_mask"] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], -1)
        if input_ids.shape[-1] == 1:
            t1 = time.perf_counter()  # prefill done: what follows are decode steps
        else:
            steps += 1
        if on_token is not None:
            on_token(int(next_tokens[0]))
        unfinished = unfinished.mul(
            next_tokens.tile(eos.shape[0], 1).ne(eos.unsqueeze(1)).prod(dim=0)
        )
        if unfinished.max() == 0:
            break
        if input_ids.shape[-1] >= max_length:
            break
    t2 = time.perf_counter()
    return ReferenceResult(
        token_ids=input_ids[0].tolist(),
        prefill_ms=(t1 - t0) * 1000,
        decode_ms=(t2 - t1) * 1000,
        decode_steps=steps,
    )


def from_ixcdoc(model: nn.Module) -> InternLM2ForCausalLM:
    """The reference decoder on the same weight tensors as an ixcdoc model (no copy)."""
    cfg: ModelConfig = model.config
    with torch.device("meta"):
        ref = InternLM2ForCausalLM(cfg)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("model.", "output."))}
    ref.load_state_dict(state, strict=True, assign=True)
    # The RoPE tables are buffers built at init, not weights. Upstream builds one per layer
    # (1 GB for the 7B at 32768 positions); one shared table computes the same and costs the
    # same per call.
    device = next(iter(state.values())).device
    rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, device)
    for layer in ref.model.layers:
        layer.attention.rotary_emb = rope
    return ref.eval()
