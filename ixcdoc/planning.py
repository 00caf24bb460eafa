"""Choosing the HD tier for a page, and why, without a model: shared by ``plan``, ``tiers``,
``doctor`` and the batch run.

Automatic tier (``--hd auto``): the smallest tier whose crop budget holds the page at its
native resolution without shrinking it, clamped to the task's floor and ceiling, then lowered
while the estimated peak VRAM would not fit the GPU (when one is known). ``--hd N`` forces N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.config import ModelConfig
from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.gpu import GpuInfo, assumed_gpu, detect_gpu
from ixcdoc.tasks import TaskPreset, preset
from ixcdoc.tiling import TIER_LADDER, TierGeometry, hd_geometry, min_tier_for_native
from ixcdoc.vram import PROMPT_TEXT_TOKENS, QUANTS, VramEstimate, estimate_vram

if TYPE_CHECKING:
    from ixcdoc.inputs import PageInfo, Sources

VRAM_HEADROOM = 0.95  # use at most this share of free memory


@dataclass(frozen=True)
class TierChoice:
    """The tier for one page with its geometry, token count, memory and the reason."""

    hd: int
    reason: str
    geometry: TierGeometry
    image_tokens: int
    vram: dict[str, VramEstimate]  # by precision
    fits: dict[str, bool | None]  # by precision; None when no GPU is known

    @property
    def grid(self) -> tuple[int, int]:
        return (self.geometry.rows, self.geometry.cols)


def _estimate(
    cfg: ModelConfig, h: int, w: int, hd: int, max_new_tokens: int
) -> tuple[TierGeometry, int, dict[str, VramEstimate]]:
    g = hd_geometry(h, w, hd, cfg.tile)
    n = g.image_tokens(cfg.vision.patch_size)
    est = {
        q: estimate_vram(cfg, n, g.crops, quant=q, max_new_tokens=max_new_tokens) for q in QUANTS
    }
    return g, n, est


def _fits(est: VramEstimate, gpu: GpuInfo | None) -> bool | None:
    if gpu is None:
        return None
    return est.total <= gpu.free_bytes * VRAM_HEADROOM


def fits_context(cfg: ModelConfig, image_tokens: int, max_new_tokens: int) -> bool:
    """True when a page's image tokens, the prompt text and the answer fit the positions the
    model takes (``max_length``, where upstream truncates the spliced prompt)."""
    return image_tokens + PROMPT_TEXT_TOKENS + max_new_tokens <= cfg.max_length


def _auto_tier(
    native_h: int,
    native_w: int,
    task: TaskPreset,
    cfg: ModelConfig,
    gpu: GpuInfo | None,
    quant: str,
    mnt: int,
) -> tuple[int, str, TierGeometry, int, dict[str, VramEstimate]]:
    need = min_tier_for_native(native_h, native_w, cfg.tile)
    if need < task.hd_floor:
        tier, reason = task.hd_floor, f"native fits HD{need}; {task.name} floor {task.hd_floor}"
    elif need > task.hd_ceiling:
        tier = task.hd_ceiling
        reason = f"native needs HD{need}; {task.name} ceiling {task.hd_ceiling} (downscaled)"
    else:
        tier, reason = need, "smallest tier at native resolution"
    g, n, est = _estimate(cfg, native_h, native_w, tier, mnt)
    if gpu is not None and quant in est and not _fits(est[quant], gpu):
        lowered = tier
        while lowered > 1 and not _fits(est[quant], gpu):
            lowered -= 1
            g, n, est = _estimate(cfg, native_h, native_w, lowered, mnt)
        if _fits(est[quant], gpu):
            reason = f"HD{tier} needs more than {gpu.name} has free in {quant}; lowered"
            tier = lowered
        else:
            g, n, est = _estimate(cfg, native_h, native_w, tier, mnt)
            reason += f"; does not fit {gpu.name} in {quant} at any tier"
    return tier, reason, g, n, est


def choose_tier(
    native_h: int,
    native_w: int,
    task: TaskPreset,
    *,
    hd: int | None = None,
    cfg: ModelConfig | None = None,
    gpu: GpuInfo | None = None,
    quant: str = "bf16",
    max_new_tokens: int | None = None,
) -> TierChoice:
    """Pick the tier for a page of native size (h, w); ``hd`` forces one."""
    cfg = cfg or ModelConfig()
    mnt = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    if hd is not None:
        tier, reason = hd, "forced by --hd"
        g, n, est = _estimate(cfg, native_h, native_w, tier, mnt)
    else:
        tier, reason, g, n, est = _auto_tier(native_h, native_w, task, cfg, gpu, quant, mnt)
    if not fits_context(cfg, n, mnt):
        # The spliced prompt would be cut at the model's positions (upstream truncates
        # silently): take the largest tier below that still fits, and say so.
        wanted, lowered = tier, tier
        while lowered > 1 and not fits_context(cfg, n, mnt):
            lowered -= 1
            g, n, est = _estimate(cfg, native_h, native_w, lowered, mnt)
        tier = lowered
        reason = (
            f"{reason}; HD{wanted} with {mnt} new tokens exceeds the model's "
            f"{cfg.max_length} positions, lowered to HD{tier}"
        )
        if not fits_context(cfg, n, mnt):
            reason += f" (still too long: lower --max-new-tokens below {mnt})"
    return TierChoice(tier, reason, g, n, est, {q: _fits(e, gpu) for q, e in est.items()})


def lower_tier(h: int, w: int, hd: int, tile: int) -> int | None:
    """The next tier below ``hd`` that really uses fewer crops, or None below HD1."""
    crops = hd_geometry(h, w, hd, tile).crops
    for lower in range(hd - 1, 0, -1):
        if hd_geometry(h, w, lower, tile).crops < crops:
            return lower
    return None


def _gib(choice: TierChoice) -> dict[str, float]:
    return {q: round(e.total_gib, 2) for q, e in choice.vram.items()}


def batch_auto(
    cfg: ModelConfig, choice: TierChoice, gpu: GpuInfo | None, max_new_tokens: int
) -> dict[str, int] | None:
    """What ``--batch-size auto`` would run at once on ``gpu``: pages of this tier in flight,
    per precision (None without a GPU; 0 when not even one fits)."""
    if gpu is None:
        return None
    from ixcdoc.vram import auto_batch_size

    free = int(gpu.free_bytes * VRAM_HEADROOM)
    return {
        q: auto_batch_size(cfg, free, choice.image_tokens, choice.geometry.crops, max_new_tokens, q)
        for q in QUANTS
    }


def tier_row(
    choice: TierChoice, gpu: GpuInfo | None, cfg: ModelConfig | None = None, max_new: int = 512
) -> dict[str, Any]:
    """The columns every table shows for a tier choice: tier, grid, sizes, tokens, VRAM, fit,
    and the batch size auto would pick on the GPU."""
    g = choice.geometry
    return {
        "tier": choice.hd,
        "grid": [g.rows, g.cols],
        "padded_size": [g.padded_h, g.padded_w],
        "image_tokens": choice.image_tokens,
        "vram_gib": _gib(choice),
        "fits": None if gpu is None else choice.fits,
        "batch_auto": batch_auto(cfg or ModelConfig(), choice, gpu, max_new),
    }


def page_row(
    info: PageInfo,
    task: TaskPreset,
    choice: TierChoice,
    gpu: GpuInfo | None,
    cfg: ModelConfig | None = None,
    max_new: int = 512,
) -> dict[str, Any]:
    """One row of ``ixcdoc plan``: the page, how it renders, and its tier choice."""
    g = choice.geometry
    row = tier_row(choice, gpu, cfg, max_new)
    return {
        "source": info.source,
        "page": info.page,
        "page_count": info.page_count,
        "native_size": [info.native_h, info.native_w],
        "render_dpi": None if info.dpi is None else round(info.dpi, 2),
        "dpi_rule": info.dpi_rule,
        "task": task.name,
        "tier": row["tier"],
        "tier_reason": choice.reason,
        "grid": row["grid"],
        "resized_size": [g.resized_h, g.resized_w],
        "padded_size": row["padded_size"],
        "image_tokens": row["image_tokens"],
        "vram_gib": row["vram_gib"],
        "fits": row["fits"],
        "batch_auto": row["batch_auto"],
        "gpu": None if gpu is None else gpu.name,
    }


def plan_gpu(vram_gib: float | None) -> GpuInfo | None:
    """The GPU a plan is for: an assumed one with ``vram_gib`` GiB free, else the one present."""
    return assumed_gpu(vram_gib) if vram_gib else detect_gpu()


_DETECT: Any = object()  # plan_pages' default GPU: the one ``--vram`` names, else the one present


def plan_pages(
    sources: Sources,
    *,
    task: str | TaskPreset = "extract",
    hd: int | None = None,
    vram_gib: float | None = None,
    max_new_tokens: int | None = None,
    cfg: ModelConfig | None = None,
    gpu: GpuInfo | None = _DETECT,
    quant: str = "bf16",
) -> Iterator[dict[str, Any] | IxcdocError]:
    """Plan every page without loading the model, in input order: a row per page, or the
    input error where a file or page cannot be read.

    ``gpu`` and ``quant``: the GPU and precision the tier must fit (default: ``plan_gpu``, and
    bf16); a loaded model passes its own (``DocModel.gpu_budget()``, its precision), so that
    the rows show the tier its runs will choose.
    """
    cfg = cfg or ModelConfig()
    tp = task if isinstance(task, TaskPreset) else preset(task)
    if gpu is _DETECT:
        gpu = plan_gpu(vram_gib)
    for item in sources.documents():
        if isinstance(item, IxcdocError):
            yield item
            continue
        doc, numbers = item
        for n in numbers:
            try:
                info = doc.page_info(n)
            except InputError as e:
                yield e
                continue
            choice = choose_tier(
                info.native_h,
                info.native_w,
                tp,
                hd=hd,
                cfg=cfg,
                gpu=gpu,
                quant=quant,
                max_new_tokens=max_new_tokens,
            )
            mnt = tp.max_new_tokens if max_new_tokens is None else max_new_tokens
            row = page_row(info, tp, choice, gpu, cfg, mnt)
            row["flags"] = list(doc.page_flags(n))  # repaired, low_dpi, ... as records will say
            yield row


def tier_rows(
    *,
    aspect: tuple[float, float] = (1.0, 1.0),
    tiers: Sequence[int] = TIER_LADDER,
    vram_gib: float | None = None,
    max_new_tokens: int = 512,
    cfg: ModelConfig | None = None,
) -> list[dict[str, Any]]:
    """The tier table for a page of aspect (h, w): grid, tokens, estimated VRAM, fit."""
    cfg = cfg or ModelConfig()
    gpu = plan_gpu(vram_gib)
    h, w = aspect
    scale = 10000 / max(h, w)  # a large page, so every tier's budget is the limit
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    any_task = TaskPreset("tiers", "", 1, 10**6, max_new_tokens)
    return [
        tier_row(choose_tier(ph, pw, any_task, hd=hd, cfg=cfg, gpu=gpu), gpu, cfg, max_new_tokens)
        for hd in tiers
    ]


TierFor = Callable[["PageInfo"], TierChoice]
