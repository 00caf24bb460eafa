"""Engine test set-up: the upstream fixture checkpoint, tiny checkpoints, and a chat reference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from ixcdoc.engine import ChatRequest
from ixcdoc.engine.arith import sampling_config
from ixcdoc.generate import decode_step, generate
from ixcdoc.runtime import DocModel, load

from ..model.upstream import TINY_CKPT


@pytest.fixture(scope="session")
def fixture_dm() -> DocModel:
    return load(TINY_CKPT, device="cpu")


@pytest.fixture(scope="session")
def tiny_dm(tmp_path_factory: pytest.TempPathFactory) -> DocModel:
    """A tiny checkpoint unlike the fixture: 3 layers, 4 query heads per KV head, other seed."""
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    path = write_tiny_checkpoint(
        tmp_path_factory.mktemp("engine") / "ck", seed=7, layers=3, heads=8, kv_heads=2
    )
    return load(path, device="cpu")


def page(w: int, h: int, seed: int) -> Image.Image:
    """A random RGB page of w x h pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@dataclass
class Reference:
    """What chat computes for one request alone: its tokens and the logits of every step."""

    token_ids: list[int]
    stop_reason: str
    logits: list[torch.Tensor]


def chat_reference(dm: DocModel, req: ChatRequest, **callbacks) -> Reference:
    """Run ``generate`` for ``req`` alone (batch 1), recording every step's logits."""
    p = dm.embed_prompt(req.images, req.query, hd=req.hd, meta_instruction=req.meta_instruction)
    dm.model.reset_caches()  # a fresh prefill writes into any cache that is set up
    with torch.inference_mode():
        first = dm.model(p.inputs_embeds, p.im_mask, None, last_only=True)[0, -1].clone()
    logits = [first]
    step = decode_step(dm.model)

    def recording(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = step(ids, pos)
        logits.append(out.clone())
        return out

    gen = None
    if req.seed is not None:
        gen = torch.Generator().manual_seed(req.seed)
    cfg = sampling_config(req)  # the request's options, mapped field for field
    res = generate(
        dm.model,
        p.inputs_embeds,
        p.im_mask,
        stop_ids=dm.tokenizer.stop_ids,
        config=cfg,
        generator=gen,
        decode=recording,
        **callbacks,
    )
    return Reference(res.token_ids, res.stop_reason, logits)


def run_engine(
    dm: DocModel, reqs, *, n_slots: int, submit_later: int = 0, after_steps: int = 2, **engine
):
    """Run ``reqs`` through an engine, every greedy row's logits recorded; the last
    ``submit_later`` join after ``after_steps`` steps. Returns (handles, logits by handle id,
    sequences running when they joined, the engine)."""
    logits: dict[int, list[torch.Tensor]] = defaultdict(list)
    eng = dm.engine(
        n_slots=n_slots,
        max_len=1024,
        logits_hook=lambda h, row: logits[h.id].append(row.clone()),
        **engine,
    )
    first = len(reqs) - submit_later
    handles = [eng.submit(r) for r in reqs[:first]]
    for _ in range(after_steps):
        eng.step()
    running_when_joined = len(eng.running)
    handles += [eng.submit(r) for r in reqs[first:]]
    eng.run_until_idle()
    dm.free_cache()
    return handles, logits, running_when_joined, eng
