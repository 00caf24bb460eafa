"""Packed prefill: prompts admitted together share one forward; a saved system prompt is reused."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine.admission import _packs, _Prompt
from ixcdoc.model.internlm2 import AttentionBatch

from .test_parity import _check, _mixed, _run, chat_reference


@pytest.fixture
def pack_sizes(monkeypatch) -> list[int]:
    """The number of prompts in each packed prefill forward, as the engine runs them."""
    from ixcdoc.engine.runner import ModelRunner

    real = ModelRunner.prefill_packed
    sizes: list[int] = []

    def spy(self, embeds, *a):
        sizes.append(len(embeds))
        return real(self, embeds, *a)

    monkeypatch.setattr(ModelRunner, "prefill_packed", spy)
    return sizes


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
            model(p, m, None, last_only=True, batch=AttentionBatch(row=r))[0, -1]
            for p, m, r in zip(prompts, masks, rows, strict=True)
        ]
        cache_alone = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
        model.reset_caches()
        model.setup_caches(3, 32)
        im = torch.cat([masks[0], torch.zeros(1, 13, dtype=torch.bool)], dim=1)
        segments = [(p.shape[1], r, 0) for p, r in zip(prompts, rows, strict=True)]
        batch = AttentionBatch(segments=segments)
        out = model(torch.cat(prompts, dim=1), im, None, last_only=True, batch=batch)[0]
        cache_packed = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
    model.reset_caches()
    assert out.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(out, torch.stack(alone), rtol=0, atol=1e-5)
    for (ka, va), (kp, vp) in zip(cache_alone, cache_packed, strict=True):
        for p, r in zip(prompts, rows, strict=True):
            n = p.shape[1]
            torch.testing.assert_close(kp[r, :, :n], ka[r, :, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(vp[r, :, :n], va[r, :, :n], rtol=0, atol=1e-5)


def test_prompts_that_continue_a_saved_prefix_equal_full_prefills(fixture_dm) -> None:
    """Two prompts sharing a 7-token prefix: one prefilled whole, the other packed beside a
    fresh prompt as its 5 remaining tokens after the prefix's KV is copied into its row,
    give the logits and the cache of full prefills."""
    model = fixture_dm.model
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randn(1, 7, d, generator=gen)
    full = [torch.cat([prefix, torch.randn(1, n, d, generator=gen)], dim=1) for n in (5, 3)]
    other = torch.randn(1, 4, d, generator=gen)
    tail_mask = torch.tensor([[False, True, True, False, False]])
    with torch.inference_mode():
        model.reset_caches()
        model.setup_caches(3, 32)
        m0 = torch.cat([torch.zeros(1, 7, dtype=torch.bool), tail_mask], dim=1)
        alone = [
            model(full[0], m0, None, last_only=True, batch=AttentionBatch(row=0))[0, -1],
            model(other, None, None, last_only=True, batch=AttentionBatch(row=2))[0, -1],
        ]
        cache_alone = [(c.k.clone(), c.v.clone()) for c in _caches(model)]

        model.reset_caches()
        model.setup_caches(3, 32)
        # the prefix arrives with another prompt
        model(full[1], None, None, batch=AttentionBatch(row=1))
        for c in _caches(model):  # copy positions 0..6 of row 1 into row 0
            c.k[0, :, :7], c.v[0, :, :7] = c.k[1, :, :7], c.v[1, :, :7]
        x = torch.cat([full[0][:, 7:], other], dim=1)
        im = torch.cat([tail_mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
        batch = AttentionBatch(segments=[(5, 0, 7), (4, 2, 0)])
        out = model(x, im, None, last_only=True, batch=batch)[0]
        cache_packed = [(c.k.clone(), c.v.clone()) for c in _caches(model)]
    model.reset_caches()
    torch.testing.assert_close(out, torch.stack(alone), rtol=0, atol=1e-5)
    for (ka, va), (kp, vp) in zip(cache_alone, cache_packed, strict=True):
        for row, n in ((0, 12), (2, 4)):
            torch.testing.assert_close(kp[row, :, :n], ka[row, :, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(vp[row, :, :n], va[row, :, :n], rtol=0, atol=1e-5)


def _caches(model):
    return [layer.attention.kv_cache for layer in model.model.layers]


def test_a_packed_row_refuses_inconsistent_lengths(fixture_dm) -> None:
    model = fixture_dm.model
    x = torch.zeros(1, 5, model.config.hidden_size)
    with pytest.raises(ValueError, match="packed row"):
        model(x, None, None, batch=AttentionBatch(segments=[(3, 0, 0)]))


@pytest.mark.parametrize("prefix", [True, False])
def test_engine_packs_the_prompts_admitted_together(fixture_dm, pack_sizes, prefix):
    sizes = pack_sizes
    reqs = _mixed(7)
    handles, logits, _ = _run(fixture_dm, reqs, n_slots=3, prefix_cache=prefix)
    _check(fixture_dm, reqs, handles, logits)
    # the first round's three pages share the system prompt. With the reuse on, the first
    # prefills it whole and keeps it, then the other two reuse it in one forward; off, all
    # three go in one forward.
    assert sizes[:2] == [1, 2] if prefix else sizes[0] == 3
    assert sum(sizes) == 7


def test_pages_admitted_together_reuse_the_system_prompt_the_first_one_saves(fixture_dm):
    reqs = _mixed(4)
    reqs[3].meta_instruction = "You read invoices."  # its own system prompt: prefilled whole
    eng = fixture_dm.engine(n_slots=4, max_len=1024)
    handles = [eng.submit(r) for r in reqs]
    eng.step()  # one round admits all four
    assert eng.prefix_hits == 2
    assert len(eng.prefixes.saved) == 2
    eng.run_until_idle()
    fixture_dm.model.reset_caches()
    for req, h in zip(reqs, handles, strict=True):
        assert h.result().token_ids == chat_reference(fixture_dm, req).token_ids


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


def test_engine_reuses_each_system_prompt_and_answers_as_chat(fixture_dm) -> None:
    from collections import defaultdict

    reqs = _mixed(8)
    metas = [None, "You read invoices.", ""]  # None: the default system prompt
    for i, r in enumerate(reqs):
        if metas[i % 3] is not None:
            r.meta_instruction = metas[i % 3]
    logits: dict[int, list[torch.Tensor]] = defaultdict(list)
    eng = fixture_dm.engine(
        n_slots=2, max_len=1024, logits_hook=lambda h, row: logits[h.id].append(row.clone())
    )
    handles = [eng.submit(r) for r in reqs]
    eng.run_until_idle()
    fixture_dm.model.reset_caches()
    # rounds of two: the first two prompts (two system prompts) and the first "" one prefill
    # whole; every later prompt finds its own system prompt saved
    assert eng.prefix_hits == 8 - 3
    assert len(eng.prefixes.saved) == 3
    _check(fixture_dm, reqs, handles, logits)


def test_prefix_reuse_off_gives_the_same_tokens(fixture_dm) -> None:
    reqs = _mixed(5)
    on = fixture_dm.engine(n_slots=2, max_len=1024)
    a = [on.submit(r) for r in reqs]
    on.run_until_idle()
    off = fixture_dm.engine(n_slots=2, max_len=1024, prefix_cache=False)
    b = [off.submit(r) for r in reqs]
    off.run_until_idle()
    fixture_dm.model.reset_caches()
    assert on.prefix_hits > 0 and off.prefix_hits == 0
    assert [h.result().token_ids for h in a] == [h.result().token_ids for h in b]


def test_saved_prefixes_stay_within_one_slot_of_positions(fixture_dm) -> None:
    """Hostile system prompts cannot pin memory: a prefix over half a slot is not kept, and
    the kept ones never add up to more than one slot's positions."""
    from ixcdoc.engine import ChatRequest
    from ixcdoc.engine.prompts import prompt_parts

    from .conftest import page

    def req(meta: str) -> ChatRequest:
        return ChatRequest([page(40, 30, 0)], "q", hd=1, max_new_tokens=1, meta_instruction=meta)

    eng = fixture_dm.engine(n_slots=2, max_len=1024)
    metas = [f"Rule {i}. " + "Read every word with care. " * (15 + 8 * i) for i in range(4)]
    metas.append("Read. " * 110)  # a prefix over half a slot
    sizes = [len(prompt_parts(fixture_dm.tokenizer, "q", m, 1)[0].ids) for m in metas]
    assert sizes[-1] > 512 and sum(sizes[:-1]) > 1024  # the bounds are really exercised
    handles = [eng.submit(req(m)) for m in metas + metas]  # each twice
    eng.run_until_idle()
    fixture_dm.model.reset_caches()
    assert all(h.result().token_ids is not None for h in handles)
    kept = list(eng.prefixes.saved)
    assert sum(len(k) for k in kept) <= 1024
    assert all(len(k) <= 512 for k in kept)
    assert len(kept[-1]) == sizes[-2]  # the most recently saved one survives


def test_pages_whose_prefix_cannot_be_kept_are_not_held_back(fixture_dm, pack_sizes):
    """A system prompt over half a slot is never kept, so the pages that share it gain nothing
    from waiting for the first one: they all go in the first pack."""
    sizes = pack_sizes
    reqs = _mixed(3)
    for r in reqs:
        r.meta_instruction = "You read long documents with care. " * 80
        r.max_new_tokens = 2
    handles, logits, _ = _run(fixture_dm, reqs, n_slots=3, prefill_tokens=10_000)
    _check(fixture_dm, reqs, handles, logits)
    prefix = len(fixture_dm.tokenizer.encode(reqs[0].meta_instruction))
    assert prefix > 1024 // 2  # the slots hold 1024 positions
    assert sizes[0] == 3
