"""Finishing a sequence: the stop rules per token, the beam glue, the ``Answer`` or the error.

``accept`` applies ``generate``'s stop rules, in its order, to one new token; ``beam_step``
feeds one step's logits to a sequence's ``BeamSearch`` and moves the beams' cache rows;
``complete`` and ``fail`` set the handle (answer or error) and run the caller's ``on_done``.
None of these moves a sequence out of the batch: the engine does that (``Engine._leave``).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import torch

from ixcdoc.errors import DeviceError
from ixcdoc.generate import CALLBACK, HOOK, MAX_LENGTH, MAX_NEW_TOKENS, STOP_TOKEN

if TYPE_CHECKING:
    from ixcdoc.engine.request import ChatRequest
    from ixcdoc.engine.runner import ModelRunner
    from ixcdoc.engine.sequence import Sequence
    from ixcdoc.tokenizer import Tokenizer


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is the device running out of memory."""
    return isinstance(e, torch.cuda.OutOfMemoryError)


def oom_error(req: ChatRequest) -> DeviceError:
    """The error a request gets when it does not fit (callers retry it a tier lower)."""
    return DeviceError(
        f"out of GPU memory at HD{req.hd}; try a lower tier or quant='4bit'", code="oom"
    )


def accept(seq: Sequence, tok: int, stop_ids: frozenset[int]) -> None:
    """The stop rules of ``generate``, in its order, for one new token."""
    i = len(seq.tokens)
    try:
        if tok in stop_ids:
            seq.stop_reason, seq.stop_token_id = STOP_TOKEN, tok
            return
        seq.tokens.append(tok)
        if seq.generated is not None:
            seq.generated[i] = tok
        if seq.on_token is not None and seq.on_token(tok) is False:
            seq.stop_reason = CALLBACK
            return
        if seq.should_stop is not None and (why := seq.should_stop(seq.tokens)):
            seq.stop_reason, seq.detail = HOOK, why
            return
    except Exception as e:  # a failing callback fails its request, not the engine
        seq.stop_reason = CALLBACK
        seq.handle.error = e
        return
    if i == seq.budget - 1:
        full = seq.budget == seq.config.max_new_tokens
        seq.stop_reason = MAX_NEW_TOKENS if full else MAX_LENGTH
        return
    seq.feed = [tok]


def beam_step(seq: Sequence, logits: torch.Tensor, runner: ModelRunner) -> None:
    """One beam-search step on the logits [num_beams, V] of ``seq``'s rows."""
    beam = seq.beam
    assert beam is not None
    out = beam.step(logits)
    if out.done:
        tokens, stop = beam.best()
        seq.tokens = tokens
        seq.stop_token_id = stop
        seq.stop_reason = STOP_TOKEN if stop is not None else MAX_NEW_TOKENS
        if stop is None and seq.budget < seq.config.max_new_tokens:
            seq.stop_reason = MAX_LENGTH
        if seq.on_token is not None:
            for t in tokens:
                if seq.on_token(t) is False:
                    break
        return
    # new beam j continues old beam sources[j]: copy its cached positions. The first step
    # fans the prompt out of the prefilled row; after that every row holds the same
    # prompt, so a reorder copies only the generated positions.
    filled = seq.prompt_len + beam.generated - 1
    start = 0 if beam.generated == 1 else seq.prompt_len
    src = [seq.rows[s] for s in out.sources]
    moved = [(s, d) for s, d in zip(src, seq.rows, strict=True) if s != d]
    if moved:
        runner.copy_rows([s for s, _ in moved], [d for _, d in moved], filled, start)
    seq.feed = out.tokens


def complete(seq: Sequence, tokenizer: Tokenizer) -> None:
    """Set ``seq``'s answer (or the error a callback raised) and run its ``on_done``."""
    from ixcdoc.answer import Answer

    now = time.perf_counter()
    decode_ms = (now - seq.t_prefilled) * 1000 if seq.t_prefilled else 0.0
    steps = max(len(seq.tokens) - 1, 0) if seq.beam is None else seq.beam.generated - 1
    req = seq.request
    timings: dict[str, Any] = {
        "vision_ms": seq.timings.get("vision_ms", 0.0),
        "prefill_ms": seq.timings.get("prefill_ms", 0.0),
        "decode_ms": decode_ms,
        "n_tokens": len(seq.tokens),
        "decode_tokens_per_s": steps / (decode_ms / 1000) if decode_ms > 0 else 0.0,
    }
    answer = Answer(
        text=tokenizer.decode(seq.tokens, skip_special=True),
        token_ids=list(seq.tokens),
        stop_reason=seq.stop_reason or MAX_NEW_TOKENS,
        hd=req.hd,
        grids=seq.grids,
        n_image_tokens=seq.n_image_tokens,
        prompt_tokens=seq.prompt_len,
        truncated=seq.truncated,
        timings=timings,
        stop_detail=seq.detail,
        draft_tokens=seq.draft_tokens,
        accepted_tokens=seq.accepted,
    )
    error = seq.handle.error
    seq.handle._finish(None if error else answer, error)
    _done_callback(seq)


def fail(seq: Sequence, error: BaseException) -> None:
    """Set ``seq``'s error and run its ``on_done``."""
    seq.handle._finish(None, error)
    _done_callback(seq)


def _done_callback(seq: Sequence) -> None:
    if seq.on_done is not None:
        with contextlib.suppress(Exception):  # a caller's bug must not stop the others
            seq.on_done(seq.handle)
