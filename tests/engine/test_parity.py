"""The engine gives every request exactly what chat gives it alone (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine import ChatRequest
from ixcdoc.runtime import DocModel

from .conftest import chat_reference, page, run_engine

ATOL = 1e-4


def _mixed(n: int) -> list[ChatRequest]:
    """Mixed tiers, page shapes, query lengths and answer lengths (so stops differ)."""
    shapes = [(40, 30), (300, 900), (120, 60), (64, 200), (90, 90)]
    queries = ["Hi", "Transcribe the page.", "What is the total amount due on this invoice?"]
    return [
        ChatRequest(
            [page(*shapes[i % len(shapes)], seed=i)],
            queries[i % len(queries)],
            hd=(1, 4, 9, 2)[i % 4],
            max_new_tokens=(3, 9, 6, 12, 1)[i % 5],
        )
        for i in range(n)
    ]


def _check(dm: DocModel, reqs, handles, logits) -> None:
    for req, h in zip(reqs, handles, strict=True):
        ref = chat_reference(dm, req)
        ans = h.result()
        assert ans.token_ids == ref.token_ids
        assert ans.stop_reason == ref.stop_reason
        got = logits[h.id]
        assert len(got) == len(ref.logits)
        for a, b in zip(got, ref.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("which", ["fixture_dm", "tiny_dm"])
def test_mixed_batch_equals_chat(request, which) -> None:
    dm = request.getfixturevalue(which)
    reqs = _mixed(6)
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=6)
    _check(dm, reqs, handles, logits)
    stops = {len(h.result().token_ids) for h in handles}
    assert len(stops) > 2  # the sequences really left the batch at different steps


@pytest.mark.parametrize("which", ["fixture_dm", "tiny_dm"])
def test_the_cuda_attention_layout_equals_chat_on_the_cpu(request, which, monkeypatch) -> None:
    """The masked attention as CUDA runs it (SDPA with a 4-D mask, for the per-row decode step
    and for prompts that continue a saved prefix), run here on the CPU: CI has no GPU."""
    from ixcdoc.engine import runner

    def no_bmm(*a, **k):
        raise AssertionError("the CPU layout ran")

    monkeypatch.setattr(runner, "masked_bmm", lambda device: False)
    monkeypatch.setattr(torch, "baddbmm", no_bmm)
    dm = request.getfixturevalue(which)
    reqs = _mixed(7)
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=3, submit_later=2)
    _check(dm, reqs, handles, logits)


def test_a_4bit_model_batches_as_it_chats() -> None:
    """NF4 decoder weights (bitsandbytes, which runs on the CPU): the batched rows go through
    the same 4-bit matmuls as chat's single row, within 1e-4 at every step."""
    pytest.importorskip("bitsandbytes")
    from ixcdoc.runtime import load

    from ..model.upstream import TINY_CKPT

    dm = load(TINY_CKPT, device="cpu", quant="4bit")
    assert dm.precision == "4bit"
    reqs = _mixed(7)
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=3, submit_later=2)
    _check(dm, reqs, handles, logits)


def test_a_bf16_model_batches_as_it_chats_within_bf16_rounding() -> None:
    """bf16, the GPU default, here on the CPU: the engine runs in it end to end (masks, cache,
    beams), and every step's logits point where chat's do (cosine > 0.99) for as long as the
    two answers agree. Exact parity is float32's (above); bf16 rounds differently per batch
    shape, so a near tie may flip a token."""
    from ixcdoc.runtime import load

    from ..model.upstream import TINY_CKPT

    dm = load(TINY_CKPT, device="cpu", dtype="bfloat16")
    reqs = _mixed(6)
    reqs[1].num_beams = 2
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=4, submit_later=2)
    compared = 0
    for req, h in zip(reqs, handles, strict=True):
        ans = h.result()
        if req.num_beams > 1:
            assert 0 < len(ans.token_ids) <= req.max_new_tokens
            continue
        ref = chat_reference(dm, req)
        for i, (a, b) in enumerate(zip(logits[h.id], ref.logits, strict=False)):
            cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0)
            assert cos > 0.99
            compared += 1
            if i >= len(ans.token_ids) or ans.token_ids[: i + 1] != ref.token_ids[: i + 1]:
                break
    assert compared >= len(reqs) - 1  # at least the first step of every greedy page


def test_more_requests_than_slots_queue(fixture_dm) -> None:
    reqs = _mixed(7)
    handles, logits, _, _ = run_engine(fixture_dm, reqs, n_slots=2)
    _check(fixture_dm, reqs, handles, logits)


def test_admission_mid_flight(tiny_dm) -> None:
    reqs = _mixed(5)
    for r in reqs[:2]:
        r.max_new_tokens = 12  # still decoding when the others arrive
    handles, logits, running, _ = run_engine(
        tiny_dm, reqs, n_slots=4, submit_later=3, after_steps=3
    )
    assert running == 2
    _check(tiny_dm, reqs, handles, logits)


def test_chat_batch_order_and_chat_equivalence(fixture_dm) -> None:
    reqs = _mixed(4)
    answers = fixture_dm.chat_batch(reqs, max_batch=3)
    for req, ans in zip(reqs, answers, strict=True):
        alone = fixture_dm.chat(req.images, req.query, hd=req.hd, max_new_tokens=req.max_new_tokens)
        assert ans.token_ids == alone.token_ids
        assert ans.text == alone.text
        assert ans.stop_reason == alone.stop_reason
        assert (ans.hd, ans.grids, ans.n_image_tokens, ans.prompt_tokens) == (
            alone.hd,
            alone.grids,
            alone.n_image_tokens,
            alone.prompt_tokens,
        )
        one = fixture_dm.chat_batch([req])[0]
        assert one.token_ids == alone.token_ids and one.stop_reason == alone.stop_reason


def test_seeded_sampling_and_penalty_match_chat(tiny_dm) -> None:
    reqs = _mixed(4)
    reqs[0].do_sample, reqs[0].seed, reqs[0].temperature = True, 11, 1.5
    reqs[1].do_sample, reqs[1].seed, reqs[1].top_k = True, 5, 0
    reqs[2].repetition_penalty = 1.3
    reqs[3].do_sample, reqs[3].seed, reqs[3].repetition_penalty = True, 3, 1.2
    for r in reqs:
        r.max_new_tokens = 10
    handles, logits, _, _ = run_engine(tiny_dm, reqs, n_slots=4)
    _check(tiny_dm, reqs, handles, logits)
    assert handles[0].result().token_ids != handles[1].result().token_ids


def test_stop_token_callback_and_hook_stops(fixture_dm) -> None:
    """Each sequence keeps its own stop rules: a stop id, on_token False, should_stop."""
    reqs = _mixed(3)
    for r in reqs:
        r.max_new_tokens = 10
    probe = chat_reference(fixture_dm, reqs[0])
    stop_tok = probe.token_ids[3]
    eng = fixture_dm.engine(n_slots=3, max_len=1024)
    fixture_dm.tokenizer.stop_ids, saved = (
        (*fixture_dm.tokenizer.stop_ids, stop_tok),
        (fixture_dm.tokenizer.stop_ids),
    )
    try:
        eng = fixture_dm.engine(n_slots=3, max_len=1024)
        h0 = eng.submit(reqs[0])
        h1 = eng.submit(reqs[1], on_token=lambda t, n=[0]: (n.append(t), len(n) < 4)[1])
        h2 = eng.submit(reqs[2], should_stop=lambda ids: "two" if len(ids) == 2 else None)
        eng.run_until_idle()
        ref0 = chat_reference(fixture_dm, reqs[0])
    finally:
        fixture_dm.tokenizer.stop_ids = saved
        fixture_dm.model.reset_caches()
    a0, a1, a2 = h0.result(), h1.result(), h2.result()
    assert a0.stop_reason == "stop_token" and a0.token_ids == ref0.token_ids
    assert a0.token_ids == probe.token_ids[: probe.token_ids.index(stop_tok)]
    assert a1.stop_reason == "callback" and len(a1.token_ids) == 3
    assert a2.stop_reason == "hook" and a2.stop_detail == "two" and len(a2.token_ids) == 2
