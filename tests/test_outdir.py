"""ixcdoc.outdir: the atomic write's order, and when a document's file is (re)written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ixcdoc import outdir
from ixcdoc.outdir import DocumentFiles, render_document, write_atomic
from tests.test_records import make


def test_the_temporary_file_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename that reaches the disk before the data can leave an empty file after a crash
    (ext4 with delalloc, XFS): the temporary file's bytes must be fsynced first."""
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(outdir.os, "fsync", fsync)
    monkeypatch.setattr(outdir.os, "replace", replace)
    path = tmp_path / "out" / "doc.md"
    write_atomic(path, "page text\n")
    assert path.read_text() == "page text\n"
    renamed = [ino for what, ino in events if what == "replace"]
    assert len(renamed) == 1
    at = events.index(("replace", renamed[0]))
    assert ("fsync", renamed[0]) in events[:at], events  # the file's own fsync, before
    assert [p.name for p in path.parent.iterdir()] == ["doc.md"]  # no temporary left


def _two_pages(text1: str, text2: str) -> tuple[Any, Any]:
    src = "scans/a.pdf"
    return (
        make(source=src, page=1, page_count=2, text=text1),
        make(source=src, page=2, page_count=2, text=text2),
    )


def test_a_redone_page_then_an_old_one_rewrites_the_file(tmp_path: Path) -> None:
    """The batched engine finishes pages in any order: a page redone in this run may come
    in before an old page of its document; the file must still be rewritten."""
    old1, old2 = _two_pages("old one", "two")
    docs = DocumentFiles(tmp_path, "md", ["scans"])
    path = docs.path_for("scans/a.pdf", old1.content_sha256)
    write_atomic(path, render_document("md", [old1, old2]))  # the earlier run's file
    new1, _ = _two_pages("new one", "two")

    docs = DocumentFiles(tmp_path, "md", ["scans"])
    docs.opened("scans/a.pdf", [1, 2], old1.content_sha256)
    docs.add(new1, fresh=True)  # redone in this run
    docs.add(old2, fresh=False)  # from the records file
    assert docs.written == 1
    assert path.read_text() == render_document("md", [new1, old2])
    assert "new one" in path.read_text()


def test_old_pages_only_leave_an_existing_file_alone(tmp_path: Path) -> None:
    old1, old2 = _two_pages("one", "two")
    docs = DocumentFiles(tmp_path, "md", ["scans"])
    path = docs.path_for("scans/a.pdf", old1.content_sha256)
    write_atomic(path, "the earlier run's file\n")
    docs = DocumentFiles(tmp_path, "md", ["scans"])
    docs.opened("scans/a.pdf", [1, 2], old1.content_sha256)
    docs.add(old2, fresh=False)
    docs.add(old1, fresh=False)
    assert docs.written == 0
    assert path.read_text() == "the earlier run's file\n"


def test_a_deleted_file_is_written_again_from_old_records(tmp_path: Path) -> None:
    old1, old2 = _two_pages("one", "two")
    docs = DocumentFiles(tmp_path, "md", ["scans"])
    docs.opened("scans/a.pdf", [1, 2], old1.content_sha256)
    path = docs.path_for("scans/a.pdf", old1.content_sha256)
    assert not path.exists()  # deleted after the earlier run
    docs.add(old2, fresh=False)
    docs.add(old1, fresh=False)
    assert docs.written == 1
    assert path.read_text() == render_document("md", [old1, old2])
