"""Per-question scores for the document benchmarks, computed as the reference scorers compute them.

Pure standard library. Every function takes the model's prediction and the list of gold answers
and returns a score in [0, 1]; a benchmark's score is the mean over its questions.

- ANLS (DocVQA, InfographicVQA, MP-DocVQA) as the RRC's evaluation script computes it
  (``infographicsvqa_eval.py``, downloadable from docvqa.org; lmms-eval's ``anls`` and
  VLMEvalKit's 2024 ``anls_compute``, which produced the paper's numbers, are the same code):
  per gold answer, the Levenshtein distance between the two strings lower-cased, trimmed and
  whitespace-collapsed, divided by the length of the longer **raw** string (as written, before
  any of that, measured as ``len(s.upper())``); the question's similarity is 1 minus the
  smallest of those, kept when it is **at least** 0.5 and 0 below. Biten et al. (ICCV 2019)
  write NL < 0.5, i.e. a similarity of exactly 0.5 scores 0, over unnormalized strings; the
  scripts keep 0.5 and normalize, and their numbers are the ones papers report.
- Relaxed accuracy (ChartQA): pix2struct's ``relaxed_correctness`` (Masry et al., 2022, §5.1
  after Methani et al., 2020), called with the gold label as the target: the prediction is
  stripped, the label is not; both read as numbers ("12%" and "12%%" are 0.12: every trailing
  "%" goes) are right within 5% of the label, anything else (or a label of 0) needs a
  case-insensitive exact match.
- OCRBench (Liu et al., 2023), as its own and VLMEvalKit's ``OCRBench_eval``: a hit when a gold
  answer, lower-cased and stripped, is a substring of the lower-cased prediction (an empty gold
  answer is in every prediction); for handwritten mathematical expressions all spaces are
  removed and case is kept. The benchmark score is the number of hits out of 1000.
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


def anls_distance(prediction: str, answer: str) -> float:
    """The normalized distance to one gold answer: the edit distance of the normalized strings
    over the longer raw string's length (the RRC script's ``len(s.upper())``); 0 when both are
    empty."""
    longest = max(len(answer.upper()), len(prediction.upper()))
    if longest == 0:
        return 0.0
    return float(levenshtein(normalize_anls(answer), normalize_anls(prediction))) / float(longest)


def anls_similarity(prediction: str, answer: str, *, threshold: float = ANLS_THRESHOLD) -> float:
    """1 - the normalized distance to one gold answer, or 0 when that is below ``threshold``."""
    similarity = 1 - anls_distance(prediction, answer)
    return 0.0 if similarity < threshold else similarity


def anls(prediction: str, answers: Sequence[str], *, threshold: float = ANLS_THRESHOLD) -> float:
    """ANLS of one question: the best similarity over its gold answers (0 without answers)."""
    return max((anls_similarity(prediction, a, threshold=threshold) for a in answers), default=0.0)


def _to_float(text: str) -> float | None:
    """A number as ChartQA's relaxed accuracy reads it (Python's ``float``, so surrounding
    spaces are allowed): "12%" and "12%%" are 0.12 (every trailing % goes); else None."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(prediction: str, answer: str, *, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """ChartQA's test for one gold answer: within ``tolerance`` relative error, else exact.
    The prediction is stripped and the label is not, as the reference scorer does."""
    p, g = prediction.strip(), answer
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
