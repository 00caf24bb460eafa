"""Documents out as files: one file per document in a folder that mirrors the input tree.

``scans/a/b.pdf`` read as ``extract scans/ --out-dir out`` becomes ``out/a/b.md``. A file is
written atomically (temporary file, fsync, rename) once every selected page of its document has
a record, and rewritten only when one of its pages gets a new record. The records stay the
source of truth: pages done in an earlier run come from the records file.

Names are given in input order and never shared: no two documents get the same file, and no
file takes a path another document needs as a folder (``a`` beside ``a.md/x.png``). A write
that fails (a full disk) stops the run with one ``RecordsError``; the records are intact and a
rerun writes the missing files.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ixcdoc.records import PageRecord

FORMATS = {"md": ".md", "txt": ".txt", "json": ".json"}
RECORDS = Path(".ixcdoc") / "records.jsonl"  # the records' place in DIR when -o is not given


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


def _candidates(stem: str, tag: str) -> Iterator[str]:
    """Names to try for a document, in order: its own, then with its hash, then numbered."""
    yield stem
    yield f"{stem}-{tag}"
    for n in itertools.count(2):
        yield f"{stem}-{tag}-{n}"


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
        self.records: Path | None = None  # where the records are (named when a write fails)
        self._open: dict[str, _Open] = {}
        self._paths: dict[str, Path] = {}  # source -> its file
        self._files: set[str] = set()  # files given out, relative ("a/b.md")
        self._dirs: set[str] = set()  # the folders those files sit in, relative
        self._folders: dict[str, str] = {}  # a folder of the input tree -> its output folder

    def check_writable(self) -> None:
        """Create the folder and prove a file can be made in it, before any model loads: a
        folder that cannot take files is one error now, not one after the first page."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".ixcdoc-probe-", dir=self.out_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            from ixcdoc.records import RecordsError

            raise RecordsError(
                f"cannot write to --out-dir {self.out_dir}: {e.strerror or e}", code="output_dir"
            ) from None

    def own_records(self) -> Path:
        """The records file inside the folder (``DIR/.ixcdoc/records.jsonl``), its folder made."""
        path = self.out_dir / RECORDS
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from ixcdoc.records import RecordsError

            raise RecordsError(
                f"cannot use --out-dir {self.out_dir}: {e.strerror or e}", code="output_dir"
            ) from None
        return path

    def path_for(self, source: str, sha256: str | None) -> Path:
        """Where a document's file goes. The first document to want a name has it; a later
        one gets ``-<sha8>`` (then ``-<sha8>-2``, ...) on the part that clashes, a file name
        or a folder name, so no two documents share a file and no file blocks a folder."""
        if source in self._paths:  # the same file named twice
            return self._paths[source]
        parts = PurePath(output_name(source, self.roots)).parts
        tag = (sha256 or "nohash")[:8]
        out: list[str] = []
        for i, part in enumerate(parts[:-1]):
            key = "/".join(parts[: i + 1])
            if key not in self._folders:
                self._folders[key] = self._free(out, part, tag, "", folder=True)
            out.append(self._folders[key])
        leaf = self._free(out, parts[-1], tag, FORMATS[self.fmt], folder=False)
        self._files.add("/".join([*out, leaf]))
        self._dirs.update("/".join(out[: i + 1]) for i in range(len(out)))
        path = self.out_dir.joinpath(*out, leaf)
        self._paths[source] = path
        return path

    def _free(self, parent: list[str], stem: str, tag: str, ext: str, *, folder: bool) -> str:
        """The first of ``stem``, ``stem-tag``, ``stem-tag-2``, ... free in ``parent``: not a
        file given out, and (for a file) not a folder that files sit in."""
        for name in _candidates(stem, tag):
            rel = "/".join([*parent, name + ext])
            if rel not in self._files and (folder or rel not in self._dirs):
                return name + ext
        raise AssertionError("unreachable: the candidates never end")

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
            try:
                write_atomic(cur.path, render_document(self.fmt, records))
            except OSError as e:
                from ixcdoc.records import RecordsError

                kept = f"; the records are intact in {self.records}" if self.records else ""
                raise RecordsError(
                    f"cannot write {cur.path}: {e.strerror or e}{kept}; run the same command "
                    "again to write the missing files",
                    code="write_failed",
                ) from None
            self.written += 1
