"""``ixcdoc view`` as a command: the HTML file, stdout, and one-line errors."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from tests.cli.helpers import IXCDOC, Checkpoints, Invoke, model_args, subprocess_env, text_png


def extract_run(invoke: Invoke, ckpts: Checkpoints, folder: Path) -> Path:
    text_png(folder / "a.png", "page A")
    text_png(folder / "b.png", "page B")
    out = folder / "run.jsonl"
    args = ["extract", folder / "a.png", folder / "b.png", "-o", out]
    res = invoke([*args, *model_args(ckpts.normal)])
    assert res.exit_code == 0, res.stderr
    return out


def test_view_html_writes_one_file_and_says_so(
    invoke: Invoke, ckpts: Checkpoints, tmp_path: Path
) -> None:
    records = extract_run(invoke, ckpts, tmp_path)
    out = tmp_path / "view.html"
    res = invoke(["view", records, "--html", out])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert res.stderr == f"2 pages (2 with their image) of 2 documents in {out}\n"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.count("data:image/jpeg;base64,") == 2
    res = invoke(["view", records, "--html", "-", "--quiet"])
    assert res.exit_code == 0 and res.stderr == ""
    assert res.stdout.startswith("<!doctype html>") and res.stdout.count("data:image/jpeg") == 2


def test_view_errors_are_one_line(invoke: Invoke, tmp_path: Path) -> None:
    res = invoke(["view", tmp_path / "nothing.jsonl"])
    assert res.exit_code == 1
    assert res.stderr == f"error: {tmp_path / 'nothing.jsonl'}: no such output file\n"
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my own notes\n")
    res = invoke(["view", notes, "--html", tmp_path / "x.html"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {notes}")
    assert not (tmp_path / "x.html").exists()


def test_view_serves_on_loopback_prints_the_address_and_stops_on_ctrl_c(
    invoke: Invoke, ckpts: Checkpoints, tmp_path: Path
) -> None:
    records = extract_run(invoke, ckpts, tmp_path)
    proc = subprocess.Popen(
        [*IXCDOC, "view", str(records)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()  # blocks until the server is up
        assert re.fullmatch(
            rf"viewing {re.escape(str(records))} at http://127\.0\.0\.1:\d+/ \(Ctrl-C stops it\)\n",
            line,
        ), line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert proc.stdout is not None and proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)
