"""Raster images (PNG, JPEG, WebP, TIFF, BMP, GIF) as documents, decoded to RGB at native size."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from ixcdoc.errors import InputError
from ixcdoc.inputs.document import FRAMES_DROPPED, Document, PageInfo, RenderedPage

WHITE = (255, 255, 255)
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Frames up to this many pixels decode without touching PIL's global bomb limit (PIL's own
# default limit is ~89 MP, so nothing this size can trip it).
_UNGUARDED_PIXELS = 64_000_000

# We check every image's header size against our own --max-pixels before decoding, so PIL's
# global DecompressionBombWarning/Error check must not fire first (it would surface raw, and it
# would refuse images the user allowed with a larger --max-pixels). Image.MAX_IMAGE_PIXELS is
# process-global, so it is lifted only under this lock, only around header parsing and the
# decoding of very large frames, and always restored.
_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def too_large_error(
    source: str, h: int, w: int, max_pixels: int, *, page: int | None = None, what: str = "image"
) -> InputError:
    """The too_large error for an (h, w) page over the --max-pixels limit."""
    return InputError(
        source,
        f"{what} is {w}x{h} pixels ({h * w:,}), over the {max_pixels:,}-pixel limit; "
        f"--max-pixels {h * w} or more raises it",
        code="too_large",
        page=page,
    )


def _scale_16bit(im: Image.Image) -> Image.Image:
    # 16-bit samples (0..65535) to 8 bits by rounding v * 255 / 65535; PIL's own "I;16" -> "L"
    # conversion clips instead of scaling. Mode "I" (32-bit) is read as 16-bit data.
    a = np.asarray(im).astype(np.int64)
    np.clip(a, 0, 65535, out=a)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))


def _scale_float(im: Image.Image) -> Image.Image:
    # Float samples: [0, 1] data is scaled to [0, 255]; anything else is taken as 0..255.
    a = np.nan_to_num(np.asarray(im, dtype=np.float32))
    if a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any decoded PIL image to RGB: alpha composited on white, 16-bit scaled down.

    Returns ``im`` itself when it is already RGB. Raises ValueError for modes PIL cannot turn
    into RGB (e.g. LAB).
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        return _scale_16bit(im).convert("RGB")
    if mode == "F":
        return _scale_float(im).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", im.size, WHITE)
        out.paste(rgba, (0, 0), rgba.getchannel("A"))
        return out
    # L, 1, P, CMYK (PIL: r = (255 - c)(255 - k) / 255), YCbCr.
    return im.convert("RGB")


@cache
def _pil_uprights_tiff() -> bool:
    """True when this Pillow applies a TIFF's orientation itself (size at open, pixels at load).

    Newer Pillow releases do; older ones leave it to the caller. Probed once on a 2x1 TIFF
    with orientation 6 rather than by version number.
    """
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = 6
    buf = io.BytesIO()
    Image.new("L", (2, 1)).save(buf, "TIFF", exif=exif.tobytes())
    with Image.open(buf, formats=["TIFF"]) as im:
        return im.size == (1, 2)


def _pending_orientation(im: Image.Image) -> int:
    """The orientation ixcdoc still has to apply: 1 where Pillow already did (TIFF, newer)."""
    if im.format == "TIFF" and _pil_uprights_tiff():
        return 1
    return exif_orientation(im)


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8) of the current frame, read from the header only; 1 if none."""
    try:
        if im.format == "TIFF":
            value = im.tag_v2.get(_ORIENTATION_TAG, 1)  # type: ignore[attr-defined]
        elif im.format == "PNG":
            # PngImageFile.getexif() decodes the whole image when eXIf follows IDAT; look only
            # at what the header gave, so page_info and render agree.
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(_ORIENTATION_TAG, 1)
        else:
            value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


class ImageDocument(Document):
    """A raster image file: one page (TIFF: one page per frame; GIF/WebP/APNG: first frame)."""

    kind = "image"

    def __init__(
        self,
        source: str,
        path: Path | None,
        data: bytes | None,
        *,
        format: str,
        max_pixels: int,
        note: str | None = None,
        note_flag: str | None = None,
    ) -> None:
        super().__init__(source, path, data, format=format, note=note, note_flag=note_flag)
        self.max_pixels = max_pixels
        self._lock = threading.RLock()
        self._infos: dict[int, PageInfo] = {}
        self._header: Image.Image | None = self._open_pil()
        try:
            frames = int(getattr(self._header, "n_frames", 1) or 1)
            if format == "TIFF":
                self.page_count = frames
            else:
                self.page_count = 1
                if frames > 1:
                    self.add_note(
                        f"{format} with {frames} frames: only the first frame is read",
                        FRAMES_DROPPED,
                    )
            w, h = self._header.size
            if h * w > max_pixels:
                raise too_large_error(source, h, w, max_pixels)
            if self.page_count == 1:
                # All page_info needs is known now: let go of the file handle, so a caller
                # holding many open image documents does not run out of descriptors.
                self.page_info(1)
                self._header.close()
                self._header = None
        except InputError:
            self._close_header()
            raise
        except Exception as e:
            self._close_header()
            raise InputError(source, f"cannot read this {format}: {e}", code="corrupt") from e

    def _close_header(self) -> None:
        if self._header is not None:
            self._header.close()
            self._header = None

    def _open_pil(self) -> Image.Image:
        fp: str | io.BytesIO = io.BytesIO(self._data) if self._data is not None else str(self.path)
        try:
            with _pil_bomb_check_off():
                return Image.open(fp, formats=[self.format])
        except PermissionError as e:
            raise InputError(self.source, "permission denied", code="unreadable") from e
        except Exception as e:  # UnidentifiedImageError, SyntaxError, struct.error, ...
            raise InputError(
                self.source, f"cannot read this {self.format}: {e}", code="corrupt"
            ) from e

    def page_info(self, page: int) -> PageInfo:
        """Pixel size after EXIF orientation, from the header only."""
        self._check_open()
        self.check_page(page)
        info = self._infos.get(page)
        if info is not None:
            return info
        with self._lock:
            im = self._header
            assert im is not None  # only single-frame documents drop it, after caching page 1
            try:
                if self.page_count > 1:
                    im.seek(page - 1)
                w, h = im.size
                orientation = exif_orientation(im)
                pending = _pending_orientation(im)
            except Exception as e:
                raise InputError(
                    self.source, f"cannot read frame {page}: {e}", code="corrupt", page=page
                ) from e
        if h * w > self.max_pixels:
            raise too_large_error(self.source, h, w, self.max_pixels, page=page)
        rule = "image"
        if pending in (5, 6, 7, 8):  # the stored image lies on its side: swap before render
            h, w = w, h
        if orientation != 1:
            rule = f"image, EXIF orientation {orientation} applied"
        info = PageInfo(
            source=self.source,
            page=page,
            page_count=self.page_count,
            native_h=h,
            native_w=w,
            dpi=None,
            dpi_rule=rule,
            kind="image",
        )
        self._infos[page] = info
        return info

    def render(self, page: int) -> RenderedPage:
        """Decode one page (frame) to RGB, upright, alpha on white."""
        t0 = time.perf_counter()
        info = self.page_info(page)
        with self._lock:
            # A fresh decoder per render: the result owns its pixels and shares no state
            # with the header image that page_info seeks around in.
            im = self._open_pil()
            try:
                if page > 1:
                    im.seek(page - 1)
                orientation = _pending_orientation(im)
                w, h = im.size
                guard = _pil_bomb_check_off() if h * w > _UNGUARDED_PIXELS else nullcontext()
                with guard:
                    im.load()
                rgb = to_rgb(im)
            except InputError:
                im.close()
                raise
            except ValueError as e:
                im.close()
                code = "unsupported" if "conversion" in str(e) else "corrupt"
                raise InputError(
                    self.source, f"cannot decode ({im.mode}): {e}", code=code, page=page
                ) from e
            except Exception as e:  # truncated data, bad CRC, decoder errors
                im.close()
                raise InputError(
                    self.source, f"cannot decode this {self.format}: {e}", code="corrupt", page=page
                ) from e
        if orientation != 1:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        if rgb is im and getattr(im, "fp", None) is not None and self.path is not None:
            # A multi-frame file keeps its handle open after load; detach the pixels.
            rgb = im.copy()
        if rgb is not im:
            im.close()
        if rgb.size != (info.native_w, info.native_h):  # a frame that lied in its header
            info = replace(info, native_h=rgb.size[1], native_w=rgb.size[0])
        return RenderedPage(rgb, info, (time.perf_counter() - t0) * 1000.0)

    def has_text_layer(self, page: int) -> bool:
        """Images have no text layer."""
        self.check_page(page)
        return False

    def page_text(self, page: int) -> str:
        """Images have no text layer: always ""."""
        self.check_page(page)
        return ""

    def close(self) -> None:
        """Close the underlying file."""
        self._close_header()
        super().close()
