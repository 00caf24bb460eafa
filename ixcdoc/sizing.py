"""How big the batched engine is for a job: the positions one slot must hold, and how many
slots (pages in flight) fit the memory there is: ``--batch-size auto``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ixcdoc.planning import VRAM_HEADROOM
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION, TextPart, build_chat_prompt, split_prompt
from ixcdoc.tiling import image_token_count
from ixcdoc.vram import PROMPT_TEXT_TOKENS, auto_batch_size, kv_cache_bytes
from ixcdoc.vram import available_ram as _ram

if TYPE_CHECKING:
    from ixcdoc.pagerun import Job
    from ixcdoc.runtime import DocModel

RAM_SHARE = 0.5  # on the CPU, the KV cache may take at most this share of the available RAM
CPU_MAX_BATCH = 64  # CPU decode gains little past this (docs/benchmarks.md, engine)


def text_tokens(model: DocModel, prompt: str) -> int:
    """Tokens of the chat template and ``prompt`` around one image."""
    full = build_chat_prompt(prompt, meta_instruction=DEFAULT_META_INSTRUCTION, n_images=1)
    parts = split_prompt(full, model.tokenizer, 1)
    return sum(len(p.ids) for p in parts if isinstance(p, TextPart))


def max_image_tokens(model: DocModel, job: Job) -> int:
    """The most image tokens a page of this job can have.

    The tier is at most the job's forced tier or the task's ceiling; a tier of N crops gives the
    most tokens as N rows of one crop (each row adds a newline token). The planner also keeps
    image + prompt + answer within the model's positions, which bounds it further.
    """
    cfg = model.config
    hd = job.hd if job.hd is not None else job.task.hd_ceiling
    bound = image_token_count(hd, 1, tile=cfg.tile, patch=cfg.vision.patch_size)
    fits = cfg.max_length - PROMPT_TEXT_TOKENS - job.new_tokens
    return min(bound, fits) if fits > 0 else bound


def job_positions(model: DocModel, job: Job) -> int:
    """Positions one engine slot needs for any page of ``job`` (rounded up to 256)."""
    need = max_image_tokens(model, job) + text_tokens(model, job.prompt) + job.new_tokens
    need = -(-need // 256) * 256
    return min(need, model.config.max_position_embeddings)


def available_ram() -> int:
    """Bytes of RAM left for a KV cache (``vram.available_ram``; 0 when unknown)."""
    return _ram() or 0


def auto_batch(model: DocModel, job: Job, positions: int) -> int:
    """Pages in flight that fit, each with its beams: on a GPU, the memory model
    (``vram.auto_batch_size``) on the free memory; on the CPU, as many KV slots as half the
    available RAM holds. At least 1."""
    cfg = model.config
    gpu = model.gpu_budget()
    hd = job.hd if job.hd is not None else job.task.hd_ceiling
    if gpu is not None:
        n = auto_batch_size(
            cfg,
            int(gpu.free_bytes * VRAM_HEADROOM),
            max_image_tokens(model, job),
            hd,
            job.new_tokens,
            "4bit" if model.quant == "4bit" else "bf16",
            beams=job.num_beams,
            text_tokens=text_tokens(model, job.prompt),
        )
        return max(1, n)
    # in the model's dtype: the CPU runs float32 unless --quant bf16
    per_slot = kv_cache_bytes(cfg, positions, model.dtype.itemsize) * job.num_beams
    return max(1, min(CPU_MAX_BATCH, int(available_ram() * RAM_SHARE) // per_slot))
