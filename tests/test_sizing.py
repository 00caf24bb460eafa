"""ixcdoc.sizing: the positions a request fills and a slot holds, and how many slots fit, on
plain numbers and on a tiny real model (slots that hold the tallest page, beams on the CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from ixcdoc import sizing
from ixcdoc.planning import VRAM_HEADROOM
from ixcdoc.sizing import SlotNeed
from ixcdoc.tasks import ASK, EXTRACT
from ixcdoc.tiling import hd_geometry, image_token_count
from ixcdoc.vram import PROMPT_TEXT_TOKENS, estimate_batch_vram


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import ixcdoc
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    return ixcdoc.load(write_tiny_checkpoint(tmp_path_factory.mktemp("sizing") / "m"), "cpu")


def _per_position(cfg: Any) -> int:
    """float32 K and V bytes of one position over every layer, from the config's shapes."""
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4


def test_a_request_fills_its_prompt_and_answer_within_the_position_limit() -> None:
    assert sizing.request_positions(300, 100, 32768) == 400
    assert sizing.request_positions(32000, 1000, 32768) == 32768  # the answer is cut
    assert sizing.request_positions(40000, 10, 32768) == 40000  # a too-long prompt counts whole


def test_a_slot_rounds_up_to_256_within_the_limit() -> None:
    assert sizing.slot_positions(1, 32768) == 256
    assert sizing.slot_positions(256, 32768) == 256
    assert sizing.slot_positions(257, 32768) == 512
    assert sizing.slot_positions(1000, 1100) == 1024
    assert sizing.slot_positions(1050, 1100) == 1100
    assert sizing.slot_positions(1200, 1100) == 1200  # never fewer than asked


def test_a_servers_slot_holds_the_longest_prompt_and_answer_unrounded() -> None:
    cfg = SimpleNamespace(max_length=16384, max_position_embeddings=32768)
    assert sizing.served_positions(cfg, None) == 32768
    assert sizing.served_positions(cfg, 64) == 16448  # docs/serve.md's example, not 16640
    assert sizing.served_positions(cfg, 10**9) == 32768


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
    assert sizing.max_image_tokens(cfg, tier, 64) == tokens
    assert tokens == max(
        image_token_count(r, c, tile=cfg.tile, patch=cfg.vision.patch_size)
        for r in range(1, tier + 1)
        for c in range(1, tier // r + 1)
    )
    need = SlotNeed.page(cfg, tiny.tokenizer, "Transcribe.", tier, 64)
    assert (need.image_tokens, need.crops, need.max_new_tokens) == (tokens, tier, 64)
    total = tokens + need.text_tokens + 64
    positions = need.positions(cfg)
    assert total <= positions < total + 256 and positions % 256 == 0


def test_text_tokens_count_the_template_around_the_prompt(tiny: Any) -> None:
    short = sizing.text_tokens(tiny.tokenizer, "Hi.")
    longer = sizing.text_tokens(tiny.tokenizer, "Hi. " + "word " * 50)
    assert short > len(tiny.tokenizer.encode("Hi."))  # the system block and template count
    assert longer - short >= 50


def test_a_request_filling_a_slot_needs_exactly_that_slot(tiny: Any) -> None:
    cfg = tiny.config
    need = SlotNeed.filling(cfg, 4096, crops=55)
    assert need.image_tokens + need.text_tokens + need.max_new_tokens == 4096
    assert need.text_tokens == PROMPT_TEXT_TOKENS and need.crops == 55
    assert need.positions(cfg) == 4096


def test_slots_on_the_cpu_give_every_beam_its_slot(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tiny.gpu_budget() is None  # the CPU branch
    positions = 512
    # half the RAM (RAM_SHARE) holds exactly 6 slots of one beam
    ram = 2 * 6 * positions * _per_position(tiny.config)
    monkeypatch.setattr(sizing, "available_ram", lambda: ram)
    fits = [
        sizing.slots_that_fit(
            tiny, SlotNeed.page(tiny.config, tiny.tokenizer, "Transcribe.", 9, 64, b), positions
        )
        for b in (1, 3, 4, 8)
    ]
    assert fits == [6, 2, 1, 1]  # 6 slots / 3 beams; never 0
    monkeypatch.setattr(sizing, "available_ram", lambda: 2**50)
    need = SlotNeed.page(tiny.config, tiny.tokenizer, "Transcribe.", 9, 64)
    assert sizing.slots_that_fit(tiny, need, positions) == 64  # the CPU cap


def test_slots_on_the_cpu_default_to_the_needs_own_positions(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    need = SlotNeed.filling(tiny.config, 1024, crops=1)
    monkeypatch.setattr(sizing, "available_ram", lambda: 2 * 3 * 1024 * _per_position(tiny.config))
    assert sizing.slots_that_fit(tiny, need) == 3


@dataclass
class OnAGpu:
    """The tiny model's config with a GPU budget of ``free`` bytes (the GPU branch on a CPU)."""

    config: Any
    free: int
    quant: str | None = None
    dtype: Any = torch.bfloat16

    def gpu_budget(self) -> Any:
        return SimpleNamespace(free_bytes=self.free)


def test_slots_on_a_gpu_are_what_the_memory_model_fits_in_the_headroom(tiny: Any) -> None:
    cfg = tiny.config
    need = SlotNeed(500, 9, PROMPT_TEXT_TOKENS, 256, beams=2)

    def total(batch: int, quant: str = "bf16") -> int:
        return estimate_batch_vram(
            cfg, batch, 500, 9, quant=quant, max_new_tokens=256, beams=2
        ).total

    free = int(total(5) / VRAM_HEADROOM) + 1  # 5 fit within the headroom, 6 do not
    assert total(6) > int(free * VRAM_HEADROOM)
    assert sizing.slots_that_fit(OnAGpu(cfg, free), need) == 5
    assert sizing.slots_that_fit(OnAGpu(cfg, 0), need) == 1  # never 0
    four = int(total(5, "4bit") / VRAM_HEADROOM) + 1
    assert sizing.slots_that_fit(OnAGpu(cfg, four, quant="4bit"), need) == 5


def test_chat_batch_on_the_cpu_sizes_by_the_available_ram(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DocModel.batch_size_for goes through the same rule (it said 64 whatever the RAM)."""
    from PIL import Image

    from ixcdoc.engine import ChatRequest

    reqs = [ChatRequest([Image.new("RGB", (40, 30), "white")], "Hi.", hd=1, max_new_tokens=8)]
    monkeypatch.setattr(sizing, "available_ram", lambda: 0)
    assert tiny.batch_size_for(reqs) == 1
    monkeypatch.setattr(sizing, "available_ram", lambda: 2**50)
    assert tiny.batch_size_for(reqs) == 64
