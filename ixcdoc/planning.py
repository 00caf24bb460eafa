"""Choosing the HD tier for a page, and why: shared by ``plan`` and the runtime pipeline.

Automatic tier (``--hd auto``): the smallest tier whose crop budget holds the page at its
native resolution without shrinking it, clamped to the task's floor and ceiling, then lowered
while the estimated peak VRAM would not fit the GPU (when one is known). ``--hd N`` forces N.
"""

from __future__ import annotations

from dataclasses import dataclass

from ixcdoc.config import ModelConfig
from ixcdoc.gpu import GpuInfo
from ixcdoc.tasks import TaskPreset
from ixcdoc.tiling import TierGeometry, hd_geometry, min_tier_for_native_tile
from ixcdoc.vram import QUANTS, VramEstimate, estimate_vram

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
        g, n, est = _estimate(cfg, native_h, native_w, hd, mnt)
        return TierChoice(
            hd, "forced by --hd", g, n, est, {q: _fits(e, gpu) for q, e in est.items()}
        )
    need = min_tier_for_native_tile(native_h, native_w, cfg.tile)
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
    return TierChoice(tier, reason, g, n, est, {q: _fits(e, gpu) for q, e in est.items()})
