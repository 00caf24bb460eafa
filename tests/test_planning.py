"""Automatic and forced tier choice."""

from __future__ import annotations

import pytest

from ixcdoc.errors import UsageError
from ixcdoc.gpu import assumed_gpu
from ixcdoc.planning import choose_tier
from ixcdoc.tasks import ASK, EXTRACT, parse_hd
from ixcdoc.tiling import hd_geometry


def test_native_page_gets_the_smallest_tier_that_does_not_shrink_it() -> None:
    c = choose_tier(1584, 1224, EXTRACT)  # a letter page at 144 dpi
    assert c.hd == 20 and c.reason == "smallest tier at native resolution"
    assert not c.geometry.downscaled and hd_geometry(1584, 1224, 19).downscaled
    assert c.fits == {"bf16": None, "4bit": None}


def test_floor_and_ceiling() -> None:
    small = choose_tier(30, 40, EXTRACT)
    assert small.hd == EXTRACT.hd_floor and "floor" in small.reason
    huge = choose_tier(6000, 4000, ASK)
    assert huge.hd == ASK.hd_ceiling and "ceiling" in huge.reason and huge.geometry.downscaled


def test_forced_tier_wins() -> None:
    c = choose_tier(30, 40, EXTRACT, hd=55)
    assert c.hd == 55 and c.reason == "forced by --hd"
    assert c.image_tokens == hd_geometry(30, 40, 55).image_tokens()


def test_tier_is_lowered_to_fit_a_small_gpu() -> None:
    roomy = choose_tier(2200, 1700, EXTRACT, gpu=assumed_gpu(80))
    assert roomy.fits["bf16"] is True
    tight_gib = roomy.vram["bf16"].total_gib - 0.3  # a little short for this tier
    tight = choose_tier(2200, 1700, EXTRACT, gpu=assumed_gpu(tight_gib / 0.95))
    assert tight.hd < roomy.hd and tight.fits["bf16"] is True and "lowered" in tight.reason
    hopeless = choose_tier(2200, 1700, EXTRACT, gpu=assumed_gpu(4))
    assert hopeless.fits["bf16"] is False and "does not fit" in hopeless.reason


@pytest.mark.parametrize("text,expect", [("auto", None), ("AUTO", None), ("25", 25), ("hd9", 9)])
def test_parse_hd(text: str, expect: int | None) -> None:
    assert parse_hd(text) == expect


@pytest.mark.parametrize("bad", ["0", "-3", "x", "2.5", ""])
def test_parse_hd_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_hd(bad)
