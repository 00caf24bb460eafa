"""Streamed text wrapped for the terminal: nothing lost, nothing wider than the screen."""

from __future__ import annotations

import random
import textwrap

import pytest
from rich.cells import cell_len

from ixcdoc.cli.wrapping import WrapWriter, wrap

WORDS = "the total of invoice 4711 is 1,250.00 EUR due on 2024-03-01 per contract".split()


def _paragraphs(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def _squeeze(s: str) -> str:
    return "".join(s.split())


@pytest.mark.parametrize("width", [10, 17, 40, 80, 200])
def test_single_spaced_text_wraps_as_textwrap_does(width: int) -> None:
    """An independent greedy wrapper (the standard library's) gives the same lines for text of
    single spaces and words shorter than the line."""
    rng = random.Random(width)
    paras = _paragraphs(rng, 6)
    expected = "".join(
        "\n".join(textwrap.wrap(p, width, break_long_words=False, break_on_hyphens=False)) + "\n"
        for p in paras
    )
    assert wrap("\n".join(paras), width) == expected


@pytest.mark.parametrize("width", [10, 23, 40, 80])
def test_every_visible_character_is_kept_and_no_line_is_wider_than_the_screen(width: int) -> None:
    text = (
        "| a | table | row |\n\n  indented  by two\ttab\n"
        + "x" * 95
        + " after a long word 中文文本测试中文文本测试中文文本 mixed 标arm文ird\n"
        + "trailing spaces   \n"
    )
    out = wrap(text, width)
    assert all(cell_len(line) <= width for line in out.splitlines())
    assert _squeeze(out) == _squeeze(text)


def test_feeding_in_any_pieces_gives_the_same_screen() -> None:
    rng = random.Random(7)
    text = "\n".join(_paragraphs(rng, 4)) + " 中文文本测试 " + "y" * 50
    whole = wrap(text, 31)
    for _ in range(20):
        out: list[str] = []
        w = WrapWriter(out.append, lambda: 31)
        i = 0
        while i < len(text):
            j = i + rng.randint(1, 7)
            w.feed(text[i:j])
            i = j
        w.close()
        assert "".join(out) == whole


def test_a_word_is_written_as_soon_as_it_is_complete() -> None:
    out: list[str] = []
    w = WrapWriter(out.append, lambda: 80)
    w.feed("Hello wor")
    assert "".join(out) == "Hello"  # "wor" may go on: held back, the space too
    w.feed("ld")
    w.feed(" ")
    assert "".join(out) == "Hello world"
    w.close()
    assert "".join(out) == "Hello world\n"


def test_control_characters_are_shown_not_obeyed() -> None:
    assert wrap("a\x1b[2Jb\rc\x08d\x7fe\x85f\u3000g\u00a0h", 40) == (
        "a\u241b[2Jb\u240dc\u2408d\u2421e\ufffdf\u3000g\u00a0h\n"
    )


def test_a_narrower_terminal_wraps_the_rest_at_its_new_width() -> None:
    width = [40]
    out: list[str] = []
    w = WrapWriter(out.append, lambda: width[0])
    w.feed("alpha beta gamma delta ")
    width[0] = 12
    w.feed("epsilon zeta eta theta iota")
    w.close()
    lines = "".join(out).splitlines()
    assert lines[0].startswith("alpha beta gamma delta")
    assert all(len(line) <= 12 for line in lines[1:])
    assert _squeeze("".join(out)) == _squeeze("alpha beta gamma delta epsilon zeta eta theta iota")
