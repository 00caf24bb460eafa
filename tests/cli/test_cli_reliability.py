"""Issue 9 through the CLI: the output lock held for the whole run, notes and flags of damaged
inputs on every record, one-line usage errors for absurd numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pymupdf
import pytest

from ixcdoc.errors import EXIT_FATAL, EXIT_USAGE
from ixcdoc.records import RecordsError, open_output
from tests.cli.helpers import IXCDOC, model_args, read_records, subprocess_env, text_png


def _damaged_pdf(path: Path, pages: int = 2) -> Path:
    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page(width=200, height=150).insert_text((10, 40), f"page {i + 1} words")
    data = doc.tobytes()
    path.write_bytes(data[: data.rfind(b"startxref")])  # no xref offset: MuPDF rebuilds it
    return path


def test_a_second_run_on_a_locked_output_stops_before_reading_it(
    invoke, ckpts, tmp_path: Path
) -> None:
    page = text_png(tmp_path / "a.png", "Total 12")
    out = tmp_path / "race.jsonl"
    writer, _state = open_output(out)  # another run holds the file for its whole run
    try:
        with pytest.raises(RecordsError) as e:
            open_output(out)
        assert e.value.code == "output_locked"
        res = invoke(["extract", str(page), "-o", str(out), *model_args(ckpts.normal)])
        assert res.exit_code == EXIT_FATAL
        assert "being written by another process" in res.stderr
        assert out.read_bytes() == b""  # nothing written by the refused run
    finally:
        writer.close()
    # Once the first run is over, the same command runs and resumes normally.
    assert invoke(["extract", str(page), "-o", str(out), *model_args(ckpts.normal)]).exit_code == 0
    assert len(read_records(out)) == 1


def test_a_repaired_pdf_is_noted_once_and_flagged_on_every_page(
    invoke, ckpts, tmp_path: Path
) -> None:
    pdf = _damaged_pdf(tmp_path / "damaged.pdf")
    out = tmp_path / "out.jsonl"
    res = invoke(["extract", str(pdf), "-o", str(out), *model_args(ckpts.normal)])
    assert res.exit_code == 0, res.stderr
    note = "damaged file, repaired by MuPDF: some pages may be incomplete"
    assert res.stderr.count(note) == 1
    recs = read_records(out)
    assert [(r.page, r.status) for r in recs] == [(1, "ok"), (2, "ok")]
    assert all("repaired" in r.flags for r in recs)


def test_plan_shows_the_flags_records_will_carry(invoke, tmp_path: Path) -> None:
    pdf = _damaged_pdf(tmp_path / "damaged.pdf", pages=1)
    res = invoke(["plan", str(pdf), "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["flags"] == ["repaired"]


@pytest.mark.parametrize(
    "args",
    [
        ["tiers", "--aspect", "nan:1"],
        ["tiers", "--aspect", "inf:1"],
        ["tiers", "--vram", "inf"],
        ["tiers", "--vram", "1e400"],
        ["plan", "x.png", "--vram", "1e400"],
        ["plan", "x.png", "--vram", "nan"],
    ],
)
def test_absurd_numbers_are_one_line_usage_errors(args: list[str], tmp_path: Path) -> None:
    res = subprocess.run(
        [*IXCDOC, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )
    assert res.returncode == EXIT_USAGE
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr


def test_a_file_that_is_not_ixcdoc_output_is_refused_untouched(invoke, tmp_path: Path) -> None:
    page = text_png(tmp_path / "a.png", "x")
    target = tmp_path / "package.json"
    target.write_text('{"name": "my-project", "version": "1.0"}\n')
    # A model that does not exist: reaching it would be a different error.
    res = invoke(["extract", str(page), "-o", str(target), "--model", str(tmp_path / "none")])
    assert res.exit_code == EXIT_FATAL
    assert "not an ixcdoc output file" in res.stderr
    assert target.read_text() == '{"name": "my-project", "version": "1.0"}\n'


def test_brackets_in_a_file_name_are_printed_as_they_are(invoke, tmp_path: Path) -> None:
    """Rich markup in error lines must not eat "[bold]" or "[/]" from a file name."""
    odd = tmp_path / "scan[bold][red].pdf"
    odd.write_bytes(b"%PDF-1.7 garbage")
    res = invoke(["plan", str(odd)])
    assert res.exit_code == 3
    assert "scan[bold][red].pdf" in res.stderr
