"""A batch killed (SIGKILL) or interrupted (Ctrl-C) mid-run: the output file stays valid and the
same command finishes the job, with no page lost and none duplicated."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from ixcdoc.errors import EXIT_INTERRUPTED
from tests.cli.helpers import (
    IXCDOC,
    Checkpoints,
    Invoke,
    model_args,
    page_keys,
    parse_lines,
    read_records,
    subprocess_env,
    text_png,
)

# Long enough per page (tens of decode steps) that a run is still going when its first record
# appears; the tiny model never stops early at this length.
SLOW_TOKENS = 40
WAIT_S = 240  # upper bound for the first record, on a loaded machine


def pages_folder(root: Path, n: int) -> list[Path]:
    return [
        text_png(root / f"p{i:02d}.png", f"page number {i}", size=(150 + i, 120)) for i in range(n)
    ]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    def default_sigint() -> None:  # a child of a shell that ignores SIGINT would inherit that
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        [*IXCDOC, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        preexec_fn=default_sigint,
    )


def wait_for_records(proc: subprocess.Popen, out: Path, n: int) -> None:
    """Poll the output file until it holds n complete lines; fail if the run ends first."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        try:  # wait on the process itself between looks at the file, not a bare sleep
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        _, err = proc.communicate()
        pytest.fail(f"ixcdoc exited ({proc.returncode}) before writing: {err.decode()}")
    proc.kill()
    proc.communicate()
    pytest.fail(f"no record in {out} after {WAIT_S} s")


@pytest.mark.parametrize(("batch", "n"), [(1, 4), (2, 8)])
def test_rerun_after_kill_9_finishes_the_job(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, batch: int, n: int
) -> None:
    pages = pages_folder(tmp_path / "scans", n)
    out = tmp_path / "out.jsonl"
    args = ["extract", str(tmp_path / "scans"), "-o", str(out), "--batch-size", str(batch)]
    args += [*model_args(ckpts.normal, SLOW_TOKENS), "--hd", "4"]

    proc = start(args, tmp_path)
    wait_for_records(proc, out, 1)
    proc.kill()  # SIGKILL: no handler runs, no cleanup
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    before = out.read_bytes()
    done = read_records(out)  # whole lines only: every record was written in one append
    assert 1 <= len(done) < n, "killed mid-run"

    res = invoke(args)
    assert res.exit_code == 0, res.stderr
    assert f"{len(done)} already done" in res.stderr
    final = read_records(out)
    assert out.read_bytes().startswith(before)  # only appended
    counts = Counter(page_keys(final))
    assert counts == Counter({(str(p), 1): 1 for p in pages})  # none lost, none twice
    assert all(r.status == "ok" for r in final)


@pytest.mark.parametrize(("batch", "n"), [(1, 3), (2, 8)])
def test_ctrl_c_exits_130_with_a_valid_file_and_a_resume_hint(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, batch: int, n: int
) -> None:
    """One page at a time, and on the engine with more pages than slots (pages in flight
    finish together, so fewer slots than pages keeps the run going when Ctrl-C lands)."""
    pages = pages_folder(tmp_path / "scans", n)
    out = tmp_path / "out.jsonl"
    args = ["extract", str(tmp_path / "scans"), "-o", str(out), "--batch-size", str(batch)]
    args += [*model_args(ckpts.normal, SLOW_TOKENS), "--hd", "4"]

    proc = start(args, tmp_path)
    wait_for_records(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr.decode()
    assert stdout == b""
    text = stderr.decode()
    assert "run the same command again to resume" in text
    assert "Traceback" not in text
    # Whole records only. (A Ctrl-C that lands while the writer is still syncing the line it
    # just appended makes it take that line back, so the file may hold one record fewer than
    # was seen; that page is simply redone.)
    done = read_records(out)
    assert len(done) < n, "interrupted mid-run"

    res = invoke(args)
    assert res.exit_code == 0, res.stderr
    counts = Counter(page_keys(read_records(out)))
    assert counts == Counter({(str(p), 1): 1 for p in pages})


@pytest.mark.parametrize(("batch", "pages"), [(1, 3), (2, 6)])
def test_reader_going_away_stops_the_run_quietly(
    tmp_path: Path, ckpts: Checkpoints, batch: int, pages: int
) -> None:
    """``ixcdoc extract ... --json -o out.jsonl | head -1``: the closed pipe ends the run
    without a traceback, and the output file holds only whole records (one page at a time,
    and on the engine, where the pages in flight finish together)."""
    pages_folder(tmp_path / "scans", pages)
    out = tmp_path / "out.jsonl"
    args = ["extract", str(tmp_path / "scans"), "--json", "-o", str(out)]
    args += ["--batch-size", str(batch)]
    proc = start([*args, *model_args(ckpts.normal, SLOW_TOKENS), "--hd", "4"], tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # blocks until the first record; EOF if the run failed
    proc.stdout.close()  # the reader is gone
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert first.endswith(b"\n"), stderr.decode()
    (rec,) = parse_lines(first.decode())
    assert proc.returncode not in (0, EXIT_INTERRUPTED)  # stopped, and says it did not finish
    assert b"Traceback" not in stderr
    done = read_records(out)
    assert rec in done  # the file gets records as pages finish: not necessarily first
    assert len(done) < pages
