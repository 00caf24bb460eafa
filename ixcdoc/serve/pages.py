"""A request's images as pages: what each costs read from its header, then decoded in a budget.

Nothing is decoded until the whole request is known to fit (docs/serve.md, Limits):

1. ``open_pages``: at most ``max_images`` image parts, and every URL checked, before any is
   read; then each image's bytes (a ``data:`` URL decoded on a worker thread, an ``http(s)``
   URL fetched on the fetch threads, apart from everything else) opened through
   ``ixcdoc.inputs``, which reads only the header: PIL the image's size, PyMuPDF the first
   page's size and render DPI. ``--max-pixels`` applies there (413). Only the first page of
   a PDF (or frame of a TIFF) is read, so an image part is one page.
2. ``request_tier`` and ``check_image_tokens``: the tier and the image tokens from those
   sizes (400 past the model's positions).
3. ``decode_pages``: the pages decoded one at a time, each holding its native pixels from the
   ``PixelBudget`` shared by all requests, and shrunk at once to the tier's size (an
   ``HDImage``, what the model reads): a queued request holds tier-sized images, never its
   native pages.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ixcdoc.errors import UsageError
from ixcdoc.serve.budget import PixelBudget
from ixcdoc.serve.images import FETCH_TIMEOUT_S, data_url_bytes, fetch, fetched

if TYPE_CHECKING:
    from ixcdoc.config import ModelConfig
    from ixcdoc.inputs import Document
    from ixcdoc.preprocess import HDImage

MAX_IMAGES = 16  # image parts per request; 16384 positions hold 11 pages at the ask floor, HD9
FETCH_THREADS = 4  # http(s) fetches at once, on threads of their own


@dataclass(frozen=True)
class PageLimits:
    """What a request's images may be: how many, how large, and where they may come from."""

    max_images: int  # image parts per request
    max_pixels: int  # one page, as --max-pixels
    max_bytes: int  # one fetched image (the body limit)
    allow_urls: bool  # fetch http(s) URLs
    fetch_timeout: float = FETCH_TIMEOUT_S  # one whole fetch


@dataclass
class Page:
    """One image part: its document open with only the header read, its first page's size."""

    doc: Document
    height: int  # pixels, as the page will decode
    width: int

    @property
    def pixels(self) -> int:
        """height * width: the pixels decoding it makes (the budget counts these)."""
        return self.height * self.width


def _open(data: bytes | str, index: int, max_pixels: int) -> Page:
    """A fetched image's bytes, or a data: URL decoded here, opened at its header."""
    from ixcdoc.inputs import open_bytes

    raw = data_url_bytes(data) if isinstance(data, str) else data
    doc = open_bytes(raw, source=f"image {index + 1}", max_pixels=max_pixels)
    try:
        info = doc.page_info(1)
    except BaseException:
        doc.close()
        raise
    return Page(doc, info.native_h, info.native_w)


def request_tier(pages: Sequence[Page], model: Any, max_new_tokens: int) -> int:
    """The one tier every image of a request is read at: the largest the planner chooses for
    any of them for the ``ask`` task (``ixcdoc plan``); the task's floor without images."""
    from ixcdoc.planning import choose_tier
    from ixcdoc.tasks import ASK

    gpu = model.gpu_budget() if hasattr(model, "gpu_budget") else None
    quant = getattr(model, "precision", "bf16")
    tiers = [
        choose_tier(
            p.height,
            p.width,
            ASK,
            cfg=model.config,
            gpu=gpu,
            quant=quant,
            max_new_tokens=max_new_tokens,
        ).hd
        for p in pages
    ]
    return max(tiers, default=ASK.hd_floor)


def check_image_tokens(pages: Sequence[Page], hd: int, cfg: ModelConfig) -> None:
    """UsageError (too_many_image_tokens) when the pages at tier ``hd`` take more tokens than
    the model's positions: they would only be decoded and encoded to be cut off."""
    from ixcdoc.tiling import hd_geometry

    need = sum(
        hd_geometry(p.height, p.width, hd, cfg.tile).image_tokens(cfg.vision.patch_size)
        for p in pages
    )
    if need > cfg.max_length:
        raise UsageError(
            f"{len(pages)} image(s) at HD{hd} take {need:,} tokens, over the model's "
            f"{cfg.max_length:,} positions: send fewer images or a lower ixcdoc.hd",
            code="too_many_image_tokens",
        )


def close_pages(pages: Sequence[Page]) -> None:
    """Close every page's document."""
    for page in pages:
        page.doc.close()


async def open_pages(
    urls: Sequence[str], limits: PageLimits, fetcher: Executor | None = None
) -> list[Page]:
    """Every image URL opened at its header, in order (``fetcher`` runs the http(s) fetches).

    Raises UsageError (too many images, a refused URL) before reading any image, InputError
    for an image that cannot be read or is over the pixel limit. The caller closes the pages.
    """
    if len(urls) > limits.max_images:
        raise UsageError(
            f"{len(urls)} images in one request, over this server's limit of "
            f"{limits.max_images}: send fewer",
            code="too_many_images",
        )
    remote = [fetched(url, allow_urls=limits.allow_urls) for url in urls]
    loop = asyncio.get_running_loop()
    pages: list[Page] = []
    try:
        for i, (url, is_remote) in enumerate(zip(urls, remote, strict=True)):
            data: bytes | str = url
            if is_remote:
                data = await loop.run_in_executor(
                    fetcher, fetch, url, limits.max_bytes, limits.fetch_timeout
                )
            pages.append(await asyncio.to_thread(_open, data, i, limits.max_pixels))
    except BaseException:
        close_pages(pages)
        raise
    return pages


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _decode(page: Page, hd: int, tile: int) -> HDImage:
    from ixcdoc.preprocess import HDImage, hd_transform

    native = page.doc.render(1).image
    small = HDImage(None, hd_transform(native, hd, tile), hd, tile, native=native.size)
    del native
    # PIL holds a large page in 16 MiB blocks; freed on a worker thread, glibc keeps them in
    # that thread's arena (a 100 MP page left ~390 MB resident per thread), so every thread
    # that ever decoded one would keep a page's worth outside the budget. Give them back.
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return small


async def decode_pages(
    pages: Sequence[Page], hd: int, tile: int, budget: PixelBudget
) -> list[HDImage]:
    """Each page decoded within ``budget`` and shrunk to tier ``hd`` at once, in order."""
    out: list[HDImage] = []
    for page in pages:
        async with budget.hold(page.pixels):
            work = asyncio.ensure_future(asyncio.to_thread(_decode, page, hd, tile))
            try:
                out.append(await asyncio.shield(work))
            except asyncio.CancelledError:
                await asyncio.wait({work})  # its thread holds the pixels until it ends
                raise
    return out
