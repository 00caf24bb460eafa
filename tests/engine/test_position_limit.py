"""An answer cut at the position limit (max_position_embeddings) says ``max_length``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ixcdoc.engine import ChatRequest
from ixcdoc.runtime import DocModel, load

from .conftest import page

POSITIONS = 300  # max_position_embeddings of the checkpoint below


def short_context_checkpoint(path: Path) -> Path:
    """A tiny model that never stops on its own, with 300 positions (prompts cut at 256)."""
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    write_tiny_checkpoint(path, loop=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(max_position_embeddings=POSITIONS, max_length=256)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> DocModel:
    return load(short_context_checkpoint(tmp_path_factory.mktemp("short") / "m"), device="cpu")


@pytest.mark.parametrize("num_beams", [1, 2])
def test_an_answer_cut_at_the_position_limit_says_max_length(
    short: DocModel, num_beams: int
) -> None:
    req = ChatRequest([page(80, 60, seed=1)], "Hi", hd=4, max_new_tokens=400, num_beams=num_beams)
    eng = short.engine(n_slots=2 * num_beams, max_len=POSITIONS, capture=False)
    h = eng.submit(req)
    # a budget that ends first is max_new_tokens
    five = eng.submit(ChatRequest(req.images, "Hi", hd=4, max_new_tokens=5, num_beams=num_beams))
    eng.run_until_idle()
    short.model.reset_caches()
    assert five.result().stop_reason == "max_new_tokens"
    ans = h.result()
    assert ans.prompt_tokens + len(ans.token_ids) == POSITIONS  # every position used
    assert len(ans.token_ids) < req.max_new_tokens
    assert ans.stop_reason == "max_length"
    # chat (generate, and its beam search) says the same
    alone = short.chat(req.images, req.query, hd=4, max_new_tokens=400, num_beams=num_beams)
    assert (alone.token_ids, alone.stop_reason) == (ans.token_ids, "max_length")
