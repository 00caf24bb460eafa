"""Which pages of a long document to read for a question: BM25 over the PDF text layer."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

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
