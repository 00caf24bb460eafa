"""Blank-page and repetition guards."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from ixcdoc.guards import (
    REPEAT_MIN_SPAN,
    RepetitionGuard,
    ink_fraction,
    is_blank,
    repeating_period,
)


def _page(color: int = 255) -> Image.Image:
    return Image.new("RGB", (1224, 1584), (color, color, color))


def test_white_grey_and_noisy_pages_are_blank() -> None:
    assert is_blank(_page())
    assert is_blank(_page(200))  # a grey scan background
    rng = random.Random(0)
    noisy = _page(235)
    px = noisy.load()
    for _ in range(20000):  # scanner noise within +-20 levels
        x, y = rng.randrange(1224), rng.randrange(1584)
        v = 235 + rng.randint(-20, 20)
        px[x, y] = (v, v, v)
    for _ in range(30):  # dust specks
        x, y = rng.randrange(1224), rng.randrange(1584)
        px[x, y] = (0, 0, 0)
    assert is_blank(noisy)


def test_one_short_line_of_text_is_not_blank() -> None:
    page = _page()
    ImageDraw.Draw(page).text((100, 100), "Page 7", fill=(0, 0, 0), font_size=24)
    assert ink_fraction(page) > 0.0002
    assert not is_blank(page)


def test_dark_page_with_light_text_is_not_blank() -> None:
    page = _page(10)
    ImageDraw.Draw(page).text((50, 50), "Error 42: disk full", fill=(230, 230, 230), font_size=28)
    assert not is_blank(page)


def test_repeating_period_finds_cycles_only_when_long_enough() -> None:
    text = list(range(100, 140))
    assert repeating_period(text) is None
    cycle = [5, 6, 7]
    looped = text + cycle * (REPEAT_MIN_SPAN // 3)
    assert repeating_period(looped) == 3
    assert repeating_period(text + cycle * 3) is None  # three times is real text
    assert repeating_period([9] * REPEAT_MIN_SPAN) == 1
    assert repeating_period([9] * (REPEAT_MIN_SPAN - 1)) is None
    long_cycle = list(range(200, 240))  # 40-token cycle, 4 copies = 160 tokens
    assert repeating_period(text + long_cycle * 4) == 40


def test_guard_stops_a_loop_and_trims_it() -> None:
    guard = RepetitionGuard()
    prefix = list(range(1000, 1020))
    stream = prefix + [1, 2, 3, 4] * 100
    stopped_at = None
    for i, t in enumerate(stream):
        if guard(t) is False:
            stopped_at = i
            break
    assert stopped_at is not None and stopped_at < len(stream) - 1
    assert guard.triggered and guard.period == 4
    assert guard.trimmed() == [*prefix, 1, 2, 3, 4]


def test_guard_passes_ordinary_text() -> None:
    guard = RepetitionGuard()
    rng = random.Random(1)
    assert all(guard(rng.randrange(1000)) for _ in range(2000))
    assert not guard.triggered


def test_the_count_threshold_decides_when_the_span_is_long_enough() -> None:
    text = list(range(100, 140))
    cycle = list(range(200, 240))  # 40 tokens: 3 copies (120) already pass the 96-token span
    assert 3 * len(cycle) >= REPEAT_MIN_SPAN
    assert repeating_period(text + cycle * 3) is None  # three times is real text
    assert repeating_period(text + cycle * 4) == 40


def _run(stream: list[int]) -> RepetitionGuard:
    guard = RepetitionGuard()
    for t in stream:
        if guard(t) is False:
            break
    return guard


def test_a_loop_from_the_first_token_trims_to_one_cycle() -> None:
    assert _run([1, 2, 3, 4] * 100).trimmed() == [1, 2, 3, 4]
    long_cycle = list(range(300, 340))
    assert _run(long_cycle * 10).trimmed() == long_cycle


def test_a_loop_stopped_mid_cycle_trims_to_one_whole_cycle() -> None:
    # 20 tokens of text, then a 3-token loop: the guard looks every 8 tokens and stops at 120,
    # 100 loop tokens in, one token into the 34th copy.
    prefix = list(range(1000, 1020))
    guard = _run(prefix + [5, 6, 7] * 100)
    assert guard.period == 3 and len(guard.ids) == 120
    assert guard.trimmed() == [*prefix, 5, 6, 7]


def test_box_downsampling_keeps_a_thin_rule() -> None:
    # 4096 px wide -> factor 4. A 1-px rule on row 4000 falls between the rows nearest
    # sampling keeps (2, 6, 10, ...); averaged, it is a 191-grey line 64 levels off the paper.
    page = Image.new("L", (4096, 4096), 255)
    ImageDraw.Draw(page).line([(0, 4000), (4095, 4000)], fill=0, width=1)
    assert ink_fraction(page) > 0.0002
    assert not is_blank(page)
