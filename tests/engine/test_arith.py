"""Request arithmetic: the sizes the engine refuses and is sized with, from the tokenizer and
tiling alone, equal what the prompt path then builds."""

from __future__ import annotations

import pytest

from ixcdoc.engine import ChatRequest
from ixcdoc.engine.arith import prompt_tokens, request_positions, sampling_config, vision_tiles
from ixcdoc.errors import UsageError

from .conftest import page
from .test_position_limit import POSITIONS, short_context_checkpoint

REQUESTS = [
    ChatRequest([page(40, 30, 0)], "Hi", hd=1),
    ChatRequest([page(300, 900, 1)], "Transcribe the page.", hd=9),
    ChatRequest([page(90, 90, 2), page(64, 200, 3)], "<ImageHere> then <ImageHere>?", hd=4),
    ChatRequest([], "No page at all.", hd=2),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.query)
def test_prompt_tokens_and_tiles_equal_the_spliced_prompt(fixture_dm, req) -> None:
    p = fixture_dm.embed_prompt(req.images, req.query, hd=req.hd)
    loaded = fixture_dm.loaded
    assert prompt_tokens(loaded, req) == p.prompt_tokens
    assert vision_tiles(loaded, req) == sum(1 + r * c for r, c in p.grids)
    assert request_positions(loaded, req) == p.prompt_tokens + req.max_new_tokens


def test_a_long_prompt_is_counted_as_cut_and_the_answer_at_the_position_limit(
    tmp_path,
) -> None:
    from ixcdoc.runtime import load

    short = load(short_context_checkpoint(tmp_path / "m"), device="cpu")
    req = ChatRequest([page(300, 900, 1)], "Read every word. " * 60, hd=9, max_new_tokens=400)
    p = short.embed_prompt(req.images, req.query, hd=req.hd)
    assert p.truncated and p.prompt_tokens == 256  # the checkpoint's max_length
    assert prompt_tokens(short.loaded, req) == 256
    assert request_positions(short.loaded, req) == POSITIONS  # 256 + 44, not 256 + 400


def test_sampling_options_map_field_for_field_and_bad_ones_are_usage_errors() -> None:
    req = ChatRequest([], "q", max_new_tokens=7, do_sample=True, temperature=0.5, top_k=3)
    cfg = sampling_config(req)
    assert (cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_k) == (7, True, 0.5, 3)
    assert (cfg.top_p, cfg.repetition_penalty) == (req.top_p, req.repetition_penalty)
    with pytest.raises(UsageError, match="top_p"):
        sampling_config(ChatRequest([], "q", top_p=0))
