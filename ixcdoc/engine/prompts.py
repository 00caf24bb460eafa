"""The one prompt path: chat template -> text and image parts -> vision -> spliced embeddings.

``DocModel.chat`` (one request, its images one by one) and the engine (every admitted page's
crops through the vision tower in one batch) both build a prompt from these steps:

1. ``prompt_parts``: the chat template, split at ``<ImageHere>`` into token ids and images;
2. ``part_pixels``: each image part's normalized HD tensor (the ``Loaded.pixels`` function);
3. ``XComposer2.encode_images``: the image embeddings (the one vision encode);
4. ``embed_parts``: ids and embeddings spliced into ``inputs_embeds`` + ``im_mask``.

``Loaded`` is what an engine runs on: the network, its tokenizer and the pixel function, with
the hooks that let its owner guard the KV cache; ``DocModel.loaded`` builds one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ixcdoc.prompt import ImagePart, TextPart, build_chat_prompt, split_prompt
from ixcdoc.tiling import hd_geometry

if TYPE_CHECKING:
    from ixcdoc.config import ModelConfig
    from ixcdoc.model.xcomposer import XComposer2
    from ixcdoc.tokenizer import Tokenizer

Part = TextPart | ImagePart
PixelFn = Callable[[Any, int], torch.Tensor]  # (page image, hd) -> [1, 3, H, W] on the device
CacheHook = Callable[[Any], None]  # called with the engine that starts or stops


def _no_owner(engine: Any) -> None:
    """An engine on a bare network: nobody else uses its KV cache."""


@dataclass(frozen=True)
class Loaded:
    """A loaded network with what it needs to read pages: what the engine is handed."""

    net: XComposer2
    tokenizer: Tokenizer
    pixels: PixelFn
    device: torch.device
    claim_cache: CacheHook = _no_owner  # a started engine owns the KV cache from here...
    release_cache: CacheHook = _no_owner  # ...until its thread ends

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def tile(self) -> int:
        """Side of one HD crop in pixels."""
        return self.net.config.tile


@dataclass
class PromptEmbeds:
    """A spliced prompt ready for the decoder, and what went into it."""

    inputs_embeds: torch.Tensor  # [1, L, D]
    im_mask: torch.Tensor  # [1, L] bool, True at image positions
    grids: list[tuple[int, int]]  # (rows, cols) per image
    n_image_tokens: int  # over all images, before truncation
    prompt_tokens: int  # L after truncation
    truncated: bool  # the spliced sequence was cut at config.max_length
    vision_ms: float = 0.0


def prompt_parts(
    tokenizer: Tokenizer, query: str, meta_instruction: str, n_images: int
) -> list[Part]:
    """The chat prompt of ``query`` as token ids and image slots, in order."""
    prompt = build_chat_prompt(query, meta_instruction=meta_instruction, n_images=n_images)
    return split_prompt(prompt, tokenizer, n_images)


def grid(image: Any, hd: int, tile: int) -> tuple[int, int]:
    """(rows, cols) of crops ``image`` (PIL, (W, H) size) gets at tier ``hd``."""
    w, h = image.size  # PIL (W, H) -> our (H, W)
    g = hd_geometry(h, w, hd, tile)
    return g.rows, g.cols


def part_grids(
    parts: Sequence[Part], images: Sequence[Any], hd: int, tile: int
) -> list[tuple[int, int]]:
    """(rows, cols) of every image part at tier ``hd``, in prompt order."""
    return [grid(images[p.index], hd, tile) for p in parts if isinstance(p, ImagePart)]


def part_pixels(
    parts: Sequence[Part], images: Sequence[Any], hd: int, pixels: PixelFn
) -> list[torch.Tensor]:
    """The normalized HD tensor [1, 3, H, W] of every image part, in prompt order."""
    return [pixels(images[p.index], hd) for p in parts if isinstance(p, ImagePart)]


def embed_parts(
    net: XComposer2,
    parts: Sequence[Part],
    images: Sequence[torch.Tensor],
    grids: list[tuple[int, int]],
) -> PromptEmbeds:
    """Token ids and image embeddings [N_i, D] (one per image part, in order) spliced."""
    tensors: list[torch.Tensor] = []
    it = iter(images)
    for part in parts:
        if isinstance(part, TextPart):
            tensors.append(torch.tensor(part.ids, dtype=torch.long))
        else:
            tensors.append(next(it))
    embeds, im_mask = net.splice(tensors)
    total = sum(t.shape[0] for t in tensors)
    return PromptEmbeds(
        inputs_embeds=embeds,
        im_mask=im_mask,
        grids=grids,
        n_image_tokens=sum(e.shape[0] for e in images),
        prompt_tokens=embeds.shape[1],
        truncated=total > embeds.shape[1],
    )
