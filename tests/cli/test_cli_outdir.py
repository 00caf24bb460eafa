"""extract --out-dir: one file per document mirroring the input tree, written when complete,
resumed page by page from the records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.helpers import model_args, read_records, text_pdf, text_png


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    text_pdf(root / "a" / "two.pdf", ["first page words", "second page words"])
    text_png(root / "b.png", "Total 12")
    text_png(root / "a" / "deep" / "c.png", "Deep")
    return root


def _md_pages(text: str) -> list[tuple[str, str]]:
    """(marker, body) per page of an .md file."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("<!-- ixcdoc: "):
            out.append((line, ""))
        elif out:
            marker, body = out[-1]
            out[-1] = (marker, body + line + "\n")
    return [(m, b.strip("\n")) for m, b in out]


def test_files_mirror_the_tree_and_hold_every_page(invoke, ckpts, tree: Path, tmp_path: Path):
    out = tmp_path / "md"
    res = invoke(["extract", str(tree), "--out-dir", str(out), *model_args(ckpts.normal)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""  # the files are the output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [".ixcdoc/records.jsonl", "a/deep/c.md", "a/two.md", "b.md"]
    recs = {(Path(r.source).name, r.page): r for r in read_records(out / ".ixcdoc/records.jsonl")}
    pages = _md_pages((out / "a" / "two.md").read_text())
    assert [m for m, _ in pages] == [
        f"<!-- ixcdoc: {tree}/a/two.pdf page 1/2 -->",
        f"<!-- ixcdoc: {tree}/a/two.pdf page 2/2 -->",
    ]
    assert [b for _, b in pages] == [recs[("two.pdf", 1)].text, recs[("two.pdf", 2)].text]
    assert "3 files written" in res.stderr


def test_a_rerun_rewrites_nothing_and_a_lost_page_is_redone_alone(
    invoke, ckpts, tree: Path, tmp_path: Path
):
    out = tmp_path / "md"
    args = ["extract", str(tree), "--out-dir", str(out), *model_args(ckpts.normal)]
    assert invoke(args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.md")}
    again = invoke(args)
    assert again.exit_code == 0 and "0 ok, 4 already done" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.md")} == before
    # A run killed before page 2 of two.pdf: its record and its file are missing.
    records = out / ".ixcdoc" / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    keep = [ln for ln in lines if not ('two.pdf"' in ln and '"page":2,' in ln)]
    assert len(keep) == len(lines) - 1
    records.write_text("".join(keep))
    (out / "a" / "two.md").unlink()
    third = invoke(args)
    assert third.exit_code == 0, third.stderr
    assert "1 ok, 3 already done" in third.stderr and "1 files written" in third.stderr
    recs = {(Path(r.source).name, r.page): r for r in read_records(records)}
    bodies = [b for _, b in _md_pages((out / "a" / "two.md").read_text())]
    assert bodies == [recs[("two.pdf", 1)].text, recs[("two.pdf", 2)].text]
    assert not list(out.rglob(".*.tmp-*"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_other_formats(invoke, ckpts, tree: Path, tmp_path: Path, fmt: str):
    out = tmp_path / fmt
    doc = str(tree / "a" / "two.pdf")
    res = invoke(
        ["extract", doc, "--out-dir", str(out), "--format", fmt, *model_args(ckpts.normal)]
    )
    assert res.exit_code == 0, res.stderr
    text = (out / f"two.{fmt}").read_text()
    recs = read_records(out / ".ixcdoc" / "records.jsonl")
    if fmt == "json":
        doc = json.loads(text)
        assert [p["text"] for p in doc["pages"]] == [r.text for r in recs]
        assert doc["page_count"] == 2
    else:
        assert text.splitlines()[0] == f"==> {tree}/a/two.pdf page 1/2 <=="


def test_o_and_out_dir_together_keep_the_records_in_o(invoke, ckpts, tree: Path, tmp_path: Path):
    out, rec = tmp_path / "md", tmp_path / "records.jsonl"
    res = invoke(
        ["extract", str(tree), "--out-dir", str(out), "-o", str(rec), *model_args(ckpts.normal)]
    )
    assert res.exit_code == 0, res.stderr
    assert len(read_records(rec)) == 4
    assert not (out / ".ixcdoc").exists()
    assert (out / "b.md").is_file()


def test_an_out_dir_inside_the_folder_being_read_is_not_read(invoke, ckpts, tree: Path):
    out = tree / "md-out"
    args = ["extract", str(tree), "--out-dir", str(out), *model_args(ckpts.normal)]
    assert invoke(args).exit_code == 0
    again = invoke(args)  # the .md files written by the first run must not become inputs
    assert again.exit_code == 0, again.stderr
    assert "0 ok, 4 already done" in again.stderr


def test_out_dir_edge_cases_are_refused_or_handled(invoke, ckpts, tree: Path, tmp_path: Path):
    """Found by an adversarial run: the input folder as --out-dir, a file as --out-dir,
    identical bytes under two names, and a name clash that must resolve the same each run."""
    same = invoke(["extract", str(tree), "--out-dir", str(tree), *model_args(ckpts.normal)])
    assert same.exit_code == 2 and "is the folder being read" in same.stderr
    above = invoke(["extract", str(tree / "a"), "--out-dir", str(tree), *model_args(ckpts.normal)])
    assert above.exit_code == 2
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = invoke(["extract", str(tree), "--out-dir", str(afile), *model_args(ckpts.normal)])
    assert res.exit_code == 2 and "not a folder" in res.stderr and "Traceback" not in res.stderr

    dup = tmp_path / "dup"
    text_png(dup / "a.png", "Same bytes")
    (dup / "b.png").write_bytes((dup / "a.png").read_bytes())
    out = tmp_path / "dup-md"
    res = invoke(["extract", str(dup), "--out-dir", str(out), *model_args(ckpts.normal)])
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in out.glob("*.md")) == ["a.md", "b.md"]
    assert (out / "b.md").read_text().startswith(f"<!-- ixcdoc: {dup}/b.png page 1/1 -->")

    clash = tmp_path / "clash"
    text_pdf(clash / "a.pdf", ["one words", "two words"])
    text_png(clash / "a.png", "png")
    out = tmp_path / "clash-md"
    args = ["extract", str(clash), "--out-dir", str(out), *model_args(ckpts.normal)]
    assert invoke([*args, "--pages", "1"]).exit_code == 0
    first = sorted(p.name for p in out.glob("*.md"))
    assert invoke(args).exit_code == 0
    assert sorted(p.name for p in out.glob("*.md")) == first  # same names, no stale file
    assert "page 2/2" in (out / "a.md").read_text()  # a.pdf keeps a.md, now complete


def test_a_deleted_file_is_written_again_from_the_records(
    invoke, ckpts, tree: Path, tmp_path: Path
):
    out = tmp_path / "md"
    args = ["extract", str(tree), "--out-dir", str(out), *model_args(ckpts.normal)]
    assert invoke(args).exit_code == 0
    before = (out / "b.md").read_text()
    (out / "b.md").unlink()
    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    assert "0 ok, 4 already done" in again.stderr and "1 files written" in again.stderr
    assert (out / "b.md").read_text() == before  # from the records: no page was redone
