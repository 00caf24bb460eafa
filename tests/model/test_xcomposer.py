"""Full-model parity with upstream on the tiny checkpoint: im_mask, logits, greedy decoding."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.model.weights import load_model

from .upstream import TINY_CKPT, case_id, chat_cases, chat_parts, tensor

LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return load_model(TINY_CKPT)


@pytest.mark.parametrize("case", chat_cases(), ids=case_id)
def test_splice_and_im_mask(model, case) -> None:
    embeds, im_mask = model.splice(chat_parts(case))
    assert embeds.shape == (1, case["seq_len"], model.config.hidden_size)
    ref = tensor(case["im_mask"]).reshape(-1).bool()
    assert torch.equal(im_mask[0], ref)
    for seg in case["segments"]:
        span = im_mask[0, seg["start"] : seg["start"] + seg["length"]]
        assert bool(span.all()) if seg["kind"] == "image" else not bool(span.any())


@pytest.mark.parametrize("case", chat_cases(), ids=case_id)
def test_prompt_logits_match_upstream(model, case) -> None:
    embeds, im_mask = model.splice(chat_parts(case))
    with torch.inference_mode():
        logits = model(embeds, im_mask)[0]
    assert list(logits.shape) == case["logits_shape"]
    torch.testing.assert_close(logits, tensor(case["logits"]), rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("case", chat_cases(), ids=case_id)
def test_greedy_cached_decoding_matches_upstream(model, case) -> None:
    embeds, im_mask = model.splice(chat_parts(case))
    n = len(case["greedy_tokens"])
    L = embeds.shape[1]
    tokens, steps = [], []
    with torch.inference_mode():
        model.setup_caches(1, L + n)
        try:
            logits = model(embeds, im_mask, last_only=True)[0, -1]
            for i in range(n):
                steps.append(logits)
                tokens.append(int(logits.argmax()))
                if i < n - 1:
                    x = model.embed_tokens(torch.tensor([[tokens[-1]]]))
                    logits = model(x, None, torch.tensor([L + i]))[0, -1]
        finally:
            model.reset_caches()
    assert tokens == case["greedy_tokens"]
    ref = tensor(case["gen_step_logits"])
    torch.testing.assert_close(torch.stack(steps), ref, rtol=0, atol=LOGITS_ATOL)


def test_splice_truncates_at_max_length(model) -> None:
    case = chat_cases()[1]
    embeds, im_mask = model.splice(chat_parts(case), max_length=20)
    assert embeds.shape[1] == 20 and im_mask.shape[1] == 20
    full, _ = model.splice(chat_parts(case))
    torch.testing.assert_close(embeds, full[:, :20])
    assert model.config.max_length == 16384  # read from config.json


def test_image_parts_keep_the_lora_path_active(model) -> None:
    # Same embeddings, im_mask all False: the logits must differ (PLoRA is in use).
    case = chat_cases()[1]
    embeds, im_mask = model.splice(chat_parts(case))
    with torch.inference_mode():
        a = model(embeds, im_mask)[0, -1]
        b = model(embeds, torch.zeros_like(im_mask))[0, -1]
    assert (a - b).abs().max() > 1e-3
