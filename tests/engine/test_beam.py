"""Beam search against an independent beam search written here (full forward, no cache)."""

from __future__ import annotations

import math

import pytest
import torch

from ixcdoc.engine import ChatRequest

from .conftest import page


def _full_logits(dm, embeds, im_mask, tokens: list[int]) -> torch.Tensor:
    """Last-position logits of prompt + tokens, recomputed from scratch (no KV cache)."""
    model = dm.model
    if tokens:
        extra = model.embed_tokens(torch.tensor(tokens))[None]
        embeds = torch.cat([embeds, extra], dim=1)
        im_mask = torch.cat([im_mask, torch.zeros(1, len(tokens), dtype=torch.bool)], dim=1)
    model.reset_caches()
    return model(embeds, im_mask, None)[0, -1]


def reference_beam_search(dm, req: ChatRequest, stops: set[int]) -> list[int]:
    """HF's beam search rules (length_penalty 1, early_stopping False), written plainly."""
    nb, max_new = req.num_beams, req.max_new_tokens
    p = dm.embed_prompt(req.images, req.query, hd=req.hd, meta_instruction=req.meta_instruction)
    keep = max(2, 1 + len(stops)) * nb
    running: list[tuple[list[int], float]] = [([], 0.0)] + [([], -1e9)] * (nb - 1)
    finished: list[tuple[float, list[int]]] = []
    improvable = True
    with torch.inference_mode():
        for step in range(max_new):
            cands = []
            for b, (toks, score) in enumerate(running):
                lp = torch.log_softmax(_full_logits(dm, p.inputs_embeds, p.im_mask, toks), -1)
                cands += [(score + float(v), b, t) for t, v in enumerate(lp.tolist())]
            cands.sort(key=lambda c: -c[0])
            cands = cands[:keep]
            nxt: list[tuple[list[int], float]] = []
            all_hit = True
            for rank, (score, b, t) in enumerate(cands):
                toks = running[b][0] + [t]
                hit = t in stops or len(toks) >= max_new
                all_hit &= hit
                if hit:
                    if rank < nb and improvable:
                        finished.append((score / len(toks), toks))
                elif len(nxt) < nb:
                    nxt.append((toks, score))
            finished = sorted(finished, key=lambda f: -f[0])[:nb]
            running = nxt
            if len(finished) == nb and running:
                improvable = improvable and running[0][1] / (step + 1) > finished[-1][0]
            if not improvable or all_hit:
                break
    best = finished[0][1]
    return best[:-1] if best and best[-1] in stops else best


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_search_matches_reference(tiny_dm, num_beams) -> None:
    reqs = [
        ChatRequest(
            [page(80, 60, seed=1)], "Read it.", hd=1, max_new_tokens=6, num_beams=num_beams
        ),
        ChatRequest([page(50, 120, seed=2)], "What?", hd=2, max_new_tokens=5, num_beams=num_beams),
    ]
    greedy = tiny_dm.chat(reqs[0].images, reqs[0].query, hd=1, max_new_tokens=6)
    # a frequent token as an extra stop id, so hypotheses also finish before the limit
    extra = greedy.token_ids[2]
    saved = tiny_dm.tokenizer.stop_ids
    tiny_dm.tokenizer.stop_ids = (*saved, extra)
    try:
        plain = ChatRequest(reqs[0].images, "Read it.", hd=1, max_new_tokens=4)
        answers = tiny_dm.chat_batch([*reqs, plain], max_batch=2 * num_beams + 1)
        expected = [
            reference_beam_search(tiny_dm, r, set(tiny_dm.tokenizer.stop_ids)) for r in reqs
        ]
    finally:
        tiny_dm.tokenizer.stop_ids = saved
    for a, e in zip(answers[:2], expected, strict=True):
        assert a.token_ids == e
    assert answers[2].token_ids == greedy.token_ids[:2]  # greedy rows share the batch


def test_beam_search_with_queueing(tiny_dm) -> None:
    """A beam request waits for free rows behind others and still gives the same answer."""
    req = ChatRequest([page(80, 60, seed=1)], "Read it.", hd=1, max_new_tokens=5, num_beams=3)
    others = [ChatRequest([page(60, 60, seed=i)], "x", hd=1, max_new_tokens=3) for i in range(3)]
    answers = tiny_dm.chat_batch([*others, req], max_batch=3)
    assert answers[3].token_ids == reference_beam_search(
        tiny_dm, req, set(tiny_dm.tokenizer.stop_ids)
    )
    assert math.isfinite(answers[3].timings["decode_ms"])


def test_chat_takes_num_beams_and_gives_the_reference_beam_answer(tiny_dm) -> None:
    from ixcdoc.errors import UsageError

    req = ChatRequest([page(80, 60, seed=1)], "Read it.", hd=1, max_new_tokens=6, num_beams=3)
    streamed: list[int] = []
    ans = tiny_dm.chat(
        req.images, req.query, hd=1, max_new_tokens=6, num_beams=3, on_token=streamed.append
    )
    assert ans.token_ids == reference_beam_search(tiny_dm, req, set(tiny_dm.tokenizer.stop_ids))
    assert streamed == ans.token_ids  # the chosen answer, once chosen
    with pytest.raises(UsageError, match="do_sample"):
        tiny_dm.chat(req.images, req.query, hd=1, num_beams=3, do_sample=True)
    with pytest.raises(UsageError, match="num_beams"):
        tiny_dm.chat(req.images, req.query, hd=1, num_beams=0)
