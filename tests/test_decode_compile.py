"""Decode capture: the one-token step compiles once (fullgraph) and equals the eager step.

Runs on CPU with the ``aot_eager`` backend: dynamo capture plus AOT functionalization (the
in-place KV-cache writes included), without inductor's C++ compilation, so the test stays at a
few seconds on two cores. Inductor itself is exercised by ``benchmarks/decode.py --compile``,
which asserts that the compiled loop chooses the same tokens.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import ixcdoc.generate as gen
from ixcdoc.generate import SamplingConfig, compiled_decode_step, decode_step, generate
from ixcdoc.model.weights import load_model

from .model.upstream import TINY_CKPT

BACKEND = "aot_eager"


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_CKPT)


@pytest.fixture
def fresh_dynamo():
    """Empty dynamo caches and counters; any recompilation raises."""
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield
    torch._dynamo.reset()


def _prompt(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.embed_tokens(torch.randint(3, 990, (1, n), generator=g))  # [1, n, D]


def _steps(model, step, embeds: torch.Tensor, n_steps: int) -> tuple[torch.Tensor, list[int]]:
    """Prefill, then n_steps greedy steps through ``step``: logits [n_steps, V] and tokens."""
    s = embeds.shape[1]
    logits, toks = [], []
    with torch.inference_mode():
        model.setup_caches(1, 64)
        tok = model(embeds, None, None, last_only=True)[0, -1].argmax()
        for i in range(n_steps):
            toks.append(int(tok))
            out = step(tok.view(1, 1), torch.tensor([s + i]))  # a fresh position tensor each step
            logits.append(out.clone())
            tok = out.argmax()
    return torch.stack(logits), toks


def test_compiled_step_equals_eager_and_compiles_once(tiny, fresh_dynamo) -> None:
    embeds = _prompt(tiny, 11)
    eager_logits, eager_toks = _steps(tiny, decode_step(tiny), embeds, 6)
    step = compiled_decode_step(tiny, backend=BACKEND)
    comp_logits, comp_toks = _steps(tiny, step, embeds, 6)
    assert comp_toks == eager_toks
    torch.testing.assert_close(comp_logits, eager_logits, rtol=0, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every position
    # another prompt length on the same cache: still the same graph, no recompilation
    _steps(tiny, step, _prompt(tiny, 5, seed=1), 3)
    assert counters["stats"]["unique_graphs"] == 1


def test_generate_with_compiled_step_matches_eager(tiny, fresh_dynamo) -> None:
    cfg = SamplingConfig(max_new_tokens=10)
    for n, seed in ((17, 2), (30, 3)):  # both fit one 256-slot cache: one graph for both
        embeds = _prompt(tiny, n, seed)
        eager = generate(tiny, embeds, None, config=cfg)
        comp = generate(
            tiny, embeds, None, config=cfg, decode=compiled_decode_step(tiny, backend=BACKEND)
        )
        assert comp.token_ids == eager.token_ids
        assert comp.decode_steps == eager.decode_steps == 9
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_step_with_repetition_penalty_and_image_prompt(tiny, fresh_dynamo) -> None:
    # the prefill (with im_mask, eager) and the penalty (outside the graph) around the step
    embeds = _prompt(tiny, 20, seed=4)
    im_mask = torch.zeros(1, 20, dtype=torch.bool)
    im_mask[0, 4:12] = True
    cfg = SamplingConfig(max_new_tokens=8, repetition_penalty=1.5)
    eager = generate(tiny, embeds, im_mask, config=cfg)
    comp = generate(
        tiny, embeds, im_mask, config=cfg, decode=compiled_decode_step(tiny, backend=BACKEND)
    )
    assert comp.token_ids == eager.token_ids


def test_compile_decode_uses_compiled_step(tiny, monkeypatch) -> None:
    built: list[object] = []

    def fake(model, **kwargs):
        built.append(model)
        return decode_step(model)

    monkeypatch.setattr(gen, "compiled_decode_step", fake)
    embeds = _prompt(tiny, 9)
    res = generate(tiny, embeds, None, config=SamplingConfig(4), compile_decode=True)
    assert built == [tiny]
    assert res.token_ids == generate(tiny, embeds, None, config=SamplingConfig(4)).token_ids
    assert built == [tiny]  # off by default


def test_compile_decode_and_explicit_step_are_exclusive(tiny) -> None:
    with pytest.raises(ValueError, match="either"):
        generate(tiny, _prompt(tiny, 4), None, compile_decode=True, decode=decode_step(tiny))
