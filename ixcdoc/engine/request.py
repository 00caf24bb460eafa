"""``ChatRequest``: one question about some images, with ``chat``'s options (no torch here).

The one request value: ``DocModel.chat_batch``, the engine, the batch runner and the server's
backends all take it. Its decoding defaults are ``config.SamplingConfig``'s, the only copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ixcdoc.config import SamplingConfig
from ixcdoc.errors import UsageError
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_HD = 25  # upstream model.chat's hd_num default (DocModel.chat reads it from here)
_S = SamplingConfig()  # the decoding defaults
SPECULATE_MODES = ("auto", "off")  # ChatRequest.speculate, --speculate


def check_speculate(mode: object) -> None:
    """UsageError (one line) unless ``mode`` is one of ``SPECULATE_MODES``."""
    if mode not in SPECULATE_MODES:
        raise UsageError(f"speculate must be one of {', '.join(SPECULATE_MODES)}, got {mode!r}")


@dataclass
class ChatRequest:
    """What ``DocModel.chat`` takes, as one value: images, query and the keyword options."""

    images: Sequence[Image.Image | Any]
    query: str
    hd: int = DEFAULT_HD
    meta_instruction: str = DEFAULT_META_INSTRUCTION
    max_new_tokens: int = _S.max_new_tokens
    do_sample: bool = _S.do_sample
    temperature: float = _S.temperature
    top_p: float = _S.top_p
    top_k: int = _S.top_k
    repetition_penalty: float = _S.repetition_penalty
    seed: int | None = None
    num_beams: int = 1
    # Text the answer is likely to copy (a page's text layer): the engine tokenizes it with
    # the model's tokenizer (no BOS) and proposes its continuations, verified exactly
    # (docs/architecture.md, Speculative decoding); or token ids of that tokenizer, used as
    # they are. None: proposals from the own output only.
    draft: str | Sequence[int] | None = field(default=None, repr=False)
    speculate: str = "auto"  # "auto": speculate where it pays (greedy rows); "off": never
    tag: Any = field(default=None, compare=False)  # the caller's own label, returned untouched

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search is deterministic: num_beams > 1 needs do_sample=False")
        check_speculate(self.speculate)
        d = self.draft
        ids = isinstance(d, (list, tuple)) and all(type(t) is int for t in d)
        if not (d is None or isinstance(d, str) or ids):
            raise UsageError("draft must be text, token ids or None")

    def chat_options(self) -> dict[str, Any]:
        """The keyword options of ``DocModel.chat(images, query, **options)``."""
        return {
            "hd": self.hd,
            "meta_instruction": self.meta_instruction,
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "num_beams": self.num_beams,
            "draft": self.draft,
            "speculate": self.speculate,
        }
