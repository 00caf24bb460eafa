"""PDF documents through PyMuPDF: each page rendered at a DPI chosen from its own content.

The rule (docs/inputs.md explains the reasoning):

1. scan: one raster image covers >= SCAN_COVERAGE of the page -> render on that image's own
   pixel grid (x and y zoom = image pixels / image points), so a full-page scan comes out
   pixel for pixel, never resampled. Enough visible text drawn over it (not an invisible OCR
   layer, not a stamp) may raise the DPI further, by rule 2.
2. text: the dominant body font size (most non-space characters, 0.5 pt buckets) gives
   dpi = 72 * TARGET_TEXT_PX / body_pt, clamped to [MIN_TEXT_DPI, MAX_TEXT_DPI].
3. otherwise DEFAULT_DPI.

Then the size is capped at --max-pixels by lowering the DPI (a PDF page is never refused for
its size); when that leaves the body text under MIN_LEGIBLE_PX per em, PageInfo.dpi_capped
says so. Page sizes and the DPI come from the page's text and image metadata only; nothing is
rasterized until render().

A born-digital page (any page not rendered on a scan's pixel grid) can also be rendered once,
straight at an HD tier's resized size and into its white-padded frame (``render_hd``): no
native render and no PIL resampling (docs/inputs.md).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image
from pymupdf import mupdf

from ixcdoc.errors import InputError
from ixcdoc.inputs.document import REPAIRED, Document, PageInfo, RenderedPage
from ixcdoc.tiling import TierGeometry

# 24 px per em: the vision tower reads 14-px patches of 336-px crops; a 24-px em gives an
# x-height of ~11-12 px and a cap height of ~17 px, i.e. a 10-pt page scanned at ~170 dpi,
# the resolution of the DocVQA/InfoVQA scans the model was trained and evaluated on.
TARGET_TEXT_PX = 24.0
MIN_TEXT_DPI = 72.0  # below this, body glyphs are ~10 px or less and blur into each other
MAX_TEXT_DPI = 300.0  # a footnote-only (4-6 pt) page would otherwise ask for 300-430 dpi
# Below ~10 px per em glyphs blur into each other (a 10-pt body at 72 dpi): a page that the
# --max-pixels cap pushes under this is flagged low_dpi rather than read as if all were well.
MIN_LEGIBLE_PX = 10.0
DEFAULT_DPI = 150.0  # vector art, charts, blank pages: print-preview resolution
SCAN_COVERAGE = 0.85  # fraction of the page area one image must cover to count as a scan
SIZE_BUCKET_PT = 0.5  # font sizes are grouped to this step before taking the mode
ANISOTROPY_TOLERANCE = 0.01  # x/y zooms closer than this are kept apart (exact pixel grid)
# Visible characters over a scan needed before the text rule may raise its DPI: real text
# printed over a background image, not a Bates number or a "COPY" stamp.
TEXT_OVER_SCAN_CHARS = 200

_TEXT_FLAGS = pymupdf.TEXT_MEDIABOX_CLIP  # no images in the dict: they would be decoded

# MuPDF's context is process-global and not thread-safe: every call into PyMuPDF from this
# package holds this lock, so a render thread and the main thread can share documents.
_MUPDF_LOCK = threading.RLock()
_quieted = False


def _quiet_mupdf() -> None:
    # MuPDF prints its repair chatter ("format error: ...") straight to stderr; ixcdoc reports
    # damage through Document.note and InputError instead. Done on first use, not at import.
    global _quieted
    if not _quieted:
        pymupdf.TOOLS.mupdf_display_errors(False)
        pymupdf.TOOLS.mupdf_display_warnings(False)
        # No ICC colour management: the model reads text, not colour. It makes a greyscale
        # scan render 3x faster (67 -> 22 ms a page for samples/scan.pdf) and the samples'
        # pixels stay identical; only ICC-tagged or CMYK images shift slightly in colour.
        pymupdf.TOOLS.set_icc(False)
        _quieted = True


def text_dpi(body_pt: float) -> float:
    """Render DPI for a page whose body text is ``body_pt`` points (clamped)."""
    raw = 72.0 * TARGET_TEXT_PX / body_pt
    return min(MAX_TEXT_DPI, max(MIN_TEXT_DPI, raw))


def pixel_size(width_pt: float, height_pt: float, zoom_x: float, zoom_y: float) -> tuple[int, int]:
    """(height, width) in pixels of a page rendered at the given zooms (MuPDF's rounding)."""
    r = pymupdf.Rect(0, 0, width_pt, height_pt) * pymupdf.Matrix(zoom_x, zoom_y)
    ir = r.irect
    return (ir.height, ir.width)


@dataclass(frozen=True)
class _Layout:
    info: PageInfo
    zoom_x: float
    zoom_y: float
    has_text: bool
    scan: bool  # rendered on an embedded image's own pixel grid (rule 1, not text over scan)


def _image_zoom(t: pymupdf.Matrix, w_px: int, h_px: int) -> tuple[float, float]:
    """Device zoom (x, y) that puts one image pixel on one output pixel.

    ``t`` maps the image's unit square to the rotated page (points): its first row is the
    image's x axis (w_px pixels long), its second row the y axis (h_px pixels).
    """
    a, b, c, d = abs(t.a), abs(t.b), abs(t.c), abs(t.d)
    eps = 1e-6 * max(a, b, c, d)
    if b <= eps and c <= eps and a > eps and d > eps:  # upright or flipped
        return (w_px / a, h_px / d)
    if a <= eps and d <= eps and b > eps and c > eps:  # turned by 90 degrees
        return (h_px / c, w_px / b)
    det = abs(t.a * t.d - t.b * t.c)  # skewed or turned by some angle: keep the pixel density
    z = math.sqrt(w_px * h_px / det) if det > 0 else 0.0
    return (z, z)


# the inline-image operator as a token: PDF delimiters (whitespace, ()<>[]{}/%) on both sides
_INLINE_IMAGE = re.compile(
    rb"(?:^|[\x00\t\n\x0c\r ()<>\[\]{}/%])BI(?=[\x00\t\n\x0c\r ()<>\[\]{}/%]|$)"
)


def _may_draw_images(page: pymupdf.Page) -> bool:
    """False only when the page provably draws no image: its resources list no image and no
    form XObject (a form may hold inline images), and its content has no inline-image
    operator (``BI``). A false alarm only costs the ``get_image_info`` pass it would skip.
    Type3 glyphs and annotation appearances are not looked at; neither counts as a scan."""
    if page.get_images(full=True) or page.get_xobjects():
        return True
    content = page.read_contents()
    return b"BI" in content and _INLINE_IMAGE.search(content) is not None  # `in`: 30x faster


def _text_blocks(page: pymupdf.Page, drawn: pymupdf.DisplayList) -> list[dict]:
    """The page's text as ``get_text("dict")`` blocks, read from its display list (the page
    interpreted once for the analysis and the render) instead of interpreting it again."""
    tp = pymupdf.TextPage(drawn.get_textpage(flags=_TEXT_FLAGS))
    tp.parent = page
    return tp.extractDICT()["blocks"]


def _analyze(
    page: pymupdf.Page,
    drawn: pymupdf.DisplayList,
    source: str,
    number: int,
    page_count: int,
    max_pixels: int,
) -> _Layout:
    rect = page.rect
    if rect.is_empty or rect.width < 1e-3 or rect.height < 1e-3:
        raise InputError(source, f"page has no area ({rect})", code="corrupt", page=number)

    # ``get_image_info`` interprets the whole page again, as costly as the text extraction;
    # skip it on a page that cannot draw an image (most born-digital pages).
    images = page.get_image_info() if _may_draw_images(page) else []

    # Text layer: characters per (bucketed) font size, visible and invisible (OCR) alike.
    by_size: dict[float, int] = {}
    total = visible = 0
    for block in _text_blocks(page, drawn):
        for line in block.get("lines", ()):
            for span in line["spans"]:
                text = span["text"]
                n = len(text) - text.count(" ") - text.count("\t")
                size = span["size"]
                if n <= 0 or not size > 0:
                    continue
                total += n
                if span.get("alpha", 255):
                    visible += n
                key = round(size / SIZE_BUCKET_PT) * SIZE_BUCKET_PT or SIZE_BUCKET_PT
                by_size[key] = by_size.get(key, 0) + n

    # Scan: the highest-resolution image that on its own covers most of the page.
    unrotated = rect * page.derotation_matrix
    area = abs(unrotated.width * unrotated.height)
    scan: tuple[float, float, int, int] | None = None  # zoom_x, zoom_y, w_px, h_px
    for img in images:
        w_px, h_px = int(img.get("width") or 0), int(img.get("height") or 0)
        if w_px <= 0 or h_px <= 0:
            continue
        box = pymupdf.Rect(img["bbox"]) & unrotated
        if box.is_empty or abs(box.width * box.height) < SCAN_COVERAGE * area:
            continue
        zx, zy = _image_zoom(pymupdf.Matrix(img["transform"]) * page.rotation_matrix, w_px, h_px)
        if zx <= 0 or zy <= 0:
            continue
        if scan is None or zx * zy > scan[0] * scan[1]:
            scan = (zx, zy, w_px, h_px)

    body_pt = None
    on_grid = False
    if by_size:
        # Most characters wins; on a tie the smaller size (more pixels, nothing lost).
        body_pt = max(by_size, key=lambda s: (by_size[s], -s))
    if scan is not None:
        zx, zy, w_px, h_px = scan
        if max(zx, zy) / min(zx, zy) - 1.0 > ANISOTROPY_TOLERANCE:
            zx = zy = max(zx, zy)  # non-square pixels: keep the finer axis, square output
        scan_dpi = 72.0 * math.sqrt(zx * zy)
        rule = f"scan: embedded image {w_px}x{h_px} ({scan_dpi:.0f} dpi)"
        on_grid = True
        if body_pt is not None and visible >= TEXT_OVER_SCAN_CHARS and text_dpi(body_pt) > scan_dpi:
            dpi = text_dpi(body_pt)
            zx = zy = dpi / 72.0
            on_grid = False
            rule = (
                f"text over scan: body {body_pt:.1f}pt -> {dpi:.0f} dpi "
                f"(image {w_px}x{h_px} is only {scan_dpi:.0f} dpi)"
            )
    elif body_pt is not None:
        raw = 72.0 * TARGET_TEXT_PX / body_pt
        dpi = text_dpi(body_pt)
        zx = zy = dpi / 72.0
        rule = f"text: body {body_pt:.1f}pt -> {dpi:.0f} dpi"
        if dpi != raw:
            rule += f" (clamped from {raw:.0f})"
    else:
        zx = zy = DEFAULT_DPI / 72.0
        rule = f"default {DEFAULT_DPI:.0f} dpi: no text, no dominant image"

    h, w = pixel_size(rect.width, rect.height, zx, zy)
    capped = False
    if h * w > max_pixels:
        before = 72.0 * math.sqrt(zx * zy)
        f = math.sqrt(max_pixels / (h * w))
        while h * w > max_pixels:
            zx, zy = zx * f, zy * f
            h, w = pixel_size(rect.width, rect.height, zx, zy)
            f = 0.999
        rule += (
            f"; lowered from {before:.0f} dpi to stay within {max_pixels:,} pixels (--max-pixels)"
        )
        em_px = body_pt * math.sqrt(zx * zy) if body_pt is not None else math.inf
        if em_px < MIN_LEGIBLE_PX:
            capped = True
            rule += (
                f"; its {body_pt:.1f}pt text is {em_px:.1f} px per em, under the "
                f"{MIN_LEGIBLE_PX:.0f} px it needs (raise --max-pixels)"
            )
    if h < 1 or w < 1:
        raise InputError(
            source,
            f"page renders to {w}x{h} pixels within --max-pixels {max_pixels}",
            code="too_large",
            page=number,
        )
    info = PageInfo(
        source=source,
        page=number,
        page_count=page_count,
        native_h=h,
        native_w=w,
        dpi=round(72.0 * math.sqrt(zx * zy), 2),
        dpi_rule=rule,
        kind="pdf",
        dpi_capped=capped,
    )
    return _Layout(info, zx, zy, total > 0, on_grid)


class PdfDocument(Document):
    """A PDF opened with PyMuPDF (MuPDF); pages are rasterized on demand."""

    kind = "pdf"

    def __init__(
        self,
        source: str,
        path: Path | None,
        data: bytes | None,
        *,
        password: str | None,
        max_pixels: int,
        note: str | None = None,
        note_flag: str | None = None,
    ) -> None:
        super().__init__(source, path, data, format="PDF", note=note, note_flag=note_flag)
        self.max_pixels = max_pixels
        self._layouts: dict[int, _Layout] = {}
        # the display list of the page analysed last, until it is rendered: the analysis and
        # the render share one interpretation of the page (get_pixmap draws from one anyway)
        self._drawn: tuple[int, pymupdf.DisplayList] | None = None
        with _MUPDF_LOCK:
            _quiet_mupdf()
            try:
                if data is not None:
                    doc = pymupdf.open(stream=data, filetype="pdf")
                else:
                    # filetype: the content decides, not the extension (sniffed before here).
                    doc = pymupdf.open(str(path), filetype="pdf")
            except pymupdf.EmptyFileError as e:
                raise InputError(source, "file is empty", code="empty") from e
            except PermissionError as e:
                raise InputError(source, "permission denied", code="unreadable") from e
            except Exception as e:
                raise InputError(source, f"not a readable PDF: {e}", code="corrupt") from e
            try:
                if doc.needs_pass:
                    if password is None:
                        raise InputError(
                            source, "encrypted; pass --password", code="password_required"
                        )
                    if not doc.authenticate(password):
                        raise InputError(
                            source,
                            "encrypted, and the --password given does not open it",
                            code="bad_password",
                        )
                count = doc.page_count
                if count < 1:
                    raise InputError(source, "PDF has no pages (damaged?)", code="corrupt")
                if doc.is_repaired:
                    self.add_note(
                        "damaged file, repaired by MuPDF: some pages may be incomplete", REPAIRED
                    )
            except InputError:
                doc.close()
                raise
            except Exception as e:
                doc.close()
                raise InputError(source, f"not a readable PDF: {e}", code="corrupt") from e
            finally:
                pymupdf.TOOLS.reset_mupdf_warnings()  # MuPDF keeps them all otherwise
        self._doc = doc
        self.page_count = count

    def _load(self, page: int) -> pymupdf.Page:
        try:
            return self._doc.load_page(page - 1)
        except Exception as e:
            raise InputError(
                self.source, f"cannot load page: {e}", code="corrupt", page=page
            ) from e

    @contextlib.contextmanager
    def _page(self, page: int, what: str) -> Iterator[pymupdf.Page]:
        """The loaded page, under the MuPDF lock. Any failure inside becomes one line naming
        the file and page (``InputError`` code corrupt, "cannot {what}: ..."); MuPDF's
        warning buffer is cleared afterwards (it keeps them all otherwise)."""
        with _MUPDF_LOCK:
            try:
                yield self._load(page)
            except InputError:
                raise
            except Exception as e:
                raise InputError(
                    self.source, f"cannot {what}: {e}", code="corrupt", page=page
                ) from e
            finally:
                pymupdf.TOOLS.reset_mupdf_warnings()

    def _layout(self, page: int) -> _Layout:
        self._check_open()
        self.check_page(page)
        layout = self._layouts.get(page)
        if layout is None:
            with self._page(page, "read page") as p:
                drawn = p.get_displaylist()
                layout = _analyze(p, drawn, self.source, page, self.page_count, self.max_pixels)
                self._drawn = (page, drawn)
            self._layouts[page] = layout
        return layout

    def _display_list(self, page: int, p: pymupdf.Page) -> pymupdf.DisplayList:
        """``page``'s display list: the analysis's (once) or a new one. Under the lock."""
        if self._drawn is not None and self._drawn[0] == page:
            drawn = self._drawn[1]
            self._drawn = None
            return drawn
        return p.get_displaylist()

    def page_info(self, page: int) -> PageInfo:
        """Native size and DPI from the page's text and image metadata (no rasterizing)."""
        return self._layout(page).info

    def render(self, page: int) -> RenderedPage:
        """Rasterize one page (RGB, no alpha) at its native DPI."""
        t0 = time.perf_counter()
        layout = self._layout(page)
        info = layout.info
        with self._page(page, "render page") as p:
            # what page.get_pixmap does, from the list the analysis made
            pix = self._display_list(page, p).get_pixmap(
                matrix=pymupdf.Matrix(layout.zoom_x, layout.zoom_y),
                colorspace=pymupdf.csRGB,
                alpha=False,
            )
            # Straight from MuPDF's buffer into PIL: one copy, no PNG round trip.
            image = Image.frombytes(
                "RGB", (pix.width, pix.height), pix.samples_mv, "raw", "RGB", pix.stride
            )
            del pix
        if image.size != (info.native_w, info.native_h):  # never seen; keep the truth if so
            info = replace(info, native_h=image.size[1], native_w=image.size[0])
        return RenderedPage(image, info, (time.perf_counter() - t0) * 1000.0)

    def born_digital(self, page: int) -> bool:
        """True unless the page is rendered on a scan's own pixel grid (see ``render_hd``)."""
        return not self._layout(page).scan

    def render_hd(
        self, page: int, geometry: TierGeometry, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rasterize once, straight at the geometry's resized size, into its white-padded frame.

        Returns ``out`` (or a new array): uint8 [padded_h, padded_w, 3], the page at
        (resized_h, resized_w) at offset (pad_top, pad_left), white around it. Separate x and
        y zooms hit the resized size exactly. MuPDF draws into ``out``'s own memory (a
        shared-memory slot, say): no pixmap copy, no resampling. Pixels equal a plain
        ``get_pixmap`` at that size, padded; they differ from ``hd_transform(render(page))``,
        which resamples a native render (upstream has no PDF path to match).
        """
        g = geometry
        shape = (g.padded_h, g.padded_w, 3)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array {shape}, got {out.shape}")
        self._check_open()
        self.check_page(page)
        # MuPDF composites onto what is there (get_pixmap clears to white first, so do we).
        out.fill(255)
        stride = g.padded_w * 3
        offset = g.pad_top * stride + g.pad_left * 3
        with self._page(page, "render page") as p:
            rect = p.rect
            drawn = self._display_list(page, p)
            zx, zy = g.resized_w / rect.width, g.resized_h / rect.height
            cs = mupdf.FzColorspace(mupdf.FzColorspace.Fixed_RGB)
            # A pixmap over out's memory from the page's first pixel: rows are padded_w
            # wide, so the page lands inside the padding; the pixmap never outlives out.
            data = mupdf.python_mutable_buffer_data(memoryview(out).cast("B")[offset:])
            pix = mupdf.fz_new_pixmap_with_data(
                cs, g.resized_w, g.resized_h, mupdf.FzSeparations(), 0, stride, data
            )
            ctm = mupdf.FzMatrix(zx, 0, 0, zy, -rect.x0 * zx, -rect.y0 * zy)
            dev = mupdf.fz_new_draw_device(ctm, pix)
            try:
                everywhere = mupdf.FzRect(mupdf.FzRect.Fixed_INFINITE)
                mupdf.fz_run_display_list(
                    drawn.this, dev, mupdf.FzMatrix(), everywhere, mupdf.FzCookie()
                )
            finally:
                mupdf.fz_close_device(dev)
                del dev, pix
        return out

    def has_text_layer(self, page: int) -> bool:
        """True when the page has any extractable characters (an OCR layer counts)."""
        return self._layout(page).has_text

    def page_text(self, page: int) -> str:
        """The page's text layer in reading order as MuPDF extracts it."""
        self._check_open()
        self.check_page(page)
        with self._page(page, "extract text") as p:
            return p.get_text("text")

    def close(self) -> None:
        """Close the PDF."""
        if not self._closed:
            with _MUPDF_LOCK:
                self._drawn = None
                self._doc.close()
        super().close()
