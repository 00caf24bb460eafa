"""The guards end to end: blank pages skip the model, repetition loops stop early, and an
out-of-memory error falls back one tier at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ixcdoc.errors import EXIT_PARTIAL
from tests.cli.helpers import (
    Checkpoints,
    Invoke,
    expected_grid,
    model_args,
    parse_lines,
    text_pdf,
    text_png,
    white_png,
)


@pytest.fixture
def chat_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tier of every page that reaches the model in this test (through ``chat`` or the
    batched engine: both start a page with ``DocModel.pixels``; the real one still runs)."""
    from ixcdoc.runtime import DocModel

    calls: list[int] = []
    real = DocModel.pixels

    def pixels(self: Any, image: Any, hd: int) -> Any:
        calls.append(hd)
        return real(self, image, hd)

    monkeypatch.setattr(DocModel, "pixels", pixels)
    return calls


def oom_at(monkeypatch: pytest.MonkeyPatch, tiers: set[int] | None) -> list[int]:
    """Make the vision step raise CUDA OOM at these tiers (None: at every tier)."""
    import torch

    from ixcdoc.runtime import DocModel

    calls: list[int] = []
    real = DocModel.pixels

    # pixels() is where both paths (chat, and the batched engine's admission) start a page.
    def pixels(self: Any, image: Any, hd: int) -> Any:
        calls.append(hd)
        if len(calls) > 60:  # a fallback that never gets lower: fail instead of hanging
            raise RuntimeError(f"retried {len(calls)} times: {calls[:10]}...")
        if tiers is None or hd in tiers:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, image, hd)

    monkeypatch.setattr(DocModel, "pixels", pixels)
    return calls


def test_blank_pages_are_flagged_and_never_reach_the_model(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, chat_calls: list[int]
) -> None:
    white = white_png(tmp_path / "white.png")
    pdf = text_pdf(tmp_path / "mixed.pdf", [None, "some words here"])
    res = invoke(["extract", white, pdf, "--json", *model_args(ckpts.normal), "--hd", "4"])
    assert res.exit_code == 0, res.stderr
    recs = parse_lines(res.stdout)
    assert [(Path(r.source).name, r.page) for r in recs] == [
        ("white.png", 1),
        ("mixed.pdf", 1),
        ("mixed.pdf", 2),
    ]
    for blank in recs[:2]:
        assert blank.status == "ok"
        assert blank.flags == ("blank",)
        assert blank.text == ""
        assert blank.tier is None and blank.grid is None and blank.image_tokens is None
        assert blank.timings.prefill_ms is None and blank.timings.tokens is None
        assert blank.timings.render_ms is not None
    assert recs[1].render_dpi is not None  # a PDF page is still rendered and measured
    assert recs[2].flags == () and recs[2].timings.prefill_ms is not None
    assert chat_calls == [4]  # only the page with text went to the model
    assert "2 blank" in res.stderr


def test_blank_page_piped_prints_an_empty_line_and_a_note(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, chat_calls: list[int]
) -> None:
    res = invoke(["extract", white_png(tmp_path / "w.png"), *model_args(ckpts.normal)])
    assert res.exit_code == 0
    assert res.stdout == "\n"
    assert "blank page: not sent to the model" in res.stderr
    assert chat_calls == []


def test_repetition_loop_is_stopped_and_trimmed(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke
) -> None:
    from ixcdoc.tinyckpt import DEFAULT_LOOP_CYCLE
    from ixcdoc.tokenizer import Tokenizer

    max_new = 400
    png = text_png(tmp_path / "page.png", "loop")
    res = invoke(["extract", png, "--json", *model_args(ckpts.loop, max_new), "--hd", "4"])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    assert rec.status == "ok"
    assert rec.flags == ("repetition",)
    assert rec.timings.tokens is not None and rec.timings.tokens < max_new  # stopped early
    # Unchecked, the loop would fill max_new tokens with the cycle; the record keeps about one.
    cycle = Tokenizer.from_dir(ckpts.loop).decode(list(DEFAULT_LOOP_CYCLE)).strip()
    assert cycle
    assert rec.text
    assert len(rec.text) <= 2 * len(cycle) + 2
    assert len(rec.text) * 10 < len(cycle) * (rec.timings.tokens // len(DEFAULT_LOOP_CYCLE))

    plain = invoke(["extract", png, *model_args(ckpts.loop, max_new), "--hd", "4"])
    assert plain.stdout == rec.text + "\n"
    assert "stopped a repetition loop" in plain.stderr


def test_out_of_memory_falls_back_one_tier(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    tile = json.loads((ckpts.normal / "config.json").read_text())["vision_config"]["image_size"]
    png = text_png(tmp_path / "page.png", "oom", size=(160, 120))
    calls = oom_at(monkeypatch, {9})
    res = invoke(["extract", png, "--json", *model_args(ckpts.normal), "--hd", "9"])
    assert res.exit_code == 0, res.stderr
    (rec,) = parse_lines(res.stdout)
    # The next tier down that really has fewer crops than HD9 (tiers with as many are skipped).
    crops9 = _crops(expected_grid(120, 160, 9, tile))
    lower = max(t for t in range(1, 9) if _crops(expected_grid(120, 160, t, tile)) < crops9)
    assert calls == [9, lower]
    assert rec.status == "ok"
    assert rec.flags == ("tier_fallback",)
    assert rec.tier == lower
    assert rec.grid == expected_grid(120, 160, lower, tile)
    assert rec.hd_setting == "9"  # the setting, not the tier used: resume keys stay stable

    calls.clear()
    plain = invoke(["extract", png, *model_args(ckpts.normal), "--hd", "9"])
    assert plain.exit_code == 0
    assert calls == [9, lower]
    assert f"out of GPU memory; retried at HD{lower}" in plain.stderr


def test_out_of_memory_at_every_tier_is_a_page_error(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    tile = json.loads((ckpts.normal / "config.json").read_text())["vision_config"]["image_size"]
    good = text_png(tmp_path / "a.png", "a", size=(160, 120))
    calls = oom_at(monkeypatch, None)
    res = invoke(["extract", good, "--json", *model_args(ckpts.normal), "--hd", "9"])
    assert res.exit_code == EXIT_PARTIAL
    (rec,) = parse_lines(res.stdout)
    assert rec.status == "error"
    assert rec.error is not None and rec.error.code == "oom"
    assert rec.text == ""
    assert "tier_fallback" in rec.flags
    # Every tier with fewer crops was tried, down to a single crop; tiers that would give the
    # same grid again are skipped.
    assert calls[0] == 9
    assert calls == sorted(set(calls), reverse=True)
    crops = [_crops(expected_grid(120, 160, t, tile)) for t in calls]
    assert crops == sorted(set(crops), reverse=True)
    assert crops[-1] == 1
    assert rec.tier == calls[-1]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "out of GPU memory" in errors[0]


def test_an_unexpected_model_failure_is_that_page_error(
    tmp_path: Path, ckpts: Checkpoints, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not out of memory: no fallback, an error record (code "error"), and the batch goes on."""
    from ixcdoc.runtime import DocModel

    calls: list[tuple[int, int]] = []
    real = DocModel.pixels

    def pixels(self: Any, image: Any, hd: int) -> Any:
        calls.append(image.size)
        if image.size == (170, 130):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, image, hd)

    monkeypatch.setattr(DocModel, "pixels", pixels)
    bad = text_png(tmp_path / "docs" / "a.png", "a", size=(170, 130))
    text_png(tmp_path / "docs" / "b.png", "b")
    res = invoke(["extract", tmp_path / "docs", "--json", *model_args(ckpts.normal), "--hd", "4"])
    assert res.exit_code == EXIT_PARTIAL
    assert calls == [(170, 130), (160, 120)]  # tried once, not at lower tiers; then page b
    first, second = parse_lines(res.stdout)
    assert first.status == "error" and first.error is not None
    assert first.error.code == "error"
    assert first.error.message.startswith(f"{bad} page 1: RuntimeError: CUDA error")
    assert first.flags == ()
    assert second.status == "ok"
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "illegal memory access" in errors[0]


def _crops(grid: tuple[int, int]) -> int:
    return grid[0] * grid[1]
