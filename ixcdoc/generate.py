"""Prefill + decode with the static KV cache: stopping, sampling, streaming, timings.

Never prints. Works on any model with the ``InternLM2ForCausalLM`` interface
(``setup_caches``, ``embed_tokens``, ``forward(embeds, im_mask, input_pos, last_only=...)``).

Logits processing follows Hugging Face ``generate`` (what upstream ``model.chat`` runs), in the
same order: repetition penalty, then temperature, top-k, top-p, then sample (or argmax when
``do_sample`` is False, where the warpers are skipped as in HF greedy search). The penalty runs
over the *generated* tokens only: upstream passes the prompt as ``inputs_embeds``, so HF's
``input_ids`` starts empty.

Per-token host work is kept to what a step needs: the chosen token stays on the device and feeds
the next step directly (no host-to-device copy), positions are sliced from one tensor allocated
before the loop, the generated-ids tensor exists only when a repetition penalty needs it, and
the only device-to-host sync per token is reading the token id for the stop checks and
callbacks. The one-token step (embedding + decoder on the static KV cache) can be captured with
``torch.compile`` (``compile_decode=True``; off by default, see ``compiled_decode_step``).
"""

from __future__ import annotations

import functools
import numbers
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from ixcdoc.config import MIN_TEMPERATURE, SamplingConfig  # noqa: F401  (re-exported here)
from ixcdoc.errors import UsageError

OnToken = Callable[[int], "bool | None"]
ShouldStop = Callable[[Sequence[int]], "str | None"]
# One decode step: token ids [1, 1] (long) at positions [1] -> fp32 logits [V].
DecodeStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Stop reasons
STOP_TOKEN = "stop_token"
MAX_NEW_TOKENS = "max_new_tokens"
MAX_LENGTH = "max_length"  # the position budget (max_position_embeddings) ran out
CALLBACK = "callback"  # on_token returned False
HOOK = "hook"  # should_stop returned a reason (in ``detail``)

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The random generator of a seeded request (None without a seed): the one rule ``chat``
    and the engine share. A seed torch cannot take is a UsageError."""
    if seed is None:
        return None
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not low <= seed <= high:
        raise UsageError(f"seed must be a whole number from {low} to {high}, got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


@dataclass
class GenerationResult:
    """Generated token ids (stop token excluded), why it stopped, and timings."""

    token_ids: list[int]
    stop_reason: str
    stop_token_id: int | None = None
    prefill_ms: float = 0.0  # prompt forward + first token choice
    decode_ms: float = 0.0  # every later step
    prompt_tokens: int = 0
    decode_steps: int = 0  # forward passes after the prefill
    detail: str | None = None  # the should_stop hook's reason, if it stopped generation

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode throughput (0.0 when nothing was decoded)."""
        return self.decode_steps / (self.decode_ms / 1000) if self.decode_ms > 0 else 0.0

    @property
    def timings(self) -> dict[str, float]:
        return {
            "prefill_ms": self.prefill_ms,
            "decode_ms": self.decode_ms,
            "n_tokens": float(self.n_tokens),
            "prompt_tokens": float(self.prompt_tokens),
        }


def apply_repetition_penalty(
    logits: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """HF semantics: for seen ids, positive logits / penalty, negative logits * penalty. [V]."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    score = logits.gather(0, previous)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(0, previous, score)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits [V] (ties with the k-th kept, as HF), others -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on [V] as HF: drop tokens whose ascending cumprob <= 1 - top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum <= (1 - top_p)
    remove[-1] = False  # always keep the most likely token
    return logits.masked_fill(remove.scatter(0, sorted_idx, remove), float("-inf"))


def choose_token(
    logits: torch.Tensor,
    generated: torch.Tensor | None,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token id from fp32 logits [V] and the generated ids [n] (None: no penalty), on device.

    Returns a one-element long tensor on the logits' device; reading it (``int``) is the
    caller's one sync per token.
    """
    if generated is not None:
        logits = apply_repetition_penalty(logits, generated, cfg.repetition_penalty)
    if not cfg.do_sample:
        return logits.argmax()
    logits = logits / cfg.temperature
    logits = top_k_filter(logits, cfg.top_k)
    logits = top_p_filter(logits, cfg.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


def _decode_one(model: torch.nn.Module, ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """ids [1, 1] at positions [1] through the static KV cache -> fp32 logits [V]."""
    return model(model.embed_tokens(ids), None, input_pos)[0, -1]


def decode_step(model: torch.nn.Module) -> DecodeStep:
    """The eager one-token step of ``model``: ids [1, 1], positions [1] -> logits [V]."""
    return functools.partial(_decode_one, model)


@functools.cache
def _compiled_decode_one(backend: str, mode: str | None) -> Callable[..., torch.Tensor]:
    # One wrapper per (backend, mode) for the whole process: dynamo keeps its graphs on
    # ``_decode_one``'s code, guarded on the model and its cache shapes, so later generate()
    # calls reuse them instead of compiling again.
    return torch.compile(_decode_one, backend=backend, mode=mode, fullgraph=True, dynamic=False)


def compiled_decode_step(
    model: torch.nn.Module, *, backend: str = "inductor", mode: str | None = "auto"
) -> DecodeStep:
    """``decode_step(model)`` captured by ``torch.compile(fullgraph=True, dynamic=False)``.

    ``mode="auto"``: ``"reduce-overhead"`` (CUDA graphs) when the model is on CUDA, the default
    inductor mode on CPU. The step has static shapes (the cache length is fixed, positions are
    a tensor), so it compiles once per cache size and never per token. The first call pays the
    compilation: tens of seconds on a small CPU, so this is opt-in.
    """
    if mode == "auto":
        param = next(model.parameters(), None)
        on_cuda = param is not None and param.device.type == "cuda"
        mode = "reduce-overhead" if on_cuda and backend == "inductor" else None
    fn = _compiled_decode_one(backend, mode)
    if mode != "reduce-overhead":
        return functools.partial(fn, model)

    def step(ids: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        # The logits of the previous replay are consumed (argmax) before this one starts.
        torch.compiler.cudagraph_mark_step_begin()
        return fn(model, ids, input_pos)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_length(needed: int) -> int:
    # Round up so nearby prompt lengths share one cache (and one captured decode graph).
    return -(-needed // 256) * 256


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    im_mask: torch.Tensor | None,
    *,
    stop_ids: Collection[int] = (),
    config: SamplingConfig | None = None,
    on_token: OnToken | None = None,
    should_stop: ShouldStop | None = None,
    generator: torch.Generator | None = None,
    compile_decode: bool = False,
    decode: DecodeStep | None = None,
) -> GenerationResult:
    """Generate from a spliced prompt: inputs_embeds [1, L, D], im_mask [1, L] bool.

    Stops at the first id in ``stop_ids`` (not included in the result), after
    ``max_new_tokens``, when ``on_token(id)`` returns False (that token is kept), or when
    ``should_stop(ids)`` returns a reason string (kept in ``detail``). ``compile_decode=True``
    runs the decode steps through ``compiled_decode_step(model)`` (off by default: compiling
    takes tens of seconds on a CPU); ``decode`` passes any other step, e.g. one compiled with
    another backend. The prefill always runs eagerly.
    """
    if compile_decode and decode is not None:
        raise ValueError("pass either compile_decode=True or a decode step, not both")
    cfg = config or SamplingConfig()
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"expected inputs_embeds [1, L, D], got {tuple(inputs_embeds.shape)}")
    device = inputs_embeds.device
    prompt_len = inputs_embeds.shape[1]
    max_pos = model.config.max_position_embeddings
    budget = min(cfg.max_new_tokens, max(max_pos - prompt_len, 0))
    stops = {int(s) for s in stop_ids}
    result = GenerationResult([], MAX_NEW_TOKENS, prompt_tokens=prompt_len)
    if budget == 0:
        result.stop_reason = MAX_NEW_TOKENS if cfg.max_new_tokens == 0 else MAX_LENGTH
        return result

    model.setup_caches(1, min(_cache_length(prompt_len + budget), max_pos))
    if decode is None:
        decode = compiled_decode_step(model) if compile_decode else decode_step(model)
    # Allocated once: step i reads positions[i : i + 1] (a view, no per-step host-to-device
    # copy); the generated ids are only kept on the device when the penalty reads them.
    positions = torch.arange(prompt_len, prompt_len + budget, device=device)  # [budget]
    generated = None
    if cfg.repetition_penalty != 1.0:
        generated = torch.empty(budget, dtype=torch.long, device=device)

    _sync(device)
    t0 = time.perf_counter()
    logits = model(inputs_embeds, im_mask, None, last_only=True)[0, -1]  # [V]
    history = None if generated is None else generated[:0]
    tok_t = choose_token(logits, history, cfg, generator)
    _sync(device)
    t1 = time.perf_counter()
    result.prefill_ms = (t1 - t0) * 1000

    for i in range(budget):
        tok = int(tok_t)  # the one device-to-host sync per token
        if tok in stops:
            result.stop_reason, result.stop_token_id = STOP_TOKEN, tok
            break
        result.token_ids.append(tok)
        if generated is not None:
            generated[i] = tok_t.view(())
        if on_token is not None and on_token(tok) is False:
            result.stop_reason = CALLBACK
            break
        if should_stop is not None and (why := should_stop(result.token_ids)):
            result.stop_reason, result.detail = HOOK, why
            break
        if i == budget - 1:
            result.stop_reason = MAX_NEW_TOKENS if budget == cfg.max_new_tokens else MAX_LENGTH
            break
        logits = decode(tok_t.view(1, 1), positions[i : i + 1])  # [V]
        history = None if generated is None else generated[: i + 1]
        tok_t = choose_token(logits, history, cfg, generator)
        result.decode_steps += 1

    _sync(device)
    result.decode_ms = (time.perf_counter() - t1) * 1000
    return result
