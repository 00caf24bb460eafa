"""Documents out as files: one file per document in a folder that mirrors the input tree.

``scans/a/b.pdf`` read as ``extract scans/ --out-dir out`` becomes ``out/a/b.md``. A file is
written atomically (temporary file, fsync, rename) once every selected page of its document has
a record, and rewritten only when one of its pages gets a new record. The records stay the
source of truth: pages done in an earlier run come from the records file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ixcdoc.records import PageRecord

FORMATS = {"md": ".md", "txt": ".txt", "json": ".json"}


def output_name(source: str, roots: Sequence[str]) -> str:
    """The file's path inside the output folder, without extension: relative to the folder
    argument it was found in, else its base name (``stdin`` for "-")."""
    if source == "-":
        return "stdin"
    real = os.path.realpath(source)
    for root in roots:
        if root != "-" and os.path.isdir(root):
            base = os.path.realpath(root)
            if real.startswith(base + os.sep):
                rel = os.path.relpath(real, base)
                return os.path.splitext(rel)[0]
    return os.path.splitext(os.path.basename(source))[0] or "document"


def _shown(source: str) -> str:
    """A file name as a marker shows it: control characters escaped (a newline cannot break
    the marker line) and "--" spaced out (it cannot end the Markdown comment)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in source)
    return shown.replace("--", "- -")


def _marker(fmt: str, rec: PageRecord) -> str:
    where = f"{_shown(rec.source)} page {rec.page}/{rec.page_count}"
    if rec.status != "ok":
        assert rec.error is not None
        why = f"failed ({rec.error.code}): {rec.error.message}"
        return f"<!-- ixcdoc: {where} {why} -->" if fmt == "md" else f"==> {where} {why} <=="
    return f"<!-- ixcdoc: {where} -->" if fmt == "md" else f"==> {where} <=="


def render_document(fmt: str, records: Sequence[PageRecord]) -> str:
    """The file's text: every page in page order after a marker that names it."""
    pages = sorted(records, key=lambda r: r.page or 0)
    if fmt == "json":
        first = pages[0]
        doc = {
            "source": first.source,
            "content_sha256": first.content_sha256,
            "page_count": first.page_count,
            "pages": [r.to_dict() for r in pages],
        }
        return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    parts = []
    for r in pages:
        parts.append(_marker(fmt, r) + "\n" + (r.text if r.status == "ok" else "") + "\n")
    return "\n".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class _Open:
    path: Path  # chosen when the document is opened, in input order: stable across runs
    pages: set[int]  # the page numbers a complete file holds
    records: dict[int, PageRecord] = field(default_factory=dict)
    fresh: bool = False  # some page got a new record in this run


class DocumentFiles:
    """Collects each document's page records and writes its file when the last one is in.

    Pages may finish in any order and documents interleave (the batched engine): each open
    document is kept by its source until every one of its pages has a record.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        fmt: str,
        roots: Sequence[str],
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.out_dir = Path(out_dir)
        self.fmt = fmt
        self.roots = list(roots)
        self.written = 0  # files written in this run
        self._open: dict[str, _Open] = {}
        self._names: dict[str, str] = {}  # output name -> the source that has it

    def path_for(self, source: str, sha256: str | None) -> Path:
        """Where a document's file goes (a second document with the same name gets a suffix)."""
        name = output_name(source, self.roots)
        owner = self._names.setdefault(name, source)
        if owner != source:
            name = f"{name}-{(sha256 or 'nohash')[:8]}"
            self._names.setdefault(name, source)
        return self.out_dir / (name + FORMATS[self.fmt])

    def opened(self, source: str, numbers: Sequence[int], sha256: str | None = None) -> None:
        """A document starts: these pages' records will follow (in any order). Its file name
        is fixed now, in input order, so a name clash resolves the same way in every run."""
        if source in self._open:  # the same file named twice: its pages are the same pages
            self._open[source].pages.update(numbers)
        else:
            self._open[source] = _Open(self.path_for(source, sha256), set(numbers))

    def add(self, rec: PageRecord, *, fresh: bool) -> None:
        """A page's record (``fresh``: written in this run)."""
        cur = self._open.get(rec.source)
        if cur is None:
            return
        if rec.page is None:  # a whole-file error: no document to write
            del self._open[rec.source]
            return
        cur.records[rec.page] = rec
        cur.fresh |= fresh
        if cur.pages <= cur.records.keys():
            del self._open[rec.source]
            self._finish(rec.source, cur)

    def _finish(self, source: str, cur: _Open) -> None:
        records = [cur.records[p] for p in sorted(cur.pages)]
        if cur.fresh or not cur.path.exists():
            write_atomic(cur.path, render_document(self.fmt, records))
            self.written += 1
