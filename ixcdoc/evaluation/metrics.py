"""Per-question scores for the document benchmarks, written from their definitions.

Pure standard library. Every function takes the model's prediction and the list of gold answers
and returns a score in [0, 1]; a benchmark's score is the mean over its questions.

- ANLS (DocVQA, InfographicVQA): Biten et al., "Scene Text Visual Question Answering"
  (ICCV 2019) and the DocVQA challenge: per gold answer, the normalized Levenshtein distance NL
  between the lower-cased, whitespace-collapsed strings; the similarity 1 - NL counts only when
  NL < 0.5 (threshold tau), else 0; the question scores the best gold answer. VLMEvalKit
  (``vlmeval/dataset/utils/vqa_eval.py``: ``anls_compute``, ``hit_calculate``) normalizes the
  same way.
- Relaxed accuracy (ChartQA): Methani et al. (PlotQA, 2020) as ChartQA (Masry et al., 2022,
  §5.1) uses it: a numeric answer is right within 5% relative error of the gold number, any
  other answer needs an exact (case-insensitive) match; pix2struct's ``relaxed_correctness``,
  copied by VLMEvalKit, reads "12%" as 0.12 and compares a gold 0 as a string.
- OCRBench (Liu et al., 2023): a hit when a gold answer, lower-cased and stripped, is a
  substring of the lower-cased prediction; for handwritten mathematical expressions all spaces
  are removed and case is kept. The benchmark score is the number of hits out of 1000.
"""

from __future__ import annotations

from collections.abc import Sequence

ANLS_THRESHOLD = 0.5
RELAXED_TOLERANCE = 0.05
HME_CATEGORY = "Handwritten Mathematical Expression Recognition"


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalize_anls(text: str) -> str:
    """Lower-case and collapse every run of whitespace to one space, trimmed at both ends."""
    return " ".join(text.lower().split())


def anls_similarity(prediction: str, answer: str, *, threshold: float = ANLS_THRESHOLD) -> float:
    """1 - normalized edit distance against one gold answer, or 0 when the distance >= tau."""
    p, g = normalize_anls(prediction), normalize_anls(answer)
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0  # both empty: identical strings
    nl = levenshtein(p, g) / longest
    return 1.0 - nl if nl < threshold else 0.0


def anls(prediction: str, answers: Sequence[str], *, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one question: the best similarity over its gold answers (0 without answers)."""
    return max((anls_similarity(prediction, a, threshold=threshold) for a in answers), default=0.0)


def _to_float(text: str) -> float | None:
    """A number as ChartQA's relaxed accuracy reads it: "12%" is 0.12; anything else is None."""
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(prediction: str, answer: str, *, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """ChartQA's test for one gold answer: within ``tolerance`` relative error, else exact."""
    p, g = prediction.strip(), answer.strip()
    pf, gf = _to_float(p), _to_float(g)
    # A gold 0 has no relative error; the definition falls back to the string comparison.
    if pf is not None and gf:
        return abs(pf - gf) / abs(gf) <= tolerance
    return p.lower() == g.lower()


def relaxed_accuracy(
    prediction: str, answers: Sequence[str], *, tolerance: float = RELAXED_TOLERANCE
) -> float:
    """1.0 when the prediction matches any gold answer under relaxed correctness, else 0.0."""
    return float(any(relaxed_match(prediction, a, tolerance=tolerance) for a in answers))


def ocrbench_hit(prediction: str, answers: Sequence[str], category: str | None = None) -> float:
    """1.0 when a gold answer occurs in the prediction as OCRBench compares them, else 0.0."""
    if category == HME_CATEGORY:
        # LaTeX answers: spacing is arbitrary, case is meaningful.
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        golds = [a.strip().replace("\n", " ").replace(" ", "") for a in answers]
    else:
        pred = prediction.lower().strip().replace("\n", " ")
        golds = [a.lower().strip().replace("\n", " ") for a in answers]
    return float(any(g in pred for g in golds))


METRICS = {"anls": anls, "relaxed_accuracy": relaxed_accuracy}


def score(
    metric: str, prediction: str, answers: Sequence[str], category: str | None = None
) -> float:
    """The score of one prediction under the named metric (anls, relaxed_accuracy, ocrbench)."""
    if metric == "ocrbench":
        return ocrbench_hit(prediction, answers, category)
    try:
        return METRICS[metric](prediction, answers)
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}") from None
