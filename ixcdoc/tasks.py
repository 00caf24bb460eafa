"""Task presets in one place: prompt text, tier floor and ceiling, generation length.

The floor keeps small images from being read too coarsely (upstream always upscales to fill
the budget, so a floor costs nothing in detail); the ceiling bounds time and memory per page.
``ask`` and ``chart`` stop at 25, the tier the official evaluation uses for ChartQA, TextVQA
and most benchmarks; ``extract`` goes up to 55, the tier used for DocVQA/InfoVQA val, because
transcription needs every glyph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ixcdoc.errors import UsageError


@dataclass(frozen=True)
class TaskPreset:
    """What one command asks the model and how finely it looks."""

    name: str
    prompt: str  # the instruction; for ``ask`` the user's question replaces it
    hd_floor: int
    hd_ceiling: int
    max_new_tokens: int


ASK = TaskPreset(
    name="ask",
    prompt="{question}",
    hd_floor=9,
    hd_ceiling=25,
    max_new_tokens=512,
)
EXTRACT = TaskPreset(
    name="extract",
    prompt=(
        "Transcribe all the text in this image in natural reading order. Use Markdown for "
        "headings, lists and tables. Output only the transcription."
    ),
    hd_floor=16,
    hd_ceiling=55,
    max_new_tokens=2048,
)
CHART = TaskPreset(
    name="chart",
    prompt=(
        "Summarize this chart: what kind of chart it is, what it measures, the main trends "
        "and the most notable values."
    ),
    hd_floor=9,
    hd_ceiling=25,
    max_new_tokens=512,
)
CHART_TABLE = TaskPreset(
    name="chart",
    prompt=(
        "Read the data shown in this chart and write it as a Markdown table with a header row. "
        "Output only the table."
    ),
    hd_floor=9,
    hd_ceiling=25,
    max_new_tokens=1024,
)

PRESETS: dict[str, TaskPreset] = {"ask": ASK, "extract": EXTRACT, "chart": CHART}

# The most characters of a draft for speculative decoding (a page's text layer, or the draft a
# chat request passes): about 8x the longest transcription ``extract`` writes (2,048 tokens of
# ~4 characters), over any real page's text (a dense A4 page is ~6,000), while a page whose text
# layer is a megabyte of hidden text costs the engine no more than this to tokenize and search.
DRAFT_CHARS = 65_536
# The most tokens of a draft the engine keeps (the first ones): DRAFT_CHARS at ~4 characters a
# token. Text of a script the vocabulary lacks is byte tokens, up to 4 per character, so a
# DRAFT_CHARS draft can be 262,144 tokens; indexing that many distinct ids took 1.0 s on the
# engine's thread and 200 MiB per sequence, 16,384 tokens 0.02 s and 13 MiB (2-core VM,
# 2026-12-07). A real page's text stays whole even at a token per character (digits are one
# token each; a dense A4 page is ~6,000 characters).
DRAFT_TOKENS = DRAFT_CHARS // 4

# ``ask`` on pages without a text layer: the model screens every candidate page at this tier
# and only the best are answered at the task's own tier (docs/screening.md). HD4 is a 2x2 grid:
# a letter page at 672 px on its long side, 757 image tokens, about a quarter of the 3,097 a
# letter page costs at ask's ceiling (HD25, 5x4), while headings, table titles and large print
# stay legible. HD1 (313 tokens, 336 px) would shrink the body text of a page to a few pixels.
SCREEN_HD = 4
# What the screening asks of each page; only its answer's first token is read, never decoded.
SCREEN_PROMPT = (
    'Does this page contain the answer to the question "{question}"? Please answer yes or no.'
)
# The first answer piece of each spelling (InternLM2: "Yes" is one piece right after the
# assistant turn's newline, as add_dummy_prefix is off); the score sums over the spellings.
SCREEN_YES = ("Yes", "yes", "YES")
SCREEN_NO = ("No", "no", "NO")


def preset(name: str) -> TaskPreset:
    """The preset for a task name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; expected one of {', '.join(PRESETS)}") from None


# Upstream fills the tier's crop budget whatever the page, so HD N costs about 144 N image
# tokens: far past the model's 16384 positions long before this.
MAX_HD = 1000


def parse_hd(value: str | int) -> int | None:
    """``auto`` -> None, otherwise a whole number from 1 to MAX_HD (usage error otherwise)."""
    if isinstance(value, int):
        n = value
    else:
        text = value.strip().lower().removeprefix("hd")
        if text == "auto":
            return None
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"--hd must be 'auto' or a whole number >= 1, got {value!r}") from None
    if n < 1:
        raise UsageError(f"--hd must be 'auto' or a whole number >= 1, got {value!r}")
    if n > MAX_HD:
        raise UsageError(
            f"--hd {n} is too large: above HD{MAX_HD} a page's image tokens exceed the model's "
            "context on any page (ixcdoc tiers shows the token counts)"
        )
    return n


# More memory than any machine has; the VRAM estimate converts GiB to bytes as an integer, so
# a value like 1e300 would overflow rather than plan.
MAX_VRAM_GIB = 1_000_000.0


def check_vram_gib(value: float | str | None) -> float | None:
    """A --vram value in GiB: a finite number from 1 to MAX_VRAM_GIB (None passes through)."""
    if value is None:
        return None
    try:
        gib = float(value)
    except (TypeError, ValueError):
        gib = math.nan
    if not (math.isfinite(gib) and 1 <= gib <= MAX_VRAM_GIB):
        raise UsageError(
            f"--vram must be a number of GiB from 1 to {MAX_VRAM_GIB:,.0f}, got {value!r}"
        )
    return gib


def parse_aspect(text: str) -> tuple[float, float]:
    """A page shape given as "W:H" (e.g. 8.5:11) -> (h, w), both finite and > 0."""
    parts = str(text).split(":")
    try:
        w, h = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        w = h = math.nan
    if not all(math.isfinite(x) and x > 0 for x in (w, h)):
        raise UsageError(
            f"--aspect must be W:H with two finite numbers > 0, like 8.5:11, got {text!r}"
        )
    return (h, w)
