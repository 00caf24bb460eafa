"""``ixcdoc extract`` end to end on a tiny real checkpoint (CPU): stdout, --json, -o, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from ixcdoc.errors import EXIT_PARTIAL
from ixcdoc.records import latest_records
from tests.cli.helpers import (
    Checkpoints,
    Invoke,
    corrupt_pdf,
    encrypted_pdf,
    expected_grid,
    expected_tokens,
    model_args,
    page_keys,
    parse_lines,
    read_records,
    text_pdf,
    text_png,
)

EXTRACT_FLOOR = 16


def tile_and_patch(ckpt: Path) -> tuple[int, int]:
    vision = json.loads((ckpt / "config.json").read_text())["vision_config"]
    return vision["image_size"], vision["patch_size"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """docs/: a.png (1 page), b.pdf (2 text pages), c.png (1 page): 4 pages, sorted a, b, c."""
    root = tmp_path / "docs"
    text_png(root / "a.png", "alpha page")
    text_pdf(root / "b.pdf", ["bravo first page", "bravo second page"])
    text_png(root / "c.png", "charlie page")
    return root


ALL_PAGES = ["a.png:1", "b.pdf:1", "b.pdf:2", "c.png:1"]


def short(records: list) -> list[str]:
    return [f"{Path(r.source).name}:{r.page}" for r in records]


def test_single_image_piped_prints_the_text_alone(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    png = text_png(tmp_path / "page.png", "single page")
    args = ["extract", png, *model_args(ckpts.normal)]
    (rec,) = parse_lines(invoke([*args, "--json"]).stdout)
    res = invoke(args)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == rec.text + "\n"  # one page: no marker line
    assert res.stdout.strip()  # the tiny model does write something
    # stderr: a dim note naming the page, nothing on stdout but the text
    assert f"{png} page 1/1" in res.stderr
    quiet = invoke([*args, "--quiet"])
    assert (quiet.stdout, quiet.stderr) == (res.stdout, "")


def test_json_records_describe_the_run(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    png = text_png(tmp_path / "page.png", "json page", size=(160, 120))
    res = invoke(["extract", png, "--json", *model_args(ckpts.normal, 5)])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    tile, patch = tile_and_patch(ckpts.normal)
    rows, cols = expected_grid(120, 160, EXTRACT_FLOOR, tile)
    assert rec.source == str(png)
    assert (rec.page, rec.page_count) == (1, 1)
    assert rec.task == "extract" and rec.question is None
    assert rec.status == "ok" and rec.error is None and rec.flags == ()
    assert rec.hd_setting == "auto"
    assert rec.tier == EXTRACT_FLOOR  # a small image: the task's floor
    assert rec.grid == (rows, cols)
    assert rec.image_tokens == expected_tokens(rows, cols, tile, patch)
    assert rec.native_size == (120, 160)
    assert rec.render_dpi is None
    assert rec.precision == "fp32" and rec.device == "cpu"
    assert Path(rec.model) == ckpts.normal
    assert rec.timings.tokens is not None and 1 <= rec.timings.tokens <= 5
    assert rec.timings.prefill_ms is not None


def test_multi_page_stdout_has_a_marker_per_page(
    folder: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    args = ["extract", folder, *model_args(ckpts.normal), "--hd", "4"]
    as_json = invoke([*args, "--json"])
    assert as_json.exit_code == 0, as_json.stderr
    records = parse_lines(as_json.stdout)
    assert short(records) == ALL_PAGES
    assert all(r.tier == 4 and r.hd_setting == "4" for r in records)
    pdf_pages = [r for r in records if r.source.endswith(".pdf")]
    assert all(r.render_dpi and r.page_count == 2 for r in pdf_pages)

    plain = invoke(args)
    assert plain.exit_code == 0, plain.stderr
    expected = "".join(
        f"==> {r.source} page {r.page}/{r.page_count} <==\n{r.text}\n" for r in records
    )
    assert plain.stdout == expected
    assert "4 ok" in plain.stderr.splitlines()[-1]


def test_output_file_then_rerun_skips_everything(
    folder: Path, tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["extract", folder, "-o", out, *model_args(ckpts.normal), "--hd", "4"]
    res = invoke(args)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""  # with -o the records are the output
    first = read_records(out)
    assert short(first) == ALL_PAGES
    assert all(r.status == "ok" for r in first)
    assert f"records in {out}" in res.stderr

    again = invoke(args)
    assert again.exit_code == 0, again.stderr
    assert again.stdout == ""
    assert "4 already done" in again.stderr
    assert read_records(out) == first  # nothing redone, nothing appended

    # --json as well as -o: each record goes to both, byte for byte.
    out2 = tmp_path / "out2.jsonl"
    both_ways = invoke([*args[:3], out2, *args[4:], "--json"])
    assert both_ways.exit_code == 0
    assert both_ways.stdout == out2.read_text()
    assert short(parse_lines(both_ways.stdout)) == ALL_PAGES

    # A different tier setting is a different job: every page runs again, appended.
    other = invoke([*args[:-1], "9"])
    assert other.exit_code == 0
    both = read_records(out)
    assert len(both) == 8
    assert Counter((r.source, r.page, r.hd_setting) for r in both) == Counter(
        {(r.source, r.page, s): 1 for r in first for s in ("4", "9")}
    )


def test_torn_last_line_is_repaired_and_that_page_redone(
    folder: Path, tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["extract", folder, "-o", out, *model_args(ckpts.normal), "--hd", "4"]
    assert invoke(args).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4
    # A crash while writing the last page: its line is cut in the middle, no newline.
    torn = lines[-1][: len(lines[-1]) // 2]
    out.write_bytes(b"".join(lines[:-1]) + torn)

    res = invoke(args)
    assert res.exit_code == 0, res.stderr
    assert f"repaired {out}" in res.stderr
    assert f"({len(torn)} bytes)" in res.stderr
    assert "3 already done" in res.stderr
    records = read_records(out)  # every line valid, the file ends with a newline
    assert short(records) == ALL_PAGES
    assert Counter(page_keys(records)).most_common(1)[0][1] == 1
    assert out.read_bytes().startswith(b"".join(lines[:-1]))  # earlier records untouched


def test_invalid_line_in_the_middle_is_fatal_not_dropped(
    folder: Path, tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    out = tmp_path / "out.jsonl"
    args = ["extract", folder, "-o", out, *model_args(ckpts.normal), "--hd", "4", "--pages", "1"]
    assert invoke(args).exit_code == 0
    good = out.read_bytes()
    out.write_bytes(b"{not json\n" + good)
    res = invoke(args)
    assert res.exit_code == 1
    assert "line 1" in res.stderr and str(out) in res.stderr
    assert out.read_bytes() == b"{not json\n" + good  # never modified


def test_redo_failed_retries_failed_pages(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from ixcdoc.runtime import DocModel

    good = text_png(tmp_path / "docs" / "good.png", "good page")
    # The model never sees file names: the flaky page is told apart by its size.
    text_png(tmp_path / "docs" / "flaky.png", "flaky page", size=(170, 130))
    out = tmp_path / "out.jsonl"
    args = ["extract", tmp_path / "docs", "-o", out, *model_args(ckpts.normal), "--hd", "4"]

    real_pixels = DocModel.pixels
    broken = {"on": True}

    def pixels(self, image, hd):  # type: ignore[no-untyped-def]
        if broken["on"] and image.size == (170, 130):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_pixels(self, image, hd)

    monkeypatch.setattr(DocModel, "pixels", pixels)

    first = invoke(args)
    assert first.exit_code == EXIT_PARTIAL
    recs = read_records(out)
    status = {Path(r.source).name: (r.status, r.error and r.error.code) for r in recs}
    assert status == {"flaky.png": ("error", "oom"), "good.png": ("ok", None)}

    broken["on"] = False  # the GPU has room now
    plain = invoke(args)
    assert plain.exit_code == EXIT_PARTIAL  # an earlier failure still counts
    assert "1 failed earlier (retry with --redo-failed)" in plain.stderr
    assert len(read_records(out)) == 2  # nothing retried, nothing appended

    redo = invoke([*args, "--redo-failed"])
    assert redo.exit_code == 0, redo.stderr
    recs = read_records(out)
    assert len(recs) == 3  # the retry is appended; the good page is not redone
    assert Path(recs[-1].source).name == "flaky.png" and recs[-1].status == "ok"
    latest = {Path(r.source).name: r.status for r in latest_records(out)}
    assert latest == {"flaky.png": "ok", "good.png": "ok"}
    assert good.exists()


def test_bad_files_are_recorded_and_the_batch_goes_on(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    ok = text_png(tmp_path / "ok.png", "fine")
    locked = encrypted_pdf(tmp_path / "locked.pdf")
    broken = corrupt_pdf(tmp_path / "broken.pdf")
    missing = tmp_path / "missing.png"
    res = invoke(["extract", ok, locked, broken, missing, "--json", *model_args(ckpts.normal)])
    assert res.exit_code == EXIT_PARTIAL
    recs = parse_lines(res.stdout)
    assert [(Path(r.source).name, r.status) for r in recs] == [
        ("ok.png", "ok"),
        ("locked.pdf", "error"),
        ("broken.pdf", "error"),
        ("missing.png", "error"),
    ]
    assert [r.error.code for r in recs[1:]] == ["password_required", "corrupt", "not_found"]
    # The bytes of the locked and the broken file were read: their hash is known.
    assert recs[1].content_sha256 == hashlib.sha256(locked.read_bytes()).hexdigest()
    assert recs[2].content_sha256 == hashlib.sha256(broken.read_bytes()).hexdigest()
    assert recs[3].content_sha256 is None  # not_found: no bytes
    assert all(r.page is None and r.tier is None for r in recs[1:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3

    unlocked = invoke(
        ["extract", locked, "--password", "open", "--json", *model_args(ckpts.normal)]
    )
    assert unlocked.exit_code == 0, unlocked.stderr
    (rec,) = parse_lines(unlocked.stdout)
    assert rec.status == "ok" and rec.page == 1


def test_password_on_rerun_supersedes_the_whole_file_error(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """docs/output.md: a page of the same file and job supersedes its whole-file error."""
    text_png(tmp_path / "docs" / "a.png", "plain page")
    encrypted_pdf(tmp_path / "docs" / "locked.pdf")
    out = tmp_path / "out.jsonl"
    args = ["extract", tmp_path / "docs", "-o", out, *model_args(ckpts.normal), "--hd", "4"]
    assert invoke(args).exit_code == EXIT_PARTIAL
    # The file holds records in finishing order: the unreadable file's is ready first.
    assert sorted((Path(r.source).name, r.status) for r in read_records(out)) == [
        ("a.png", "ok"),
        ("locked.pdf", "error"),
    ]

    res = invoke([*args, "--password", "open"])
    assert res.exit_code == 0, res.stderr
    assert "1 already done" in res.stderr
    latest = latest_records(out)
    assert sorted((Path(r.source).name, r.page, r.status) for r in latest) == [
        ("a.png", 1, "ok"),
        ("locked.pdf", 1, "ok"),
    ]


def test_extract_reads_image_bytes_from_stdin(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    png = text_png(tmp_path / "page.png", "from stdin")
    by_path = parse_lines(invoke(["extract", png, "--json", *model_args(ckpts.normal)]).stdout)
    res = invoke(["extract", "-", "--json", *model_args(ckpts.normal)], input=png.read_bytes())
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.source == "-"
    assert rec.content_sha256 == by_path[0].content_sha256  # same bytes, sniffed as PNG
    assert rec.native_size == (120, 160)
    assert rec.text == by_path[0].text

    pdf = text_pdf(tmp_path / "two.pdf", ["one", "two"])
    res = invoke(["extract", "-", "--json", *model_args(ckpts.normal, 2)], input=pdf.read_bytes())
    assert res.exit_code == 0, res.stderr
    assert [(r.source, r.page, r.page_count) for r in parse_lines(res.stdout)] == [
        ("-", 1, 2),
        ("-", 2, 2),
    ]


def test_chart_json_record(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    png = text_png(tmp_path / "chart.png", "revenue 2024")
    plain = invoke(["chart", png, "--json", *model_args(ckpts.normal)])
    table = invoke(["chart", png, "--table", "--json", *model_args(ckpts.normal)])
    assert plain.exit_code == table.exit_code == 0
    (a,), (b,) = parse_lines(plain.stdout), parse_lines(table.stdout)
    assert a.task == b.task == "chart"
    assert a.prompt != b.prompt and "table" in b.prompt.lower()


def test_o_dir_with_a_slash_is_a_folder_of_shards_on_one_machine(
    tmp_path: Path, folder: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """-o DIR/ means a folder everywhere: without --ray too, a new shard per run (none when
    the run has nothing to do), read back as one resume state, merged by ixcdoc merge."""
    shards = tmp_path / "out"
    args = ["extract", folder, "-o", f"{shards}/", *model_args(ckpts.normal)]
    first = invoke([*args, "--pages", "1"])
    assert first.exit_code == 0, first.stderr
    assert shards.is_dir()
    [part] = shards.glob("part-*.jsonl")
    assert short(read_records(part)) == ["a.png:1", "b.pdf:1", "c.png:1"]
    second = invoke(args)  # the existing folder, slash or not: page 2 of b.pdf only
    assert second.exit_code == 0, second.stderr
    assert "1 ok, 3 already done" in second.stderr
    parts = sorted(shards.glob("part-*.jsonl"), key=lambda p: p != part)
    assert [short(read_records(p)) for p in parts] == [short(read_records(part)), ["b.pdf:2"]]
    third = invoke([*args, "--redo-failed"])  # nothing to do: no empty shard
    assert third.exit_code == 0 and "0 ok, 4 already done" in third.stderr
    assert len(list(shards.glob("part-*.jsonl"))) == 2
    merged = tmp_path / "all.jsonl"
    assert invoke(["merge", shards, "-o", merged]).exit_code == 0
    assert sorted(short(read_records(merged))) == ALL_PAGES


def test_eval_o_refuses_a_folder_name(tmp_path: Path, invoke: Invoke) -> None:
    """eval -o writes one file: DIR/ is a usage error, not a file named DIR."""
    res = invoke(["eval", "docvqa", tmp_path, "-o", f"{tmp_path}/scores/"])
    assert res.exit_code == 2 and "names a folder" in res.stderr
    assert not (tmp_path / "scores").exists()


def test_unreadable_inputs_are_reported_without_loading_a_model(
    invoke, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # would fail a load
    out = tmp_path / "out.jsonl"
    r = invoke(["extract", str(tmp_path / "missing.pdf"), "-o", str(out)])
    assert r.exit_code == EXIT_PARTIAL
    assert "missing.pdf" in r.stderr and "CUDA" not in r.stderr
    (rec,) = read_records(out)
    assert rec.status == "error" and rec.error.code == "not_found" and rec.precision is None


def test_a_model_folder_is_one_job_however_it_is_spelled(
    invoke, ckpts, tmp_path: Path, monkeypatch
) -> None:
    page = text_png(tmp_path / "in" / "a.png", "Total 12")
    out = tmp_path / "out.jsonl"
    first = invoke(["extract", str(page), "-o", str(out), *model_args(ckpts.normal)])
    assert first.exit_code == 0
    monkeypatch.chdir(ckpts.normal.parent)
    for spelling in (f"{ckpts.normal}/", ckpts.normal.name):
        args = model_args(ckpts.normal)
        args[1] = spelling
        again = invoke(["extract", str(page), "-o", str(out), *args])
        assert again.exit_code == 0
    (rec,) = read_records(out)
    assert rec.model == str(ckpts.normal.resolve())


def test_identical_files_in_one_run_are_one_job(invoke, ckpts, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    page = text_png(folder / "a.png", "Invoice 7")
    shutil.copy(page, folder / "b.png")
    out = tmp_path / "out.jsonl"
    r = invoke(["extract", str(folder), "-o", str(out), *model_args(ckpts.normal)])
    assert r.exit_code == 0
    assert [Path(rec.source).name for rec in read_records(out)] == ["a.png"]
