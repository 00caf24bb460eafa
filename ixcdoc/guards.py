"""Guards around the model: blank pages before inference, repetition loops during it.

Both are pure functions of pixels or token ids, cheap enough to run on every page and every
decode step.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

# A page is blank when almost no pixel differs clearly from the page's dominant grey level.
BLANK_DELTA = 40  # grey levels: paper texture, scanner noise and JPEG ringing stay below this
BLANK_MAX_INK = 0.0002  # share of pixels allowed to differ: dust specks, not one line of text
BLANK_SIDE = 1024  # analyse at most this many pixels per side (downsampled with a box filter)


def ink_fraction(img: Image.Image) -> float:
    """Share of pixels that differ from the dominant grey level by more than BLANK_DELTA."""
    gray = img.convert("L")
    factor = -(-max(gray.size) // BLANK_SIDE)
    if factor > 1:
        # Box averaging: every source pixel counts, so a 1-px rule or thin stroke survives as
        # a grey line (1/4 of black at a 300-dpi page's factor 4 is still 64 levels off white).
        # Nearest sampling would keep one row in ``factor`` and could drop it entirely.
        gray = gray.reduce(factor)
    hist = gray.histogram()  # 256 bins
    total = sum(hist)
    mode = max(range(256), key=hist.__getitem__)
    near = sum(hist[max(0, mode - BLANK_DELTA) : min(256, mode + BLANK_DELTA + 1)])
    return (total - near) / total


def is_blank(img: Image.Image) -> bool:
    """True when the page carries no visible content (uniform up to noise and specks)."""
    return ink_fraction(img) <= BLANK_MAX_INK


# Repetition: the tail of the output is one short token cycle repeated many times.
REPEAT_MAX_PERIOD = 64  # longest cycle looked for, in tokens
REPEAT_MIN_SPAN = 96  # the repeated tail must cover at least this many tokens
REPEAT_MIN_COUNT = 4  # and the cycle must occur at least this many times


def repeating_period(ids: Sequence[int]) -> int | None:
    """The period p when the tail of ``ids`` is a p-token cycle repeated enough, else None.

    Enough means at least REPEAT_MIN_COUNT copies spanning at least REPEAT_MIN_SPAN tokens:
    long enough that dot leaders, table rules and repeated words in real text do not trigger.
    Each check is a handful of C-level list comparisons.
    """
    n = len(ids)
    tail = list(ids[-(REPEAT_MAX_PERIOD * REPEAT_MIN_COUNT + REPEAT_MIN_SPAN) :])
    for p in range(1, REPEAT_MAX_PERIOD + 1):
        count = max(REPEAT_MIN_COUNT, -(-REPEAT_MIN_SPAN // p))
        span = p * count
        if span > n:
            continue
        unit = tail[-p:]
        if tail[-span:] == unit * count:
            return p
    return None


class RepetitionGuard:
    """Streaming check for ``generate``'s per-token callback: returns False to stop."""

    def __init__(self, every: int = 8) -> None:
        self.ids: list[int] = []
        self.every = every
        self.period: int | None = None

    def __call__(self, token_id: int) -> bool:
        self.ids.append(token_id)
        if len(self.ids) % self.every == 0 and len(self.ids) >= REPEAT_MIN_SPAN:
            self.period = repeating_period(self.ids)
            if self.period is not None:
                return False
        return True

    @property
    def triggered(self) -> bool:
        return self.period is not None

    def trimmed(self) -> list[int]:
        """The ids with the loop cut back to its first full cycle."""
        if self.period is None:
            return list(self.ids)
        p, ids = self.period, self.ids
        # The loop starts where ids stop equalling the ids p later, token by token: stepping
        # back a whole cycle at a time would keep a partial cycle when the stop was mid-phase.
        start = len(ids) - p
        while start > 0 and ids[start - 1] == ids[start - 1 + p]:
            start -= 1
        return ids[: start + p]
