"""The upstream IXC2-4KHD chat template and the split of a prompt around its images.

Template (``model.chat`` path, architecture doc §4.2)::

    [UNUSED_TOKEN_146]system\\n{meta}[UNUSED_TOKEN_145]\\n          (only when meta is non-empty)
    [UNUSED_TOKEN_146]user\\n{q}[UNUSED_TOKEN_145]\\n[UNUSED_TOKEN_146]assistant\\n{a}[UNUSED_TOKEN_145]\\n
    ...                                                              (one pair per history turn)
    [UNUSED_TOKEN_146]user\\n{query}[UNUSED_TOKEN_145]\\n[UNUSED_TOKEN_146]assistant\\n

The prompt is then split on ``<ImageHere>`` and every non-empty text part is tokenized on its
own with a leading BOS: an upstream quirk of 4KHD that the reference ids confirm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ixcdoc.errors import UsageError
from ixcdoc.tokenizer import ROLE_START, TURN_END

IMAGE_PLACEHOLDER = "<ImageHere>"

DEFAULT_META_INSTRUCTION = "\n".join(
    [
        "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).",
        "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model "
        "that is developed by Shanghai AI Laboratory (上海人工智能实验室). "
        "It is designed to be helpful, honest, and harmless.",
        "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language "
        "chosen by the user such as English and 中文.",
        "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses "
        "effectively based on the provided image.",
    ]
)


class _Encoder(Protocol):
    def encode(self, text: str, bos: bool = True) -> list[int]: ...


@dataclass
class TextPart:
    """A text span of the prompt and its token ids (BOS first)."""

    ids: list[int]
    text: str


@dataclass(frozen=True)
class ImagePart:
    """The place of image number ``index`` (0-based) in the spliced sequence."""

    index: int


def _turn(role: str, text: str) -> str:
    return f"{ROLE_START}{role}\n{text}{TURN_END}\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def build_chat_prompt(
    query: str,
    *,
    meta_instruction: str = DEFAULT_META_INSTRUCTION,
    n_images: int = 1,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """The full upstream chat string for query, with one ``<ImageHere>`` per image.

    When the prompt holds fewer placeholders than images, the missing ones are put at the start
    of the query (where upstream examples put the image); more placeholders than images is a
    UsageError naming both counts. Placeholders are counted over the whole prompt, history
    included, because ``split_prompt`` splices images into the whole prompt.
    """
    if n_images < 0:
        raise UsageError(f"the number of images must be >= 0, got {n_images}")
    head = _turn("system", meta_instruction) if meta_instruction else ""
    for user, assistant in history:
        head += _turn("user", user) + _turn("assistant", assistant)
    found = head.count(IMAGE_PLACEHOLDER) + query.count(IMAGE_PLACEHOLDER)
    if found > n_images:
        raise UsageError(
            f"the prompt has {_plural(found, IMAGE_PLACEHOLDER + ' placeholder')} "
            f"but {_plural(n_images, 'image')} {'was' if n_images == 1 else 'were'} given"
        )
    query = IMAGE_PLACEHOLDER * (n_images - found) + query
    return head + _turn("user", query) + f"{ROLE_START}assistant\n"


def split_prompt(prompt: str, tokenizer: _Encoder, n_images: int) -> list[TextPart | ImagePart]:
    """Split a prompt on ``<ImageHere>``; each non-empty text part is tokenized with its own BOS."""
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) != n_images + 1:
        raise UsageError(
            f"the prompt has {_plural(len(pieces) - 1, IMAGE_PLACEHOLDER + ' placeholder')} "
            f"but {_plural(n_images, 'image')} {'was' if n_images == 1 else 'were'} given"
        )
    parts: list[TextPart | ImagePart] = []
    for i, text in enumerate(pieces):
        if text:
            parts.append(TextPart(ids=tokenizer.encode(text, bos=True), text=text))
        if i < n_images:
            parts.append(ImagePart(index=i))
    return parts
