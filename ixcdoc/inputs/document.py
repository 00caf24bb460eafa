"""What every open input looks like to the rest of ixcdoc: a Document of 1-based pages."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from ixcdoc.errors import InputError, UsageError

if TYPE_CHECKING:
    from PIL import Image

# Largest page we decode or render, in pixels (height x width). 100 MP is a letter page at
# ~1100 dpi or A4 at ~1000 dpi: more than any real scan (600 dpi A4 is 35 MP) and far beyond
# what the largest tier keeps (HD55 is ~6.2 MP), yet it bounds one RGB page to ~300 MB.
# Raw images over it are refused (too_large); PDF pages are rendered at a lower DPI instead.
DEFAULT_MAX_PIXELS = 100_000_000

Kind = Literal["pdf", "image"]

# Flags a Document puts on every page record it yields (docs/output.md): what its note says.
REPAIRED = "repaired"  # a damaged PDF that MuPDF repaired: pages may be incomplete
TYPE_MISMATCH = "type_mismatch"  # the content is another format than the name says
FRAMES_DROPPED = "frames_dropped"  # an animated image: only the first frame is read
LOW_DPI = "low_dpi"  # this page: see PageInfo.dpi_capped


@dataclass(frozen=True)
class PageInfo:
    """One page as it will be rendered: its native pixel size and why that size."""

    source: str
    page: int  # 1-based
    page_count: int
    native_h: int  # pixels the render will produce
    native_w: int
    dpi: float | None  # None for images: they have no physical size we trust
    dpi_rule: str  # short human reason, e.g. "text: body 10.0pt -> 173 dpi"
    kind: Kind
    # --max-pixels forced the DPI so low that the body text falls below MIN_LEGIBLE_PX per em:
    # the page is read, but coarser than its text needs (flag "low_dpi").
    dpi_capped: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.native_h, self.native_w)

    @property
    def pixels(self) -> int:
        """native_h * native_w."""
        return self.native_h * self.native_w


@dataclass(frozen=True)
class RenderedPage:
    """A page at native resolution: an RGB PIL image plus how it was made."""

    image: Image.Image  # mode "RGB", size (native_w, native_h) in PIL's (W, H) order
    info: PageInfo
    render_ms: float

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.info.native_h, self.info.native_w)


def check_max_pixels(max_pixels: int) -> int:
    """Validate a --max-pixels value (a whole number >= 1)."""
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise UsageError(f"--max-pixels must be a whole number >= 1, got {max_pixels!r}")
    return max_pixels


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (OSError propagates)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Document(ABC):
    """One open input file (or stdin): 1-based pages, cheap page_info, render at native size.

    Not safe for concurrent use from several threads on the same document; distinct documents
    may be used from different threads (PDF work is serialised internally because MuPDF's
    context is process-global).
    """

    source: str  # display name: the path as given, or "-" for stdin
    path: Path | None  # None for stdin and pipes
    kind: Kind
    format: str  # "PDF", "PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"
    page_count: int
    notes: list[str]  # things the user should know (a lying extension, a repaired file)
    flags: tuple[str, ...]  # the flags those notes put on every page (REPAIRED, ...)

    def __init__(
        self,
        source: str,
        path: Path | None,
        data: bytes | None,
        *,
        format: str,
        note: str | None = None,
        note_flag: str | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self.format = format
        self.notes = []
        self.flags = ()
        if note is not None:
            self.add_note(note, note_flag)
        self._data = data
        self._sha256: str | None = None
        self._closed = False

    def add_note(self, note: str, flag: str | None = None) -> None:
        """Record something the user should know, and the page flag it implies (if any)."""
        self.notes.append(note)
        if flag is not None and flag not in self.flags:
            self.flags = (*self.flags, flag)

    @property
    def note(self) -> str | None:
        """All notes in one line ("; "-joined), or None when there are none."""
        return "; ".join(self.notes) or None

    def page_flags(self, page: int) -> tuple[str, ...]:
        """Flags for this page's record: the document's (e.g. repaired) and the page's own."""
        own = (LOW_DPI,) if self.page_info(page).dpi_capped else ()
        return (*self.flags, *own)

    @property
    def origin(self) -> Path | bytes:
        """Where the document's bytes are: its file, or the bytes themselves (stdin, pipes)
        for another process to open it again (the feeder's workers)."""
        if self.path is not None:
            return self.path
        assert self._data is not None
        return self._data

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file's bytes (computed on first use, then cached)."""
        if self._sha256 is None:
            if self._data is not None:
                self._sha256 = hashlib.sha256(self._data).hexdigest()
            else:
                assert self.path is not None
                try:
                    self._sha256 = file_sha256(self.path)
                except OSError as e:
                    raise InputError(
                        self.source, f"cannot read: {e.strerror or e}", code="unreadable"
                    ) from e
        return self._sha256

    def check_page(self, page: int) -> int:
        """Raise page_out_of_range unless 1 <= page <= page_count."""
        if not isinstance(page, int) or isinstance(page, bool) or not 1 <= page <= self.page_count:
            noun = "page" if self.page_count == 1 else "pages"
            raise InputError(
                self.source,
                f"no page {page!r}: it has {self.page_count} {noun}",
                code="page_out_of_range",
            )
        return page

    @abstractmethod
    def page_info(self, page: int) -> PageInfo:
        """Native size and render DPI of a page, without rasterizing it."""

    @abstractmethod
    def render(self, page: int) -> RenderedPage:
        """Rasterize/decode a page to an RGB image at its native resolution."""

    @abstractmethod
    def has_text_layer(self, page: int) -> bool:
        """True when the page carries extractable text (PDF text layer, OCR layer included)."""

    @abstractmethod
    def page_text(self, page: int) -> str:
        """The page's text layer ("" for images and pages without text)."""

    def pages(self, spec: str | None = None) -> list[int]:
        """The 1-based pages selected by a --pages spec (None: all)."""
        from ixcdoc.inputs.pages import select_pages

        return select_pages(spec, self.page_count, source=self.source)

    def close(self) -> None:
        """Release the file; the document cannot be used afterwards."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.source}: document is closed")

    def __enter__(self) -> Document:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.source!r} {self.format} "
            f"{self.page_count} page{'s' if self.page_count != 1 else ''}>"
        )
