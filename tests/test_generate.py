"""Generation loop: stopping, streaming callback, sampling semantics, parity with upstream."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.config import ModelConfig
from ixcdoc.generate import (
    SamplingConfig,
    apply_repetition_penalty,
    choose_token,
    generate,
    top_k_filter,
    top_p_filter,
)
from ixcdoc.model.weights import load_model

from .model.upstream import TINY_CKPT, chat_cases, chat_parts


def _pick(logits: torch.Tensor, history: torch.Tensor, cfg: SamplingConfig, gen) -> int:
    return int(choose_token(logits, history, cfg, gen))


class ScriptedLM(torch.nn.Module):
    """Emits a fixed token sequence (one-hot logits); records the positions it was called at."""

    def __init__(self, script: list[int], vocab: int = 20) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, hidden_size=4, max_position_embeddings=64)
        self.script = script
        self.calls: list[tuple[int, int | None]] = []  # (seq len, first input_pos)
        self.cache_len = 0

    def setup_caches(self, max_batch_size: int, max_seq_length: int) -> None:
        self.cache_len = max_seq_length

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*ids.shape, 4)

    def forward(self, x, im_mask=None, input_pos=None, *, last_only=False):
        self.calls.append((x.shape[1], None if input_pos is None else int(input_pos[0])))
        step = len(self.calls) - 1
        tok = self.script[step] if step < len(self.script) else 0
        logits = torch.full((1, 1, self.config.vocab_size), -5.0)
        logits[0, 0, tok] = 5.0
        return logits


def _embeds(n: int = 3) -> torch.Tensor:
    return torch.zeros(1, n, 4)


def test_stops_on_either_stop_id_and_excludes_it() -> None:
    for script, stop_at in (([5, 6, 2, 7], 2), ([5, 6, 7, 9, 8], 9)):
        res = generate(ScriptedLM(script), _embeds(), None, stop_ids=(2, 9))
        assert res.stop_reason == "stop_token"
        assert res.stop_token_id == stop_at
        assert res.token_ids == script[: script.index(stop_at)]


def test_max_new_tokens_and_positions() -> None:
    lm = ScriptedLM([5, 6, 7, 8, 9, 10])
    res = generate(lm, _embeds(3), None, config=SamplingConfig(max_new_tokens=4))
    assert res.token_ids == [5, 6, 7, 8] and res.stop_reason == "max_new_tokens"
    # prefill (fresh, input_pos None), then one token per step at positions 3, 4, 5
    assert lm.calls == [(3, None), (1, 3), (1, 4), (1, 5)]
    assert res.n_tokens == 4 and res.decode_steps == 3
    assert res.prefill_ms >= 0 and res.decode_ms >= 0
    assert set(res.timings) >= {"prefill_ms", "decode_ms", "n_tokens"}


def test_on_token_streams_and_false_stops() -> None:
    seen: list[int] = []

    def on_token(t: int) -> bool | None:
        seen.append(t)
        return False if len(seen) == 3 else None

    res = generate(ScriptedLM([4, 5, 6, 7, 8]), _embeds(), None, on_token=on_token)
    assert seen == [4, 5, 6] and res.token_ids == [4, 5, 6]
    assert res.stop_reason == "callback"


def test_should_stop_hook_reason_is_kept() -> None:
    def guard(ids):
        return "repeated" if ids[-2:] == [7, 7] else None

    res = generate(ScriptedLM([1, 7, 7, 7, 7]), _embeds(), None, should_stop=guard)
    assert res.token_ids == [1, 7, 7]
    assert (res.stop_reason, res.detail) == ("hook", "repeated")


def test_zero_budget_and_position_limit() -> None:
    res = generate(ScriptedLM([1]), _embeds(), None, config=SamplingConfig(max_new_tokens=0))
    assert res.token_ids == [] and res.stop_reason == "max_new_tokens"
    lm = ScriptedLM([1, 2, 3, 4])
    res = generate(lm, _embeds(62), None, config=SamplingConfig(max_new_tokens=10))
    assert res.token_ids == [1, 2] and res.stop_reason == "max_length"  # 64 positions
    assert lm.cache_len == 64


def test_repetition_penalty_hf_semantics() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, -1.0, 0.5]
    assert apply_repetition_penalty(logits, torch.tensor([0]), 1.0) is logits


def test_filters_match_transformers() -> None:
    tf = pytest.importorskip("transformers.generation.logits_process")
    torch.manual_seed(0)
    logits = torch.randn(1, 200) * 3
    prev = torch.tensor([[3, 17, 17, 150]])
    ref = tf.RepetitionPenaltyLogitsProcessor(1.3)(prev, logits.clone())
    ours = apply_repetition_penalty(logits[0], prev[0], 1.3)
    torch.testing.assert_close(ours, ref[0])
    ref = tf.TopKLogitsWarper(50)(prev, logits.clone())
    assert torch.equal(top_k_filter(logits[0], 50).isinf(), ref[0].isinf())
    for p in (0.8, 0.3, 0.999):
        ref = tf.TopPLogitsWarper(p)(prev, logits.clone())
        assert torch.equal(top_p_filter(logits[0], p).isinf(), ref[0].isinf())


def test_top_p_keeps_at_least_the_best_token() -> None:
    logits = torch.tensor([10.0, 0.0, 0.0])
    out = top_p_filter(logits, 0.01)
    assert out[0] == 10.0 and out[1:].isinf().all()


def test_sampling_is_reproducible_and_restricted() -> None:
    logits = torch.tensor([3.0, 2.9, 2.8, -10.0, -10.0])
    cfg = SamplingConfig(do_sample=True, top_k=2, top_p=1.0, temperature=0.7)
    draws = {
        _pick(logits, torch.empty(0, dtype=torch.long), cfg, torch.Generator().manual_seed(s))
        for s in range(40)
    }
    assert draws == {0, 1}  # top_k=2 keeps ids 0 and 1 only
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert _pick(logits, torch.empty(0, dtype=torch.long), cfg, g1) == _pick(
        logits, torch.empty(0, dtype=torch.long), cfg, g2
    )


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)
    with pytest.raises(ValueError):
        SamplingConfig(do_sample=True, temperature=0)


def test_a_temperature_that_would_overflow_the_logits_is_refused() -> None:
    """1e-39 turns logits into inf and NaN probabilities (a RuntimeError deep in sampling);
    it is refused up front, while the smallest temperature allowed still samples."""
    from ixcdoc.generate import MIN_TEMPERATURE

    for t in (1e-39, MIN_TEMPERATURE / 2):
        with pytest.raises(ValueError, match=f"at least {MIN_TEMPERATURE}"):
            SamplingConfig(do_sample=True, temperature=t)
    SamplingConfig(do_sample=False, temperature=1e-39)  # greedy ignores it
    logits = torch.tensor([30.0, 29.0, -30.0])
    cfg = SamplingConfig(do_sample=True, temperature=MIN_TEMPERATURE, top_k=0, top_p=1.0)
    none = torch.empty(0, dtype=torch.long)
    assert _pick(logits, none, cfg, torch.Generator().manual_seed(0)) == 0


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_CKPT)


@pytest.mark.parametrize("case", chat_cases(), ids=lambda c: c["prompt_id"])
def test_greedy_matches_upstream(tiny, case) -> None:
    embeds, im_mask = tiny.splice(chat_parts(case))
    res = generate(tiny, embeds, im_mask, config=SamplingConfig(max_new_tokens=8))
    assert res.token_ids == case["greedy_tokens"]


def test_real_model_stops_on_either_stop_id(tiny) -> None:
    case = chat_cases()[0]
    greedy = case["greedy_tokens"]  # [590, 8, 281, 833, ...]
    embeds, im_mask = tiny.splice(chat_parts(case))
    res = generate(tiny, embeds, im_mask, stop_ids=(281, 999), config=SamplingConfig(8))
    assert res.token_ids == greedy[:2] and res.stop_token_id == 281
    res = generate(tiny, embeds, im_mask, stop_ids=(998, 833), config=SamplingConfig(8))
    assert res.token_ids == greedy[:3] and res.stop_token_id == 833


def test_repetition_penalty_changes_greedy_loop(tiny) -> None:
    case = chat_cases()[0]  # greedy ends in a loop: ... 536, 752, 536, 752
    embeds, im_mask = tiny.splice(chat_parts(case))
    res = generate(
        tiny, embeds, im_mask, config=SamplingConfig(max_new_tokens=8, repetition_penalty=50.0)
    )
    assert len(set(res.token_ids)) == len(res.token_ids)  # no token twice


def test_top_p_boundary_is_inclusive_like_hf() -> None:
    # probs 0.5, 0.25, 0.25: ascending cumsum 0.25, 0.5, 1.0; with top_p 0.5 HF drops every
    # token whose cumsum <= 0.5, so only the 0.5 token survives
    logits = torch.tensor([2.0, 1.0, 1.0]).log()
    assert logits.softmax(-1).tolist() == [0.5, 0.25, 0.25]
    out = top_p_filter(logits, 0.5)
    assert out.isinf().tolist() == [False, True, True]


class FixedLogitsLM(ScriptedLM):
    """Returns the same logits at every step, whatever came before: only the sampler decides."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__([], vocab=len(logits))
        self.logits = torch.tensor(logits)

    def forward(self, x, im_mask=None, input_pos=None, *, last_only=False):
        self.calls.append((x.shape[1], None if input_pos is None else int(input_pos[0])))
        return self.logits.view(1, 1, -1).clone()


def test_repetition_penalty_sees_every_generated_token() -> None:
    # Logits [3.0, 2.9, 2.8, 0.0], penalty 2.0 (positive logits of seen ids are halved):
    #   step 1, seen {}:        [3.0, 2.9, 2.8, 0]   -> 0
    #   step 2, seen {0}:       [1.5, 2.9, 2.8, 0]   -> 1
    #   step 3, seen {0,1}:     [1.5, 1.45, 2.8, 0]  -> 2
    #   step 4, seen {0,1,2}:   [1.5, 1.45, 1.4, 0]  -> 0
    #   step 5, seen {0,1,2}:   the same (a seen id is penalised once, not per occurrence) -> 0
    # A history one token short would repeat 0 at step 2: 0, 0, 1, ...
    lm = FixedLogitsLM([3.0, 2.9, 2.8, 0.0])
    res = generate(lm, _embeds(), None, config=SamplingConfig(5, repetition_penalty=2.0))
    assert res.token_ids == [0, 1, 2, 0, 0]
    res = generate(lm, _embeds(), None, config=SamplingConfig(5))  # no penalty: plain argmax
    assert res.token_ids == [0, 0, 0, 0, 0]
