"""Page selection: ``--pages 1,3-5,9-``.

Syntax (1-based, comma-separated, spaces ignored): ``N`` one page; ``N-M`` pages N to M
inclusive; ``N-`` page N to the last page. The result is sorted and free of duplicates, so
pages are always processed in document order (records and resume rely on that).
"""

from __future__ import annotations

import re

from ixcdoc.errors import InputError, UsageError

_ITEM = re.compile(r"^(\d+)(?:(-)(\d*))?$")


def parse_page_spec(spec: str) -> list[tuple[int, int | None]]:
    """Parse a page spec into (first, last) ranges; last is None for an open range ``N-``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("--pages is empty; expected e.g. 1,3-5 or 7-")
    ranges: list[tuple[int, int | None]] = []
    for raw in spec.split(","):
        item = raw.replace(" ", "").replace("\t", "")
        m = _ITEM.match(item)
        if m is None:
            shown = item or "(nothing)"
            raise UsageError(
                f"--pages {spec!r}: cannot read {shown!r}; expected N, N-M or N- "
                "(1-based page numbers), e.g. 1,3-5,9-"
            )
        first = int(m.group(1))
        if first < 1:
            raise UsageError(f"--pages {spec!r}: page numbers start at 1, got {first}")
        if m.group(2) is None:
            ranges.append((first, first))
        elif m.group(3) == "":
            ranges.append((first, None))
        else:
            last = int(m.group(3))
            if last < first:
                raise UsageError(f"--pages {spec!r}: range {first}-{last} runs backwards")
            ranges.append((first, last))
    return ranges


def select_pages(spec: str | None, page_count: int, *, source: str) -> list[int]:
    """The 1-based pages of a document that ``spec`` selects (None: all pages)."""
    if spec is None:
        return list(range(1, page_count + 1))
    ranges = parse_page_spec(spec)
    pages: set[int] = set()
    for first, last in ranges:
        top = page_count if last is None else last
        if first > page_count or top > page_count:
            wanted = first if first > page_count else top
            noun = "page" if page_count == 1 else "pages"
            raise InputError(
                source,
                f"--pages {spec} asks for page {wanted}, but it has {page_count} {noun}",
                code="page_out_of_range",
            )
        pages.update(range(first, top + 1))
    return sorted(pages)
