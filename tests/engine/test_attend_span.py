"""Eager decode attends to the longest row's prefix rounded up to ATTEND_ROUND positions: a
token decoded exactly at a multiple of 64 must still see itself (logits equal chat's)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from ixcdoc.engine import ChatRequest
from ixcdoc.engine.runner import ATTEND_ROUND
from ixcdoc.runtime import DocModel, load

from .conftest import chat_reference, page

NEW = ATTEND_ROUND + 8  # every answer decodes across at least one multiple of 64


@pytest.fixture(scope="module")
def endless(tmp_path_factory: pytest.TempPathFactory) -> DocModel:
    """A tiny model whose greedy answers never stop before max_new_tokens."""
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    path: Path = tmp_path_factory.mktemp("span") / "loop"
    return load(write_tiny_checkpoint(path, loop=True), device="cpu")


def _decoded_positions(prompt: int, n_tokens: int) -> range:
    """Positions fed to decode steps: the first token comes from the prefill."""
    return range(prompt, prompt + n_tokens - 1)


@pytest.mark.parametrize("together", [1, 2])
def test_decode_across_a_multiple_of_64_equals_chat(endless: DocModel, together: int) -> None:
    reqs = [
        ChatRequest([page(80, 60, seed=1)], "Read it.", hd=1, max_new_tokens=NEW),
        ChatRequest([page(60, 120, seed=2)], "What is the total?", hd=2, max_new_tokens=NEW),
    ][:together]
    logits: dict[int, list[torch.Tensor]] = defaultdict(list)
    eng = endless.engine(
        n_slots=2,
        max_len=1024,
        capture=False,
        logits_hook=lambda h, row: logits[h.id].append(row.clone()),
    )
    handles = [eng.submit(r) for r in reqs]
    eng.run_until_idle()
    endless.model.reset_caches()
    for req, h in zip(reqs, handles, strict=True):
        ans = h.result()
        assert len(ans.token_ids) == NEW  # no early stop: the crossing is decoded
        crossed = [p for p in _decoded_positions(ans.prompt_tokens, NEW) if p % ATTEND_ROUND == 0]
        assert crossed, "the answer should be decoded across a multiple of 64"
        ref = chat_reference(endless, req)
        assert ans.token_ids == ref.token_ids
        got = torch.stack(logits[h.id])
        torch.testing.assert_close(got, torch.stack(ref.logits[: len(got)]), rtol=0, atol=1e-4)
