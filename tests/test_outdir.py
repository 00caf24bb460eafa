"""ixcdoc.outdir: the naming rules, the markers, the atomic write's order, and when a document's
file is (re)written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ixcdoc import outdir
from ixcdoc.outdir import DocumentFiles, output_name, render_document, write_atomic
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


# ---- names: a file per document, mirroring the input tree, never shared --------------------

SHA = "0123456789abcdef" * 4  # a content hash; its first 8 characters tag a clashing name


def test_a_name_is_relative_to_the_folder_argument_else_the_base_name(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    (root / "2024").mkdir(parents=True)
    inside = root / "2024" / "march.scan.pdf"
    inside.touch()
    alone = tmp_path / "elsewhere" / "b.png"
    alone.parent.mkdir()
    alone.touch()
    roots = [str(alone), str(root)]  # a file argument is no root
    assert output_name(str(inside), roots) == "2024/march.scan"  # only the last suffix goes
    assert output_name(str(alone), roots) == "b"
    assert output_name("-", roots) == "stdin"


def test_the_first_document_keeps_a_name_later_ones_get_the_hash_then_a_number(
    tmp_path: Path,
) -> None:
    docs = DocumentFiles(tmp_path / "out", "txt", [])
    first = docs.path_for("x/a.pdf", SHA)
    second = docs.path_for("y/a.png", SHA)
    third = docs.path_for("z/a.jpg", None)
    fourth = docs.path_for("w/a.tif", SHA)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in (first, second, third, fourth)] == [
        "a.txt",
        "a-01234567.txt",
        "a-nohash.txt",
        "a-01234567-2.txt",
    ]
    assert docs.path_for("y/a.png", SHA) == second  # the same file named twice: one name


def _tree(tmp_path: Path, *files: str) -> str:
    root = tmp_path / "in"
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    return str(root)


def test_a_file_never_takes_the_name_of_a_folder_that_holds_files(tmp_path: Path) -> None:
    """``a`` (a file without extension) becomes a.md; the folder ``a.md/`` read earlier holds
    x.md already, so the file is renamed, not the folder."""
    root = _tree(tmp_path, "a", "a.md/x.png")
    docs = DocumentFiles(tmp_path / "out", "md", [root])
    inside = docs.path_for(f"{root}/a.md/x.png", SHA)
    file = docs.path_for(f"{root}/a", SHA)
    assert inside == tmp_path / "out" / "a.md" / "x.md"
    assert file == tmp_path / "out" / "a-01234567.md"


def test_a_folder_never_takes_the_name_of_a_file_given_out(tmp_path: Path) -> None:
    """The same two documents the other way round: the file a.md is out, the folder moves."""
    root = _tree(tmp_path, "a", "a.md/x.png")
    docs = DocumentFiles(tmp_path / "out", "md", [root])
    file = docs.path_for(f"{root}/a", SHA)
    inside = docs.path_for(f"{root}/a.md/x.png", "fedcba98" + SHA[8:])
    assert file == tmp_path / "out" / "a.md"
    assert inside == tmp_path / "out" / "a.md-fedcba98" / "x.md"
    later = docs.path_for(f"{root}/a.md/y.png", SHA)  # the folder's other files follow it
    assert later == tmp_path / "out" / "a.md-fedcba98" / "y.md"


def test_a_marker_escapes_control_characters_and_cannot_close_the_comment() -> None:
    rec = make(source="odd\nname--x.pdf", page=2, page_count=3, text="body")
    md = render_document("md", [rec])
    txt = render_document("txt", [rec])
    assert md.splitlines()[0] == "<!-- ixcdoc: odd\\nname- -x.pdf page 2/3 -->"
    assert txt.splitlines()[0] == "==> odd\\nname- -x.pdf page 2/3 <=="
    assert md.splitlines()[1] == "body"
