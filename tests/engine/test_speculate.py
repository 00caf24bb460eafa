"""Speculative decoding gives exactly greedy decoding (float32, CPU): every case of the engine
parity suite, with drafts that are perfect, all wrong, right then wrong, reordered, empty."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine import ChatRequest
from ixcdoc.engine.draft import Proposer
from ixcdoc.engine.speculate import BACKOFF, FLOOR, K_CHOICES, SeqSpec, StepCost
from ixcdoc.errors import UsageError
from ixcdoc.runtime import DocModel

from .conftest import Reference, chat_reference, page, run_engine

ATOL = 1e-4
KINDS = ["perfect", "wrong", "right_then_wrong", "reordered", "empty"]


def _mixed(n: int) -> list[ChatRequest]:
    """Mixed tiers, page shapes, queries and answer lengths long enough to speculate."""
    shapes = [(40, 30), (300, 900), (120, 60), (64, 200), (90, 90)]
    queries = ["Hi", "Transcribe the page.", "What is the total amount due on this invoice?"]
    return [
        ChatRequest(
            [page(*shapes[i % len(shapes)], seed=i)],
            queries[i % len(queries)],
            hd=(1, 4, 9, 2)[i % 4],
            max_new_tokens=(14, 40, 25, 33, 1, 20, 30)[i % 7],
        )
        for i in range(n)
    ]


def _draft(dm: DocModel, ref: list[int], kind: str) -> str:
    """The draft text of ``kind`` built from the greedy answer ``ref`` (token ids)."""
    vocab = dm.config.vocab_size
    tok = dm.tokenizer
    if kind == "perfect":
        ids = ref
    elif kind == "wrong":
        ids = [(t + 37) % vocab for t in ref]
    elif kind == "right_then_wrong":
        half = len(ref) // 2
        ids = ref[:half] + [(t + 37) % vocab for t in ref[half:]]
    elif kind == "reordered":  # the right text, its pieces in the opposite order
        ids = [t for i in range(0, len(ref), 5)[::-1] for t in ref[i : i + 5]]
    else:
        ids = []
    return tok.decode(ids, skip_special=True)


_refs: dict[tuple[int, int], Reference] = {}


def _reference(dm: DocModel, i: int, req: ChatRequest) -> Reference:
    """chat's greedy answer and logits for request i (the requests are deterministic)."""
    key = (id(dm), i, req.max_new_tokens)
    if key not in _refs:
        _refs[key] = chat_reference(dm, req)
    return _refs[key]


def _with_drafts(dm: DocModel, reqs: list[ChatRequest], kind: str) -> list[Reference]:
    refs = [_reference(dm, i, r) for i, r in enumerate(reqs)]
    for r, ref in zip(reqs, refs, strict=True):
        r.draft = _draft(dm, ref.token_ids, kind)
    return refs


def _check(refs, handles, logits) -> int:
    """Tokens, stop reason and every accepted position's logits equal chat's; returns the
    tokens accepted from drafts in all."""
    accepted = 0
    for ref, h in zip(refs, handles, strict=True):
        ans = h.result()
        assert ans.token_ids == ref.token_ids
        assert ans.stop_reason == ref.stop_reason
        got = logits[h.id]
        assert len(got) == len(ref.logits)
        for a, b in zip(got, ref.logits, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
        accepted += ans.accepted_tokens
    return accepted


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["fixture_dm", "tiny_dm"])
def test_mixed_batch_with_drafts_equals_chat(request, which: str, kind: str) -> None:
    dm = request.getfixturevalue(which)
    reqs = _mixed(6)
    refs = _with_drafts(dm, reqs, kind)
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=6)
    accepted = _check(refs, handles, logits)
    if kind == "perfect":
        # it really speculated (the tiny tokenizer does not give back the same ids for the
        # decoded text of random answers, so a perfect text draft is far from all accepted)
        assert accepted > 0
    assert len({len(r.token_ids) for r in refs}) > 2  # they left at different steps
    for r, h in zip(reqs, handles, strict=True):
        assert h.result().draft_tokens == len(dm.tokenizer.encode(r.draft, bos=False))


def test_the_cuda_attention_layout_with_drafts_equals_chat_on_the_cpu(tiny_dm, monkeypatch) -> None:
    """A verify step's attention as CUDA runs it (SDPA with a 4-D mask over k + 1 query
    positions per row), here on the CPU: CI has no GPU."""
    from ixcdoc.engine import runner

    def no_bmm(*a, **k):
        raise AssertionError("the CPU layout ran")

    monkeypatch.setattr(runner, "masked_bmm", lambda device: False)
    monkeypatch.setattr(torch, "baddbmm", no_bmm)
    reqs = _mixed(5)
    refs = _with_drafts(tiny_dm, reqs, "right_then_wrong")
    handles, logits, _, _ = run_engine(tiny_dm, reqs, n_slots=3, submit_later=2)
    assert _check(refs, handles, logits) > 0


@pytest.mark.parametrize("kind", ["perfect", "right_then_wrong", "reordered"])
def test_queueing_with_drafts_equals_chat(fixture_dm, kind: str) -> None:
    reqs = _mixed(7)
    refs = _with_drafts(fixture_dm, reqs, kind)
    handles, logits, _, _ = run_engine(fixture_dm, reqs, n_slots=2)
    _check(refs, handles, logits)


@pytest.mark.parametrize("kind", ["perfect", "wrong"])
def test_admission_mid_flight_with_drafts_equals_chat(tiny_dm, kind: str) -> None:
    reqs = _mixed(5)
    refs = _with_drafts(tiny_dm, reqs, kind)
    handles, logits, running, _ = run_engine(
        tiny_dm, reqs, n_slots=4, submit_later=3, after_steps=3
    )
    assert running == 2
    _check(refs, handles, logits)


def test_stops_inside_an_accepted_draft_are_greedy_stops(fixture_dm) -> None:
    """A stop id, on_token returning False and should_stop, each landing in the middle of a
    draft the model would accept: the answer ends exactly where greedy decoding ends it."""
    reqs = _mixed(3)
    for r in reqs:
        r.max_new_tokens = 30
    refs = _with_drafts(fixture_dm, reqs, "perfect")
    stop_tok = refs[0].token_ids[9]
    saved = fixture_dm.tokenizer.stop_ids
    fixture_dm.tokenizer.stop_ids = (*saved, stop_tok)
    streamed: list[int] = []
    try:
        eng = fixture_dm.engine(n_slots=3, max_len=1024)
        h0 = eng.submit(reqs[0])
        h1 = eng.submit(reqs[1], on_token=lambda t: (streamed.append(t), len(streamed) < 7)[1])
        h2 = eng.submit(reqs[2], should_stop=lambda ids: "eleven" if len(ids) == 11 else None)
        eng.run_until_idle()
        ref0 = chat_reference(fixture_dm, reqs[0])
    finally:
        fixture_dm.tokenizer.stop_ids = saved
        fixture_dm.model.reset_caches()
    a0, a1, a2 = h0.result(), h1.result(), h2.result()
    assert a0.stop_reason == "stop_token" and a0.token_ids == ref0.token_ids
    assert a0.token_ids == refs[0].token_ids[: refs[0].token_ids.index(stop_tok)]
    assert a1.stop_reason == "callback" and a1.token_ids == refs[1].token_ids[:7]
    assert streamed == a1.token_ids  # streamed token by token, nothing past the stop
    assert a2.stop_reason == "hook" and a2.token_ids == refs[2].token_ids[:11]
    assert a0.accepted_tokens + a1.accepted_tokens + a2.accepted_tokens > 0


def test_the_position_limit_with_a_perfect_draft(tmp_path) -> None:
    """A model that never stops, its answer cut at max_position_embeddings: with a perfect
    draft the engine never proposes past the slot's end and says max_length as chat does."""
    from ixcdoc.runtime import load

    from .test_position_limit import POSITIONS, short_context_checkpoint

    short = load(short_context_checkpoint(tmp_path / "m"), device="cpu")
    req = ChatRequest([page(80, 60, seed=1)], "Hi", hd=4, max_new_tokens=400)
    alone = short.chat(req.images, req.query, hd=4, max_new_tokens=400)
    req.draft = short.tokenizer.decode(alone.token_ids, skip_special=True)
    eng = short.engine(n_slots=2, max_len=POSITIONS, capture=False)
    h = eng.submit(req)
    eng.run_until_idle()
    short.model.reset_caches()
    ans = h.result()
    assert (ans.token_ids, ans.stop_reason) == (alone.token_ids, "max_length")
    assert ans.prompt_tokens + len(ans.token_ids) == POSITIONS
    assert ans.accepted_tokens > len(ans.token_ids) // 2


def test_a_4bit_model_speculates_as_it_chats() -> None:
    pytest.importorskip("bitsandbytes")
    from ixcdoc.runtime import load

    from ..model.upstream import TINY_CKPT

    dm = load(TINY_CKPT, device="cpu", quant="4bit")
    reqs = _mixed(5)
    refs = _with_drafts(dm, reqs, "perfect")
    reqs[3].draft = _draft(dm, refs[3].token_ids, "right_then_wrong")
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=3, submit_later=2)
    assert _check(refs, handles, logits) > 0


def test_a_bf16_model_speculates_within_bf16_rounding() -> None:
    """bf16: every accepted position's logits point where chat's do (cosine > 0.99) for as
    long as the answers agree (exact parity is float32's; bf16 rounds per batch shape)."""
    from ixcdoc.runtime import load

    from ..model.upstream import TINY_CKPT

    dm = load(TINY_CKPT, device="cpu", dtype="bfloat16")
    reqs = _mixed(4)
    refs = _with_drafts(dm, reqs, "perfect")
    handles, logits, _, _ = run_engine(dm, reqs, n_slots=4)
    compared = 0
    for ref, h in zip(refs, handles, strict=True):
        ans = h.result()
        for i, (a, b) in enumerate(zip(logits[h.id], ref.logits, strict=False)):
            cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0)
            assert cos > 0.99
            compared += 1
            if i >= len(ans.token_ids) or ans.token_ids[: i + 1] != ref.token_ids[: i + 1]:
                break
    assert compared > len(reqs) * 5
    assert sum(h.result().accepted_tokens for h in handles) > 0


@pytest.mark.parametrize("which", ["fixture_dm", "tiny_dm"])
def test_a_perfect_token_draft_is_accepted_and_steps_are_saved(request, which: str) -> None:
    """Drafts given as token ids (the greedy answer itself): nearly every token is accepted,
    so there are far fewer decode forwards than tokens, and the answers are still chat's."""
    dm = request.getfixturevalue(which)
    reqs = _mixed(6)
    refs = [_reference(dm, i, r) for i, r in enumerate(reqs)]
    for r, ref in zip(reqs, refs, strict=True):
        r.draft = list(ref.token_ids)
    handles, logits, _, eng = run_engine(dm, reqs, n_slots=6)
    accepted = _check(refs, handles, logits)
    tokens = sum(len(r.token_ids) for r in refs)
    assert accepted >= tokens // 2
    assert eng.steps < max(len(r.token_ids) for r in refs) // 2


def test_off_sampling_and_penalty_do_not_speculate(tiny_dm) -> None:
    reqs = _mixed(4)
    refs = _with_drafts(tiny_dm, reqs, "perfect")
    reqs[0].speculate = "off"
    reqs[1].do_sample, reqs[1].seed = True, 4
    reqs[2].repetition_penalty = 1.3
    handles, _, _, _ = run_engine(tiny_dm, reqs, n_slots=4)
    assert [h.result().accepted_tokens for h in handles[:3]] == [0, 0, 0]
    assert handles[0].result().token_ids == refs[0].token_ids
    assert handles[3].result().accepted_tokens > 0  # the greedy one beside them does
    assert handles[3].result().token_ids == refs[3].token_ids


def test_chat_with_a_draft_equals_chat(fixture_dm) -> None:
    req = _mixed(2)[1]
    plain = fixture_dm.chat(req.images, req.query, hd=req.hd, max_new_tokens=req.max_new_tokens)
    text = fixture_dm.tokenizer.decode(plain.token_ids, skip_special=True)
    streamed: list[int] = []
    spec = fixture_dm.chat(
        req.images,
        req.query,
        hd=req.hd,
        max_new_tokens=req.max_new_tokens,
        draft=text,
        on_token=streamed.append,
    )
    assert spec.token_ids == plain.token_ids == streamed
    assert spec.text == plain.text and spec.stop_reason == plain.stop_reason
    assert spec.accepted_tokens > 0 and plain.accepted_tokens == 0
    with pytest.raises(UsageError, match="speculate must be one of auto, off"):
        fixture_dm.chat(req.images, req.query, draft=text, speculate="yes")
    with pytest.raises(UsageError, match="speculate"):
        ChatRequest(req.images, req.query, speculate="on")
    with pytest.raises(UsageError, match="draft token id 5000 is outside the vocabulary"):
        fixture_dm.chat(req.images, req.query, draft=[1, 5000])
    with pytest.raises(UsageError, match="draft must be text, token ids or None"):
        ChatRequest(req.images, req.query, draft=3.5)


def test_a_draft_that_utf8_cannot_carry_is_named(fixture_dm) -> None:
    """A lone surrogate in the draft (a non-UTF-8 byte decoded with surrogateescape) is a
    usage error naming the draft, not "the text", which would send the caller to the query."""
    req = _mixed(1)[0]
    with pytest.raises(
        UsageError, match=r"^the draft is not valid UTF-8: byte 0x80 at character 3$"
    ):
        fixture_dm.chat(req.images, req.query, draft="ab\udc80c")


def test_a_draft_is_cut_to_draft_tokens(fixture_dm) -> None:
    """A draft of DRAFT_CHARS rare characters is byte tokens, ~4 per character: the engine
    keeps its first DRAFT_TOKENS (the index it builds per sequence stays bounded), ids too;
    the answer is still chat's and the draft's head still proposes."""
    from ixcdoc.tasks import DRAFT_CHARS, DRAFT_TOKENS

    req = _mixed(2)[1]
    plain = fixture_dm.chat(req.images, req.query, hd=req.hd, max_new_tokens=req.max_new_tokens)
    head = fixture_dm.tokenizer.decode(plain.token_ids, skip_special=True)
    text = (head + "\U00010000" * DRAFT_CHARS)[:DRAFT_CHARS]
    assert len(fixture_dm.tokenizer.encode(text, bos=False)) > 2 * DRAFT_TOKENS
    ids = list(plain.token_ids) + [5] * DRAFT_TOKENS
    for draft in (text, ids):
        ans = fixture_dm.chat(
            req.images, req.query, hd=req.hd, max_new_tokens=req.max_new_tokens, draft=draft
        )
        assert ans.token_ids == plain.token_ids
        assert ans.draft_tokens == DRAFT_TOKENS
        assert ans.accepted_tokens > 0


def test_an_oom_in_a_verify_step_retries_it_plain(fixture_dm, monkeypatch) -> None:
    from ixcdoc.engine.runner import ModelRunner

    reqs = _mixed(3)
    refs = _with_drafts(fixture_dm, reqs, "perfect")
    real = ModelRunner.verify
    calls: list[int] = []

    def oom_once(self, ids, positions, keep):
        calls.append(len(ids))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("injected")
        return real(self, ids, positions, keep)

    monkeypatch.setattr(ModelRunner, "verify", oom_once)
    handles, logits, _, eng = run_engine(fixture_dm, reqs, n_slots=3)
    _check(refs, handles, logits)
    assert len(calls) > 1 and eng.row_cap is None


def test_a_verify_step_that_keeps_running_out_of_memory_is_not_retried_every_step(
    fixture_dm, monkeypatch
) -> None:
    """Where a verify step does not fit, each further try costs a failed forward and a
    release of memory (gc.collect, empty_cache) before the plain step: the engine stops
    trying that k at that batch size, so a request tries at most one k per choice."""
    from ixcdoc.engine.runner import ModelRunner

    reqs = _mixed(2)[1:]  # one request, 40 tokens: one batch size all along
    refs = _with_drafts(fixture_dm, reqs, "perfect")
    calls: list[int] = []

    def oom(self, ids, positions, keep):
        calls.append(len(ids[0]) - 1)
        raise torch.cuda.OutOfMemoryError("injected")

    monkeypatch.setattr(ModelRunner, "verify", oom)
    handles, logits, _, eng = run_engine(fixture_dm, reqs, n_slots=1)
    _check(refs, handles, logits)
    assert sorted(calls, reverse=True) == calls and len(set(calls)) == len(calls)
    assert 1 <= len(calls) <= len(K_CHOICES) and eng.steps > 2 * len(K_CHOICES)
    assert eng.costs.too_big == {}  # as the row cap: the batch emptied, every k may run again


# -- the adaptive rules (pure) -----------------------------------------------------------------


def test_a_sequence_whose_drafts_keep_failing_pauses_then_retries() -> None:
    sp = SeqSpec(Proposer([]))
    step = 0
    while sp.drafting(step):
        sp.update(4, 0, step)
        step += 1
    assert step <= 8  # a few failures are enough
    first, last = BACKOFF[0], step - 1  # the failure that paused it came at step ``last``
    assert not sp.drafting(last + first - 1) and sp.drafting(last + first)
    paused = sp.paused_until
    while sp.drafting(paused):  # failing again pauses twice as long
        sp.update(4, 0, paused)
    assert sp.paused_until - paused == 2 * first
    sp.update(4, 4, sp.paused_until)  # a full acceptance resets the pause
    assert sp.backoff == first and sp.alpha > FLOOR


def test_k_follows_the_measured_cost_and_the_acceptance() -> None:
    cost = StepCost()
    good = [(0.9, 8)] * 4
    assert cost.choose(4, 4, good, cap=100) == 0  # a plain step first: the yardstick
    cost.record(4, 0, 0.010)
    assert cost.choose(4, 4, good, cap=100) == K_CHOICES[-1]  # then the most tokens, once
    cost.record(4, 8, 0.011)
    assert cost.choose(4, 4, good, cap=100) == 8
    assert cost.choose(4, 4, good, cap=3) == 2  # the slot's end caps it
    assert cost.choose(4, 4, [(0.02, 8)] * 4, cap=100) == 0  # drafts that fail: plain steps
    for _ in range(30):  # now a k = 8 step costs ten plain ones: less than 8 pays, or none
        cost.record(4, 8, 0.1)
    assert cost.choose(4, 4, good, cap=100) < 8
    for k in K_CHOICES:  # a step that costs k + 1 times a plain one never pays
        for _ in range(30):
            cost.record(4, k, 0.010 * (k + 1) * 10)
    assert cost.choose(4, 4, good, cap=100) == 0
    assert cost.choose(4, 4, [], cap=100) == 0
    gpu = StepCost(cuda=True)  # past ~256 tokens a step, a GPU step is compute-bound
    for b in (64, 256):
        gpu.record(b, 0, 0.01)
    assert gpu.choose(64, 64, [(0.9, 8)] * 64, cap=100) == 2
    assert gpu.choose(256, 256, [(0.9, 8)] * 256, cap=100) == 0
    tight = StepCost()  # a verify step of k = 4 ran out of memory at bucket 4: less from then on
    for b in (4, 8):
        tight.record(b, 0, 0.01)
    tight.out_of_memory(4, 4)
    assert tight.choose(4, 4, good, cap=100) == 2
    assert tight.choose(8, 8, [(0.9, 8)] * 8, cap=100) == 8  # another batch size: untouched
    tight.out_of_memory(4, 1)
    assert tight.choose(4, 4, good, cap=100) == 0
