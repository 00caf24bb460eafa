"""ixcdoc.sizing on a tiny real model: slots that hold the tallest page, and --batch-size auto
on the CPU with beams."""

from __future__ import annotations

from typing import Any

import pytest

from ixcdoc import sizing
from ixcdoc.pagerun import Job
from ixcdoc.tasks import ASK, EXTRACT
from ixcdoc.tiling import hd_geometry, image_token_count


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import ixcdoc
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    return ixcdoc.load(write_tiny_checkpoint(tmp_path_factory.mktemp("sizing") / "m"), "cpu")


def _most_tokens_of_any_grid(hd: int, tile: int, patch: int) -> int:
    """The most image tokens any crop grid of tier ``hd`` gives (every rows x cols <= hd)."""
    return max(
        image_token_count(r, c, tile=tile, patch=patch)
        for r in range(1, hd + 1)
        for c in range(1, hd // r + 1)
    )


@pytest.mark.parametrize(
    ("task", "hd"), [(EXTRACT, 9), (EXTRACT, 55), (EXTRACT, None), (ASK, None)]
)
def test_a_slot_holds_a_tall_page_of_n_rows_of_one_crop(tiny: Any, task: Any, hd: Any) -> None:
    """Each crop row adds a newline token, so N rows of one crop is the longest image of tier
    N: a slot sized for a square grid (or one row of N crops) overflows on a tall page."""
    cfg = tiny.config
    tier = hd if hd is not None else task.hd_ceiling
    tall = hd_geometry(tier * cfg.tile, cfg.tile, tier, tile=cfg.tile)  # a strip, N tiles high
    assert (tall.rows, tall.cols) == (tier, 1)
    tokens = tall.image_tokens(cfg.vision.patch_size)
    job = Job(task=task, prompt="Transcribe.", hd=hd, max_new_tokens=64)
    assert sizing.max_image_tokens(tiny, job) == tokens
    assert tokens == _most_tokens_of_any_grid(tier, cfg.tile, cfg.vision.patch_size)
    need = tokens + sizing.text_tokens(tiny, job.prompt) + job.new_tokens
    positions = sizing.job_positions(tiny, job)
    assert need <= positions < need + 256 and positions % 256 == 0


def test_auto_batch_on_the_cpu_gives_every_beam_its_slot(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny.config
    assert tiny.gpu_budget() is None  # the CPU branch
    # float32 K and V for every layer, from the config's shapes
    per_position = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    positions = 512
    # half the RAM (RAM_SHARE) holds exactly 6 slots of one beam
    monkeypatch.setattr(sizing, "available_ram", lambda: 2 * 6 * positions * per_position)
    job = Job(task=EXTRACT, prompt="Transcribe.")
    assert sizing.auto_batch(tiny, job, positions) == 6
    three = Job(task=EXTRACT, prompt="Transcribe.", num_beams=3)
    assert sizing.auto_batch(tiny, three, positions) == 2  # 6 slots / 3 beams
    four = Job(task=EXTRACT, prompt="Transcribe.", num_beams=4)
    assert sizing.auto_batch(tiny, four, positions) == 1
    eight = Job(task=EXTRACT, prompt="Transcribe.", num_beams=8)
    assert sizing.auto_batch(tiny, eight, positions) == 1  # never 0
