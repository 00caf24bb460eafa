"""The library front door: turn arguments into page jobs, plan them, and (with a loaded model)
run the tasks. The CLI is a thin layer over this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ixcdoc.config import ModelConfig
from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.gpu import GpuInfo, assumed_gpu, detect_gpu
from ixcdoc.planning import choose_tier
from ixcdoc.tasks import preset


@dataclass
class PageJob:
    """One page of one open document, to plan or to run."""

    doc: Any  # ixcdoc.inputs.Document
    page: int


def iter_page_jobs(
    paths: Sequence[str],
    *,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    stdin: BinaryIO | None = None,
) -> Iterator[PageJob | IxcdocError]:
    """Expand paths into page jobs in order; input problems are yielded, not raised."""
    from ixcdoc.inputs import DEFAULT_MAX_PIXELS, open_sources, select_pages

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    for item in open_sources(list(paths), stdin=stdin, password=password, max_pixels=limit):
        if isinstance(item, IxcdocError):
            yield item
            continue
        try:
            numbers = select_pages(pages, item.page_count, source=item.source)
        except InputError as e:
            item.close()
            yield e
            continue
        try:
            for n in numbers:
                yield PageJob(item, n)
        finally:
            item.close()  # the consumer is done with the last page when it asks for more


def plan_pages(
    paths: Sequence[str],
    *,
    task: str = "extract",
    hd: int | None = None,
    pages: str | None = None,
    password: str | None = None,
    max_pixels: int | None = None,
    vram_gib: float | None = None,
    max_new_tokens: int | None = None,
    stdin: BinaryIO | None = None,
    cfg: ModelConfig | None = None,
    on_error: Callable[[IxcdocError], None] | None = None,
) -> tuple[list[dict[str, Any]], list[IxcdocError]]:
    """Plan every page without loading the model: one dict per page, and the failures."""
    cfg = cfg or ModelConfig()
    tp = preset(task)
    gpu: GpuInfo | None = assumed_gpu(vram_gib) if vram_gib else detect_gpu()
    rows: list[dict[str, Any]] = []
    failures: list[IxcdocError] = []
    for job in iter_page_jobs(
        paths, pages=pages, password=password, max_pixels=max_pixels, stdin=stdin
    ):
        if isinstance(job, IxcdocError):
            failures.append(job)
            if on_error:
                on_error(job)
            continue
        try:
            info = job.doc.page_info(job.page)
        except InputError as e:
            failures.append(e)
            if on_error:
                on_error(e)
            continue
        choice = choose_tier(
            info.native_h,
            info.native_w,
            tp,
            hd=hd,
            cfg=cfg,
            gpu=gpu,
            max_new_tokens=max_new_tokens,
        )
        g = choice.geometry
        rows.append(
            {
                "source": info.source,
                "page": info.page,
                "page_count": info.page_count,
                "native_size": [info.native_h, info.native_w],
                "render_dpi": None if info.dpi is None else round(info.dpi, 2),
                "dpi_rule": info.dpi_rule,
                "task": tp.name,
                "tier": choice.hd,
                "tier_reason": choice.reason,
                "grid": [g.rows, g.cols],
                "resized_size": [g.resized_h, g.resized_w],
                "padded_size": [g.padded_h, g.padded_w],
                "image_tokens": choice.image_tokens,
                "vram_gib": {q: round(e.total_gib, 2) for q, e in choice.vram.items()},
                "fits": None if gpu is None else choice.fits,
                "gpu": None if gpu is None else gpu.name,
            }
        )
    return rows, failures


TIER_LADDER = (1, 4, 9, 16, 25, 36, 45, 55, 65)


def tier_rows(
    *,
    aspect: tuple[float, float] = (1.0, 1.0),
    tiers: Sequence[int] = TIER_LADDER,
    vram_gib: float | None = None,
    max_new_tokens: int = 512,
    cfg: ModelConfig | None = None,
) -> list[dict[str, Any]]:
    """The tier table for a page of aspect (h, w): grid, tokens, estimated VRAM, fit."""
    from ixcdoc.tasks import TaskPreset

    cfg = cfg or ModelConfig()
    gpu = assumed_gpu(vram_gib) if vram_gib else detect_gpu()
    h, w = aspect
    scale = 10000 / max(h, w)  # a large page, so every tier's budget is the limit
    ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
    any_task = TaskPreset("tiers", "", 1, 10**6, max_new_tokens, "")
    rows = []
    for hd in tiers:
        c = choose_tier(ph, pw, any_task, hd=hd, cfg=cfg, gpu=gpu)
        rows.append(
            {
                "tier": hd,
                "grid": [c.geometry.rows, c.geometry.cols],
                "padded_size": [c.geometry.padded_h, c.geometry.padded_w],
                "image_tokens": c.image_tokens,
                "vram_gib": {q: round(e.total_gib, 2) for q, e in c.vram.items()},
                "fits": None if gpu is None else c.fits,
            }
        )
    return rows
