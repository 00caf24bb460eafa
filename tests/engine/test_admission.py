"""Admission: the prompts admitted together are packed into few prefill forwards, a system
prompt several of them share is prefilled once by the first, and a failing pack falls back to
one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine.admission import _packs, _Prompt

from .conftest import run_engine
from .test_parity import _check, _mixed, chat_reference


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


@pytest.mark.parametrize("prefix", [True, False])
def test_engine_packs_the_prompts_admitted_together(fixture_dm, pack_sizes, prefix):
    sizes = pack_sizes
    reqs = _mixed(7)
    handles, logits, _, _ = run_engine(fixture_dm, reqs, n_slots=3, prefix_cache=prefix)
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
    handles, logits, _, _ = run_engine(fixture_dm, reqs, n_slots=3)
    assert failed  # the packed forward was tried and failed
    _check(fixture_dm, reqs, handles, logits)  # nobody lost anything: each prompt went alone


def test_pages_whose_prefix_cannot_be_kept_are_not_held_back(fixture_dm, pack_sizes):
    """A system prompt over half a slot is never kept, so the pages that share it gain nothing
    from waiting for the first one: they all go in the first pack."""
    sizes = pack_sizes
    reqs = _mixed(3)
    for r in reqs:
        r.meta_instruction = "You read long documents with care. " * 80
        r.max_new_tokens = 2
    handles, logits, _, _ = run_engine(fixture_dm, reqs, n_slots=3, prefill_tokens=10_000)
    _check(fixture_dm, reqs, handles, logits)
    prefix = len(fixture_dm.tokenizer.encode(reqs[0].meta_instruction))
    assert prefix > 1024 // 2  # the slots hold 1024 positions
    assert sizes[0] == 3
