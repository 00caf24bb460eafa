"""Request arithmetic: what a request will cost, from the tokenizer and tiling alone.

No vision run and no forward: the prompt's spliced length, the cache positions it fills, the
ViT tiles it brings, and its sampling options as ``generate`` takes them. ``Engine.submit``
refuses with these; the callers that size an engine (``DocModel``, the server, the batch
runner, ``benchmarks/engine.py``) size it with the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ixcdoc import sizing
from ixcdoc.engine.prompts import grid, prompt_parts
from ixcdoc.errors import UsageError
from ixcdoc.generate import SamplingConfig
from ixcdoc.prompt import TextPart
from ixcdoc.tiling import check_hd, image_token_count

if TYPE_CHECKING:
    from ixcdoc.engine.prompts import Loaded
    from ixcdoc.engine.request import ChatRequest


def prompt_tokens(loaded: Loaded, req: ChatRequest) -> int:
    """Spliced prompt length of ``req`` from the tokenizer and tiling alone (no vision run)."""
    check_hd(req.hd)
    cfg = loaded.config
    n = 0
    for part in prompt_parts(loaded.tokenizer, req.query, req.meta_instruction, len(req.images)):
        if isinstance(part, TextPart):
            n += len(part.ids)
        else:
            rows, cols = grid(req.images[part.index], req.hd, loaded.tile)
            n += image_token_count(rows, cols, loaded.tile, cfg.vision.patch_size)
    return min(n, cfg.max_length)


def request_positions(loaded: Loaded, req: ChatRequest) -> int:
    """Cache positions ``req`` fills: prompt + max_new_tokens, cut at the position limit."""
    limit = loaded.config.max_position_embeddings
    return sizing.request_positions(prompt_tokens(loaded, req), req.max_new_tokens, limit)


def vision_tiles(loaded: Loaded, req: ChatRequest) -> int:
    """ViT tiles of ``req``: one global view plus rows x cols crops per image."""
    return sum(1 + r * c for r, c in (grid(im, req.hd, loaded.tile) for im in req.images))


def sampling_config(req: ChatRequest) -> SamplingConfig:
    """The request's decoding options (a UsageError for invalid values, as chat raises)."""
    try:
        return SamplingConfig(
            max_new_tokens=req.max_new_tokens,
            do_sample=req.do_sample,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
