"""Builders for the inputs tests: PDFs and images, made in memory or tmp_path at test time."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import pymupdf
from PIL import Image

LETTER = (612.0, 792.0)  # (width, height) in points, PDF order


def noise_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A greyscale noise array [h, w] uint8: any resampling would change its pixels."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def png_bytes(im: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by a token IDAT (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def add_text_page(
    doc: pymupdf.Document,
    spans: Sequence[tuple[float, str]],
    *,
    size: tuple[float, float] = LETTER,
    rotate: int = 0,
    render_mode: int = 0,
) -> pymupdf.Page:
    """A page with one line per (fontsize, text), top to bottom."""
    page = doc.new_page(width=size[0], height=size[1])
    y = 36.0
    for fontsize, text in spans:
        y += fontsize * 1.3
        page.insert_text((36, y), text, fontsize=fontsize, render_mode=render_mode)
    if rotate:
        page.set_rotation(rotate)
    return page


def add_image_page(
    doc: pymupdf.Document,
    image: bytes,
    *,
    size: tuple[float, float] = LETTER,
    rect: pymupdf.Rect | None = None,
    rotate: int = 0,
) -> pymupdf.Page:
    """A page showing one image stretched over ``rect`` (default: the whole page)."""
    page = doc.new_page(width=size[0], height=size[1])
    page.insert_image(rect or page.rect, stream=image, keep_proportion=False)
    if rotate:
        page.set_rotation(rotate)
    return page
