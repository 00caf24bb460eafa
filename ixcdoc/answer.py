"""``Answer``: what ``DocModel.chat`` (and every engine request) returns. Pure data, so the
engine below the runtime and the runtime itself share one definition."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Answer:
    """The result of ``DocModel.chat``."""

    text: str
    token_ids: list[int]
    stop_reason: str  # stop_token | max_new_tokens | max_length | callback | hook
    hd: int
    grids: list[tuple[int, int]]
    n_image_tokens: int
    prompt_tokens: int
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    stop_detail: str | None = None
    # Speculative decoding (docs/architecture.md): tokens in the tokenized draft text, and the
    # proposed tokens the model accepted, i.e. produced without a decode step of their own.
    # accepted_tokens counts proposals from the draft text and from the answer's own earlier
    # output alike (both are verified the same way); 0 when nothing was speculated.
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def grid(self) -> tuple[int, int] | None:
        """(rows, cols) of the first image (the usual one-page case), None without images."""
        return self.grids[0] if self.grids else None

    @property
    def tier(self) -> int:
        """The HD tier used (alias of ``hd``)."""
        return self.hd
