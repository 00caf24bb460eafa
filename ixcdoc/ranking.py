"""Which pages of a long document to read for a question: BM25 over the PDF text layer, and
the model's screening scores for the pages the text layer cannot rank (``choose_pages``)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

_WORD = re.compile(r"\w+", re.UNICODE)
# Words that carry no topic: left out of the query only (pages keep them for length norms).
STOPWORDS = frozenset(
    (
        "a an and are as at be by do does for from has have how in is it its of on or that the "
        "this to was were what when where which who why with"
    ).split()
)
K1 = 1.5
B = 0.75


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; CJK runs are split into single characters."""
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if any("\u3040" <= c <= "\u9fff" for c in w):
            out.extend(w)
        else:
            out.append(w)
    return out


def bm25_scores(query: str, pages: Sequence[str]) -> list[float]:
    """Okapi BM25 score of each page's text for the query (k1=1.5, b=0.75)."""
    docs = [Counter(tokenize(p)) for p in pages]
    lengths = [sum(d.values()) for d in docs]
    n = len(docs)
    avg = (sum(lengths) / n) if n else 0.0
    terms = [t for t in dict.fromkeys(tokenize(query)) if t not in STOPWORDS]
    scores = [0.0] * n
    for t in terms:
        df = sum(1 for d in docs if t in d)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            f = d.get(t, 0)
            if f:
                norm = 1 - B + B * (lengths[i] / avg if avg else 1.0)
                scores[i] += idf * f * (K1 + 1) / (f + K1 * norm)
    return scores


def rank_pages(query: str, pages: Sequence[str], top_k: int = 1) -> list[int]:
    """Indices of the ``top_k`` best pages (ties go to the earlier page); [] when none match."""
    scores = bm25_scores(query, pages)
    ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    return ranked[:top_k]


# screen(pages) -> {page: score}: the model's relevance of each page (higher is better); a
# page it could not screen (blank, unreadable) is left out.
Screen = Callable[[list[int]], Mapping[int, float]]


@dataclass(frozen=True)
class PageChoice:
    """The pages to answer for a question, best first, and the screening behind the choice."""

    pages: tuple[int, ...]
    scores: Mapping[int, float] = field(default_factory=dict)  # screened pages (none: no pass)
    tier: int | None = None  # the tier the pages were screened at (set by the screener)


def choose_pages(
    question: str,
    numbers: Sequence[int],
    texts: Sequence[str],
    top_k: int,
    screen: Screen | None = None,
) -> PageChoice:
    """The ``top_k`` pages of ``numbers`` (text layers ``texts``) to answer ``question`` from.

    One page: itself. Every page with a text layer and some sharing a word with the question:
    the ``top_k`` best by BM25, no model. Otherwise the text layer rules out only the text pages
    that share no word with the question while others do; the rest (every page without text,
    the ``top_k`` best text pages, or every text page when none matched) are the candidates,
    and when there are more than ``top_k`` of them ``screen`` scores them and the ``top_k``
    best are answered (ties to the earlier page). Without ``screen``, or when it could screen
    none of them, every candidate is answered in document order.
    """
    numbers = list(numbers)
    if len(numbers) <= 1:
        return PageChoice(tuple(numbers))
    ranked = [numbers[i] for i in rank_pages(question, texts, top_k=len(numbers))]
    scans = {n for n, t in zip(numbers, texts, strict=True) if not t.strip()}
    if ranked and not scans:
        return PageChoice(tuple(ranked[:top_k]))
    text_left = set(ranked[:top_k]) if ranked else set(numbers) - scans
    candidates = [n for n in numbers if n in scans or n in text_left]
    if screen is None or len(candidates) <= top_k:
        return PageChoice(tuple(candidates))
    scores = {n: float(s) for n, s in screen(candidates).items()}
    if not scores:
        return PageChoice(tuple(candidates))
    best = sorted(scores, key=lambda n: (-scores[n], n))[:top_k]
    return PageChoice(tuple(best), scores)
