"""The prefix cache: each system prompt is kept after its first prefill and copied into later
slots (the answers unchanged), within one slot's positions in all."""

from __future__ import annotations

import torch

from .test_parity import _check, _mixed


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
