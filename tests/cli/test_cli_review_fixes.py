"""Behaviour found in review: inputs before the model, stable model names, duplicate bytes,
a closed output pipe."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ixcdoc.errors import EXIT_PARTIAL
from tests.cli.helpers import model_args, read_records, subprocess_env, text_png

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_closed_output_pipe_ends_quietly(tmp_path: Path) -> None:
    pages = [text_png(tmp_path / f"p{i:03d}.png", f"page {i}") for i in range(400)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ixcdoc.cli", "plan", "--json", *map(str, pages)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, like `| head -1`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141), err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
