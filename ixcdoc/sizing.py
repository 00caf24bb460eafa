"""How big the batched engine is: the positions a request fills and a slot holds, and how many
slots (requests in flight) fit the memory there is (``--batch-size auto``).

The one copy of these rules. Every caller describes its largest request as a ``SlotNeed``
(plain numbers, no model or job objects: this module sits below the engine and the library
facade that call it) and asks ``slots_that_fit``; the engine checks each request with
``request_positions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ixcdoc.planning import VRAM_HEADROOM
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION, TextPart, build_chat_prompt, split_prompt
from ixcdoc.tiling import image_token_count
from ixcdoc.vram import (
    PROMPT_TEXT_TOKENS,
    auto_batch_size,
    kv_cache_bytes,
    round_positions,
)
from ixcdoc.vram import available_ram as _ram

if TYPE_CHECKING:
    from ixcdoc.config import ModelConfig
    from ixcdoc.tokenizer import Tokenizer

RAM_SHARE = 0.5  # on the CPU, the KV cache may take at most this share of the available RAM
CPU_MAX_BATCH = 64  # CPU decode gains little past this (docs/benchmarks.md, engine)


class Memory(Protocol):
    """What sizing reads of a loaded model (``DocModel`` has it)."""

    config: ModelConfig
    quant: str | None
    dtype: Any  # a torch dtype: its itemsize is the KV cache's element size

    def gpu_budget(self) -> Any:
        """An ``ixcdoc.gpu.GpuInfo`` (``free_bytes``), or None on the CPU."""
        ...


def request_positions(prompt_tokens: int, max_new_tokens: int, limit: int) -> int:
    """Cache positions one request fills: its prompt plus its answer, cut at ``limit`` (the
    model's ``max_position_embeddings``; a prompt past it is counted whole)."""
    return min(prompt_tokens + max_new_tokens, max(limit, prompt_tokens))


def slot_positions(positions: int, limit: int) -> int:
    """Positions a slot reserves for requests of up to ``positions``: rounded up to 256 so
    nearby runs share cache shapes, at most ``limit`` (never fewer than ``positions``)."""
    return max(positions, min(round_positions(positions), limit))


def served_positions(cfg: ModelConfig, max_tokens: int | None) -> int:
    """Positions the longest request a server admits fills: a prompt of ``max_length`` (the
    server refuses longer images and cuts the prompt there) plus ``max_tokens`` (None: up to the
    position limit, as ``chat`` allows). Not rounded: the server's one engine shares its
    shapes with no other run."""
    limit = int(cfg.max_position_embeddings)
    answer = max_tokens if max_tokens is not None else limit
    return request_positions(int(cfg.max_length), answer, limit)


def text_tokens(tokenizer: Tokenizer, prompt: str) -> int:
    """Tokens of the chat template and ``prompt`` around one image."""
    full = build_chat_prompt(prompt, meta_instruction=DEFAULT_META_INSTRUCTION, n_images=1)
    parts = split_prompt(full, tokenizer, 1)
    return sum(len(p.ids) for p in parts if isinstance(p, TextPart))


def max_image_tokens(cfg: ModelConfig, hd: int, max_new_tokens: int) -> int:
    """The most image tokens a page of tier at most ``hd`` can have.

    A tier of N crops gives the most tokens as N rows of one crop (each row adds a newline
    token). The planner also keeps image + prompt + answer within the model's positions,
    which bounds it further.
    """
    bound = image_token_count(hd, 1, tile=cfg.tile, patch=cfg.vision.patch_size)
    fits = cfg.max_length - PROMPT_TEXT_TOKENS - max_new_tokens
    return min(bound, fits) if fits > 0 else bound


@dataclass(frozen=True)
class SlotNeed:
    """The largest request a run sends: what one slot (and its vision batch) must hold."""

    image_tokens: int
    crops: int  # of its largest image: the vision batch it brings
    text_tokens: int
    max_new_tokens: int
    beams: int = 1  # slots each request takes

    @classmethod
    def page(
        cls,
        cfg: ModelConfig,
        tokenizer: Tokenizer,
        prompt: str,
        hd: int,
        max_new_tokens: int,
        beams: int = 1,
    ) -> SlotNeed:
        """Any page of a job asking ``prompt`` at a tier of at most ``hd``."""
        image = max_image_tokens(cfg, hd, max_new_tokens)
        return cls(image, hd, text_tokens(tokenizer, prompt), max_new_tokens, beams)

    @classmethod
    def filling(cls, cfg: ModelConfig, positions: int, crops: int) -> SlotNeed:
        """A request that fills a slot of ``positions``: an image as long as the prompt limit
        (``max_length``) allows, then an answer to the slot's end."""
        image = max(min(positions, cfg.max_length) - PROMPT_TEXT_TOKENS, 0)
        return cls(image, crops, PROMPT_TEXT_TOKENS, max(positions - image - PROMPT_TEXT_TOKENS, 0))

    def positions(self, cfg: ModelConfig) -> int:
        """Positions one slot reserves for this request (``slot_positions``)."""
        limit = int(cfg.max_position_embeddings)
        prompt = self.image_tokens + self.text_tokens
        return slot_positions(request_positions(prompt, self.max_new_tokens, limit), limit)


def available_ram() -> int:
    """Bytes of RAM left for a KV cache (``vram.available_ram``; 0 when unknown)."""
    return _ram() or 0


def slots_that_fit(model: Memory, need: SlotNeed, positions: int | None = None) -> int:
    """Requests like ``need`` (each with its beams) that fit at once: on a GPU, the memory
    model (``vram.auto_batch_size``) on the free memory; on the CPU, as many KV slots of
    ``positions`` (None: ``need.positions``) as half the available RAM holds, at most 64.
    At least 1."""
    cfg = model.config
    gpu = model.gpu_budget()
    if gpu is not None:
        n = auto_batch_size(
            cfg,
            int(gpu.free_bytes * VRAM_HEADROOM),
            need.image_tokens,
            need.crops,
            need.max_new_tokens,
            "4bit" if model.quant == "4bit" else "bf16",
            beams=need.beams,
            text_tokens=need.text_tokens,
        )
        return max(1, n)
    if positions is None:
        positions = need.positions(cfg)
    # in the model's dtype: the CPU runs float32 unless loaded in bf16
    itemsize = int(getattr(model.dtype, "itemsize", 4))
    per_slot = max(1, kv_cache_bytes(cfg, positions, itemsize) * need.beams)
    return max(1, min(CPU_MAX_BATCH, int(available_ram() * RAM_SHARE) // per_slot))
