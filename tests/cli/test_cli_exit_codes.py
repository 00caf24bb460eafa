"""Exit code 1: fatal problems before or outside page work are one red line, not a traceback.

(0, 2, 3 and 130 are checked where their behaviour is: test_cli_extract, test_cli_usage,
test_cli_plan, test_cli_guards and test_cli_signals.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ixcdoc.errors import EXIT_FATAL
from tests.cli.helpers import Checkpoints, Invoke, model_args, text_png


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def test_no_cuda_with_device_auto_says_to_use_cpu(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    png = text_png(tmp_path / "p.png", "x")
    for args in (["extract", png], ["ask", png, "what?"], ["chart", png]):
        res = invoke([*args, "--model", ckpts.normal])  # --device defaults to auto
        assert res.exit_code == EXIT_FATAL
        assert res.stdout == ""
        line = one_error_line(res.stderr)
        assert "--device cpu" in line


def test_checkpoint_with_a_missing_weight(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    key = "model.layers.1.feed_forward.w2.weight"

    def drop(state: dict) -> None:
        del state[key]

    broken = write_tiny_checkpoint(tmp_path / "broken", post_hook=drop)
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["extract", png, *model_args(broken)])
    assert res.exit_code == EXIT_FATAL
    assert res.stdout == ""
    # One error, starting with the red line; the loader lists the keys it names below it.
    assert res.stderr.startswith("error: ") and res.stderr.count("error: ") == 1
    assert key in res.stderr
    assert "Traceback" not in res.stderr


def test_checkpoint_without_config(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    folder = tmp_path / "noconfig"
    shutil.copytree(ckpts.normal, folder)
    (folder / "config.json").unlink()
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["extract", png, *model_args(folder)])
    assert res.exit_code == EXIT_FATAL
    assert "config.json" in one_error_line(res.stderr)


def test_checkpoint_folder_that_does_not_exist(tmp_path: Path, invoke: Invoke) -> None:
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["extract", png, *model_args(tmp_path / "nowhere")])
    assert res.exit_code == EXIT_FATAL
    assert "nowhere" in one_error_line(res.stderr)


def test_output_in_a_missing_folder(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["extract", png, "-o", tmp_path / "no" / "out.jsonl", *model_args(ckpts.normal)])
    assert res.exit_code == EXIT_FATAL
    assert "does not exist" in one_error_line(res.stderr)
    assert not (tmp_path / "no").exists()


def test_model_from_the_environment(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IXCDOC_MODEL names the checkpoint when --model is not given."""
    monkeypatch.setenv("IXCDOC_MODEL", str(ckpts.normal))
    png = text_png(tmp_path / "p.png", "x")
    res = invoke(["extract", png, "--device", "cpu", "--max-new-tokens", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    assert str(ckpts.normal) in res.stdout


def test_debug_shows_the_traceback(tmp_path: Path, ckpts: Checkpoints, invoke: Invoke) -> None:
    from ixcdoc.errors import WeightsError

    png = text_png(tmp_path / "p.png", "x")
    with pytest.raises(WeightsError):
        invoke(["--debug", "extract", png, *model_args(tmp_path / "nowhere")])


def test_output_file_in_use_by_another_run(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """A second writer of the same -o file stops instead of duplicating work."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "out.jsonl"
    png = text_png(tmp_path / "p.png", "x")
    with open(out, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running ixcdoc holds
        res = invoke(["extract", png, "-o", out, *model_args(ckpts.normal)])
    assert res.exit_code == EXIT_FATAL
    assert "another process" in one_error_line(res.stderr)
    assert out.read_bytes() == b""


def test_a_batch_size_no_memory_holds_is_one_line_before_any_allocation(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    """An absurd --batch-size used to reach torch.zeros (an overflow traceback, or for merely
    huge values the kernel's OOM killer): the engine now refuses a cache larger than the memory
    left, saying how large, and nothing is recorded."""
    png = text_png(tmp_path / "p.png", "x")
    out = tmp_path / "o.jsonl"
    for n in ("99999999999999999999", "5000000"):
        res = invoke(["extract", png, "-o", out, "--batch-size", n, *model_args(ckpts.normal)])
        assert res.exit_code == EXIT_FATAL
        line = one_error_line(res.stderr)
        assert f"KV cache for {n} sequences" in line and "GiB" in line
        assert "--batch-size" in line
    assert not out.exists() or out.read_text() == ""
