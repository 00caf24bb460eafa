"""One request in flight: its prompt, slot rows, sampling state, tokens and callbacks."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ixcdoc.engine.beam import BeamSearch
from ixcdoc.engine.request import ChatRequest
from ixcdoc.engine.speculate import SeqSpec
from ixcdoc.generate import OnToken, SamplingConfig, ShouldStop

if TYPE_CHECKING:
    from ixcdoc.answer import Answer

_ids = itertools.count()


class Handle:
    """The caller's view of a submitted request: wait for it, read its answer or error."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.id = next(_ids)
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        """True once the answer or the error is set."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (or the timeout); True when done."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Answer:
        """The ``Answer``; raises the request's error (e.g. a DeviceError with code 'oom')."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer

    def _finish(self, answer: Answer | None, error: BaseException | None) -> None:
        self.answer, self.error = answer, error
        self._done.set()


OnDone = Callable[[Handle], Any]


@dataclass(eq=False)  # identity, not value: a sequence is the owner key of its slot rows
class Sequence:
    """The engine's state for one request."""

    handle: Handle
    config: SamplingConfig
    on_token: OnToken | None = None
    should_stop: ShouldStop | None = None
    on_done: OnDone | None = None
    generator: torch.Generator | None = None
    # set at admission
    prompt_len: int = 0
    budget: int = 0  # tokens it may generate (max_new_tokens cut by the position limit)
    rows: list[int] = field(default_factory=list)  # cache rows; one per beam
    grids: list[tuple[int, int]] = field(default_factory=list)
    n_image_tokens: int = 0
    truncated: bool = False
    generated: torch.Tensor | None = None  # on-device ids for the repetition penalty
    beam: BeamSearch | None = None
    # progress
    tokens: list[int] = field(default_factory=list)
    feed: list[int] = field(default_factory=list)  # next input token per row
    stop_reason: str | None = None
    stop_token_id: int | None = None
    detail: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    t_prefilled: float = 0.0
    # speculation (``Answer.draft_tokens`` / ``accepted_tokens``)
    draft_ids: list[int] = field(default_factory=list)  # the request's draft, tokenized
    spec: SeqSpec | None = None  # greedy sequences that speculate (``speculate.py``)
    draft_tokens: int = 0
    accepted: int = 0

    @property
    def request(self) -> ChatRequest:
        return self.handle.request

    @property
    def n_rows(self) -> int:
        """Cache rows it needs: one per beam."""
        return self.request.num_beams

    @property
    def history(self) -> torch.Tensor | None:
        """The ids generated so far, on the device, for the repetition penalty (None: off)."""
        return None if self.generated is None else self.generated[: len(self.tokens)]

    @property
    def next_position(self) -> int:
        """The position the next fed token is written at."""
        if self.beam is not None:
            return self.prompt_len + self.beam.generated - 1
        return self.prompt_len + len(self.tokens) - 1
