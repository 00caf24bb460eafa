"""``ChatRequest``: one question about some images, with ``chat``'s options (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ixcdoc.prompt import DEFAULT_META_INSTRUCTION

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_HD = 25  # upstream model.chat's hd_num default (the same as DocModel.chat)


@dataclass
class ChatRequest:
    """What ``DocModel.chat`` takes, as one value: images, query and the keyword options."""

    images: Sequence[Image.Image | Any]
    query: str
    hd: int = DEFAULT_HD
    meta_instruction: str = DEFAULT_META_INSTRUCTION
    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    num_beams: int = 1
    tag: Any = field(default=None, compare=False)  # the caller's own label, returned untouched

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search is deterministic: num_beams > 1 needs do_sample=False")
