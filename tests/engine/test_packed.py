"""Packed prefill: prompts admitted together share one forward, and ride inside decode steps."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine.engine import _packs, _Prompt

from .test_parity import _check, _mixed, _run


def _prompt(n: int) -> _Prompt:
    return _Prompt(None, torch.zeros(1, n, 2), None)  # type: ignore[arg-type]


def test_packs_keep_each_group_within_the_token_budget() -> None:
    sizes = [
        [p.embeds.shape[1] for p in pack]
        for pack in _packs([_prompt(n) for n in (3, 4, 2, 9, 1, 1)], budget=8)
    ]
    assert sizes == [[3, 4], [2], [9], [1, 1]]  # a prompt over the budget goes alone
    assert _packs([], 8) == []
    assert [len(p) for p in _packs([_prompt(5), _prompt(5)], budget=1)] == [1, 1]


def test_packed_prompts_equal_separate_prefills(fixture_dm) -> None:
    """Three fresh prompts (image tokens among them) in one packed row give each the logits,
    and leave each the cache, that it gets from a prefill of its own."""
    model = fixture_dm.model
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randn(1, n, d, generator=gen) for n in (6, 4, 9)]
    masks = [torch.tensor([[False, True, True, True, False, False]]), None, None]
    rows = [2, 0, 1]
    with torch.inference_mode():
        model.reset_caches()
        model.setup_caches(3, 32)
        alone = [
            model(p, m, None, last_only=True, cache_row=r)[0, -1]
            for p, m, r in zip(prompts, masks, rows, strict=True)
        ]
        cache_alone = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
        model.reset_caches()
        model.setup_caches(3, 32)
        im = torch.cat([masks[0], torch.zeros(1, 13, dtype=torch.bool)], dim=1)
        segments = [(p.shape[1], r) for p, r in zip(prompts, rows, strict=True)]
        out = model(torch.cat(prompts, dim=1), im, None, last_only=True, segments=segments)[0]
        cache_packed = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
    model.reset_caches()
    assert out.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(out, torch.stack(alone), rtol=0, atol=1e-5)
    for (ka, va), (kp, vp) in zip(cache_alone, cache_packed, strict=True):
        for p, r in zip(prompts, rows, strict=True):
            n = p.shape[1]
            torch.testing.assert_close(kp[r, :, :n], ka[r, :, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(vp[r, :, :n], va[r, :, :n], rtol=0, atol=1e-5)


def _caches(model):
    return [layer.attention.kv_cache for layer in model.model.layers]


def test_a_packed_row_refuses_inconsistent_lengths(fixture_dm) -> None:
    model = fixture_dm.model
    x = torch.zeros(1, 5, model.config.hidden_size)
    with pytest.raises(ValueError, match="packed row"):
        model(x, None, None, segments=[(3, 0)])


def test_engine_packs_the_prompts_admitted_together(fixture_dm, monkeypatch):
    from ixcdoc.engine.runner import ModelRunner

    real = ModelRunner.prefill_packed
    sizes: list[int] = []

    def spy(self, embeds, *a):
        sizes.append(len(embeds))
        return real(self, embeds, *a)

    monkeypatch.setattr(ModelRunner, "prefill_packed", spy)
    reqs = _mixed(7)
    handles, logits, _ = _run(fixture_dm, reqs, n_slots=3)
    _check(fixture_dm, reqs, handles, logits)
    assert sizes[0] == 3  # the first round: three prompts, one forward
    assert sum(sizes) == 7


def test_a_failing_packed_prefill_falls_back_to_one_prompt_at_a_time(fixture_dm, monkeypatch):
    from ixcdoc.engine.runner import ModelRunner

    real = ModelRunner.prefill_packed
    failed: list[int] = []

    def oom_when_packed(self, embeds, *a):
        if len(embeds) > 1:
            failed.append(len(embeds))
            raise torch.cuda.OutOfMemoryError("injected")
        return real(self, embeds, *a)

    monkeypatch.setattr(ModelRunner, "prefill_packed", oom_when_packed)
    reqs = _mixed(6)
    handles, logits, _ = _run(fixture_dm, reqs, n_slots=3)
    assert failed  # the packed forward was tried and failed
    _check(fixture_dm, reqs, handles, logits)  # nobody lost anything: each prompt went alone
