"""Turning command-line arguments into page images at native resolution.

Public API (see docs/inputs.md)::

    for item in open_sources(["paper.pdf", "scans/", "-"], password=None):
        if isinstance(item, InputError): record(item); continue
        with item as doc:
            for page in select_pages("1,3-5", doc.page_count, source=doc.source):
                info = doc.page_info(page)   # cheap: no rasterizing
                rendered = doc.render(page)  # RGB PIL image at native size

Names are imported lazily, so ``from ixcdoc.inputs import parse_page_spec`` (a CLI callback)
does not load PyMuPDF, Pillow or numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ixcdoc.errors import InputError, UsageError
    from ixcdoc.inputs.document import (
        DEFAULT_MAX_PIXELS,
        Document,
        PageInfo,
        RenderedPage,
        check_max_pixels,
        file_sha256,
    )
    from ixcdoc.inputs.image import ImageDocument, exif_orientation, to_rgb
    from ixcdoc.inputs.pages import parse_page_spec, select_pages
    from ixcdoc.inputs.pdf import (
        DEFAULT_DPI,
        MAX_TEXT_DPI,
        MIN_TEXT_DPI,
        SCAN_COVERAGE,
        TARGET_TEXT_PX,
        PdfDocument,
        text_dpi,
    )
    from ixcdoc.inputs.selection import Sources
    from ixcdoc.inputs.sniff import FORMATS, sniff_format
    from ixcdoc.inputs.sources import (
        MAX_STREAM_BYTES,
        natural_key,
        open_bytes,
        open_document,
        open_sources,
        read_special_files,
        read_stdin,
    )

_WHERE = {
    "InputError": "ixcdoc.errors",
    "UsageError": "ixcdoc.errors",
    "DEFAULT_MAX_PIXELS": "ixcdoc.inputs.document",
    "Document": "ixcdoc.inputs.document",
    "PageInfo": "ixcdoc.inputs.document",
    "RenderedPage": "ixcdoc.inputs.document",
    "check_max_pixels": "ixcdoc.inputs.document",
    "file_sha256": "ixcdoc.inputs.document",
    "ImageDocument": "ixcdoc.inputs.image",
    "exif_orientation": "ixcdoc.inputs.image",
    "to_rgb": "ixcdoc.inputs.image",
    "parse_page_spec": "ixcdoc.inputs.pages",
    "select_pages": "ixcdoc.inputs.pages",
    "Sources": "ixcdoc.inputs.selection",
    "DEFAULT_DPI": "ixcdoc.inputs.pdf",
    "MAX_TEXT_DPI": "ixcdoc.inputs.pdf",
    "MIN_TEXT_DPI": "ixcdoc.inputs.pdf",
    "SCAN_COVERAGE": "ixcdoc.inputs.pdf",
    "TARGET_TEXT_PX": "ixcdoc.inputs.pdf",
    "PdfDocument": "ixcdoc.inputs.pdf",
    "text_dpi": "ixcdoc.inputs.pdf",
    "FORMATS": "ixcdoc.inputs.sniff",
    "sniff_format": "ixcdoc.inputs.sniff",
    "MAX_STREAM_BYTES": "ixcdoc.inputs.sources",
    "natural_key": "ixcdoc.inputs.sources",
    "read_special_files": "ixcdoc.inputs.sources",
    "read_stdin": "ixcdoc.inputs.sources",
    "open_bytes": "ixcdoc.inputs.sources",
    "open_document": "ixcdoc.inputs.sources",
    "open_sources": "ixcdoc.inputs.sources",
}

__all__ = [
    "DEFAULT_DPI",
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "MAX_STREAM_BYTES",
    "MAX_TEXT_DPI",
    "MIN_TEXT_DPI",
    "SCAN_COVERAGE",
    "TARGET_TEXT_PX",
    "Document",
    "ImageDocument",
    "InputError",
    "PageInfo",
    "PdfDocument",
    "RenderedPage",
    "Sources",
    "UsageError",
    "check_max_pixels",
    "exif_orientation",
    "file_sha256",
    "natural_key",
    "open_bytes",
    "open_document",
    "open_sources",
    "parse_page_spec",
    "read_special_files",
    "read_stdin",
    "select_pages",
    "sniff_format",
    "text_dpi",
    "to_rgb",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ixcdoc.inputs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
