"""Scores from evaluation records: per benchmark and setting, with a 95% confidence interval.

A score is the mean per-question score over every selected question; a question whose record
is an error counts 0, as a wrong answer would (the report also says how many failed). The 95%
interval is the normal approximation for the mean of per-question scores bounded in [0, 1]:
mean +- 1.96 * s / sqrt(n), s the sample standard deviation, clipped to [0, 1]. With n in the
thousands (DocVQA val: 5,349 questions) the approximation is close to a bootstrap and needs no
random numbers. OCRBench states its score as hits out of 1000 (the interval scaled alike).
A multi-page benchmark (MP-DocVQA) also has a page accuracy: the share of questions whose
chosen page is the one holding the answer (an error counts as a miss), in percent.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ixcdoc.evaluation.datasets import BENCHMARKS
from ixcdoc.evaluation.results import beams_of

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class ScoreRow:
    """The score of one benchmark under one setting (model, precision, HD setting, beams,
    split)."""

    benchmark: str
    title: str
    split: str
    model: str
    precision: str | None
    hd_setting: str
    n: int  # questions in the records
    failed: int  # of those, errors (scored 0)
    score: float  # in the benchmark's unit (percent, or points out of 1000)
    ci_low: float | None
    ci_high: float | None
    unit: str
    tiers: dict[str, int] = field(default_factory=dict)  # "HD55" -> questions (ok ones)
    seconds_mean: float | None = None  # wall seconds per answered question
    seconds_median: float | None = None
    paper: float | None = None
    paper_split: str | None = None
    paper_source: str | None = None
    num_beams: int = 1
    page_accuracy: float | None = None  # percent; multi-page benchmarks only

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return asdict(self)


def mean_ci(scores: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and normal-approximation 95% interval (clipped to [0, 1]); no interval for n < 2."""
    n = len(scores)
    if n == 0:
        return 0.0, None, None
    mean = math.fsum(scores) / n
    if n < 2:
        return mean, None, None
    half = Z95 * statistics.stdev(scores) / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def _scale(unit: str) -> float:
    return 1000.0 if unit == "/1000" else 100.0


def summarize(records: Iterable[Mapping[str, Any]]) -> list[ScoreRow]:
    """One row per (benchmark, split, model, precision, HD setting, beams), in first-seen
    order."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for rec in records:
        model = rec.get("model_revision") or rec["model"]
        k = (
            rec["benchmark"],
            rec["split"],
            model,
            rec.get("precision"),
            rec["hd_setting"],
            beams_of(rec),
        )
        groups.setdefault(k, []).append(rec)
    rows = []
    for (name, split, model, precision, hd_setting, beams), recs in groups.items():
        bench = BENCHMARKS.get(name)
        unit = bench.unit if bench else "%"
        scale = _scale(unit)
        scores = [float(r["score"]) if r["status"] == "ok" else 0.0 for r in recs]
        mean, lo, hi = mean_ci(scores)
        ok = [r for r in recs if r["status"] == "ok"]
        tiers = Counter(f"HD{r['tier']}" for r in ok if r.get("tier") is not None)
        secs = [float(r["seconds"]) for r in ok if r.get("seconds") is not None]
        paper = bench.paper if bench else None
        paged = [r for r in recs if r.get("answer_page_idx") is not None]
        hits = [r.get("predicted_page_idx") == r["answer_page_idx"] for r in paged]
        rows.append(
            ScoreRow(
                benchmark=name,
                title=bench.title if bench else name,
                split=split,
                model=model,
                precision=precision,
                hd_setting=hd_setting,
                n=len(recs),
                failed=len(recs) - len(ok),
                score=mean * scale,
                ci_low=None if lo is None else lo * scale,
                ci_high=None if hi is None else hi * scale,
                unit=unit,
                tiers=dict(sorted(tiers.items(), key=lambda kv: int(kv[0][2:]))),
                seconds_mean=statistics.fmean(secs) if secs else None,
                seconds_median=statistics.median(secs) if secs else None,
                paper=paper.value if paper else None,
                paper_split=paper.split if paper else None,
                paper_source=paper.source if paper else None,
                num_beams=beams,
                page_accuracy=100.0 * sum(hits) / len(hits) if hits else None,
            )
        )
    return rows


def report_dict(rows: Iterable[ScoreRow]) -> dict[str, Any]:
    """The report as one JSON-ready object: ``{"rows": [...], "ci": how it is computed}``."""
    return {
        "ci": "95% normal approximation, mean +- 1.96 s/sqrt(n), errors scored 0",
        "rows": [r.to_dict() for r in rows],
    }
