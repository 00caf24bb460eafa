"""Per-question evaluation records: one JSON object per line, resumable like ``extract -o``.

The file machinery is ``ixcdoc.records.jsonl``'s: whole lines appended and fsynced one at a time, an
exclusive lock on the file for the whole run, a torn final line (a crash mid-write) cut off
when the file is loaded, a corrupt line anywhere else refused. Only the schema differs: an
evaluation record is about a question, not a page (docs/accuracy.md lists the keys).

Resume: a question is done when a record with the same key has status "ok"; the key is the
benchmark, the split, the question id, the prompt, the HD setting, the model (its revision
when known), the precision and the beam count, so bf16 and 4-bit runs, HD55 and auto, or
greedy and 3 beams, share one file. The latest record per key wins. ``num_beams`` came after
the first files were written: a record without it is a greedy one (1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ixcdoc.records.jsonl import (
    JsonlWriter,
    RecordsError,
    Scan,
    check_output,
    open_locked_scan,
    scan_jsonl,
)
from ixcdoc.records.schema import utc_now

EVAL_SCHEMA = "ixcdoc.eval/1"
FIELDS: tuple[str, ...] = (
    "schema",
    "benchmark",
    "split",
    "question_id",
    "question",
    "prompt",
    "prediction",
    "answers",
    "category",
    "metric",
    "score",
    "status",
    "error",
    "hd_setting",
    "tier",
    "grid",
    "image_tokens",
    "seconds",
    "tokens",
    "model",
    "model_revision",
    "precision",
    "num_beams",
    "device",
    "created_at",
    "answer_page_idx",
    "predicted_page_idx",
    "page_scores",
)
# Written only for a multi-page benchmark (MP-DocVQA): the gold page, the page the model chose
# and its screening score of every page (0-based, as the dataset counts pages).
PAGE_FIELDS = ("answer_page_idx", "predicted_page_idx", "page_scores")
# Absent from records written before they existed: num_beams (greedy); the page keys are
# absent from every other benchmark's records.
_OPTIONAL = frozenset({"num_beams", *PAGE_FIELDS})
_REQUIRED_STR = ("benchmark", "split", "question_id", "prompt", "hd_setting", "model", "status")


class EvalKey(NamedTuple):
    """What makes two evaluation records the same job."""

    benchmark: str
    split: str
    question_id: str
    prompt: str
    hd_setting: str
    model: str  # model_revision when known, else the model id or path
    precision: str | None
    num_beams: int


def key_of(rec: Mapping[str, Any]) -> EvalKey:
    """The resume key of a record."""
    return EvalKey(
        benchmark=rec["benchmark"],
        split=rec["split"],
        question_id=rec["question_id"],
        prompt=rec["prompt"],
        hd_setting=rec["hd_setting"],
        model=rec["model_revision"] or rec["model"],
        precision=rec["precision"],
        num_beams=beams_of(rec),
    )


def beams_of(rec: Mapping[str, Any]) -> int:
    """The record's beam count: 1 (greedy) when null or absent (a record that predates it)."""
    return int(rec.get("num_beams") or 1)


def make_record(**values: Any) -> dict[str, Any]:
    """A record with every key in schema order (missing ones None, the page keys only when
    set); raises on a bad value."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown evaluation record keys: {', '.join(sorted(unknown))}")
    rec: dict[str, Any] = {name: values.get(name) for name in FIELDS}
    rec["schema"] = EVAL_SCHEMA
    rec["created_at"] = values.get("created_at") or utc_now()
    for name in PAGE_FIELDS:
        if rec[name] is None:
            del rec[name]
    for name in ("answers", "grid"):
        if isinstance(rec[name], tuple):
            rec[name] = list(rec[name])
    validate(rec)
    return rec


def validate(rec: Any) -> None:
    """Raise ValueError naming what is wrong with an evaluation record."""
    if not isinstance(rec, dict):
        raise ValueError(f"a record must be a JSON object, got {type(rec).__name__}")
    missing = [k for k in FIELDS if k not in rec and k not in _OPTIONAL]
    if missing:
        raise ValueError(f"missing keys: {', '.join(missing)}")
    if rec["schema"] != EVAL_SCHEMA:
        raise ValueError(f"schema is {rec['schema']!r}, expected {EVAL_SCHEMA!r}")
    for k in _REQUIRED_STR:
        if not isinstance(rec[k], str) or not rec[k]:
            raise ValueError(f"{k}: expected a non-empty string")
    if rec["status"] not in ("ok", "error"):
        raise ValueError(f"status: expected 'ok' or 'error', got {rec['status']!r}")
    if not isinstance(rec["answers"], list) or not all(isinstance(a, str) for a in rec["answers"]):
        raise ValueError("answers: expected a list of strings")
    s = rec["score"]
    if rec["status"] == "ok":
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0 <= s <= 1:
            raise ValueError(f"score: expected a number in [0, 1] for an ok record, got {s!r}")
        if not isinstance(rec["prediction"], str):
            raise ValueError("prediction: expected a string for an ok record")
    elif s is not None:
        raise ValueError("score: must be null for an error record")
    if rec["status"] == "error" and not isinstance(rec["error"], dict):
        raise ValueError("error: expected {code, message} for an error record")
    beams = rec.get("num_beams")
    if beams is not None and (not isinstance(beams, int) or isinstance(beams, bool) or beams < 2):
        raise ValueError(f"num_beams: expected null (greedy) or a whole number >= 2, got {beams!r}")
    for k in ("answer_page_idx", "predicted_page_idx"):
        v = rec.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{k}: expected null or a 0-based page index, got {v!r}")
    scores = rec.get("page_scores")
    if scores is not None and not (
        isinstance(scores, list)
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in scores
        )
    ):
        raise ValueError(
            f"page_scores: expected null or a list of finite numbers, got {scores!r:.60}"
        )
    sec = rec["seconds"]
    if sec is not None and not (isinstance(sec, (int, float)) and math.isfinite(sec) and sec >= 0):
        raise ValueError(f"seconds: expected a number >= 0, got {sec!r}")


def to_line(rec: Mapping[str, Any]) -> str:
    """One record as one JSON line, newline included; never NaN."""
    text = json.dumps(dict(rec), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # As in ixcdoc.records: escape what some readers split lines on, and lone surrogates.
    text = "".join(
        f"\\u{ord(c):04x}" if c in "\x85\u2028\u2029" or 0xD800 <= ord(c) <= 0xDFFF else c
        for c in text
    )
    return text + "\n"


@dataclass
class EvalState:
    """What an existing records file holds: the latest record per key."""

    path: Path | None = None
    latest: dict[EvalKey, dict[str, Any]] = field(default_factory=dict)
    repaired_bytes: int = 0

    def should_skip(self, key: EvalKey, *, redo_failed: bool) -> bool:
        """True when the job is done, or failed before and failures are not being redone."""
        rec = self.latest.get(key)
        if rec is None:
            return False
        return rec["status"] == "ok" or not redo_failed

    def add(self, rec: dict[str, Any]) -> None:
        """Account for a record just written (the latest one per key wins)."""
        key = key_of(rec)
        self.latest.pop(key, None)  # re-insert: order follows the latest record
        self.latest[key] = rec

    def records(self) -> list[dict[str, Any]]:
        """The latest record per key, in the order they were last written."""
        return list(self.latest.values())


EVAL_HEADER = f'{{"schema":"{EVAL_SCHEMA}",'.encode()


def _parse(text: str) -> dict[str, Any]:
    rec = json.loads(text)
    validate(rec)
    return rec


def _scan_into(state: EvalState) -> Callable[[Path], Scan]:
    """A scan of an evaluation file into ``state``, with the records file's rules: bounded
    lines, a non-ixcdoc file refused untouched, only a torn evaluation record cut."""

    def scan(path: Path) -> Scan:
        return scan_jsonl(path, state.add, parse=_parse, header=EVAL_HEADER)

    return scan


def load_records(path: str | os.PathLike[str], *, repair: bool = True) -> EvalState:
    """Read a records file (``repair``: cut a torn final record, under the file's lock).

    The same rules as the page records (``ixcdoc.records.jsonl``): every line is read with a
    bound, a file that is not ixcdoc's is refused untouched, and only a torn final record is
    ever cut.
    """
    path = Path(path)
    state = EvalState(path=path)
    if not path.exists():
        if not repair:
            raise RecordsError(f"{path}: no such records file", code="not_found")
        check_output(path)
        return state
    if not repair:
        check_output(path)
        _scan_into(state)(path)
        return state
    fd, state.repaired_bytes = open_locked_scan(path, _scan_into(state))
    os.close(fd)
    return state


def open_eval_output(path: str | os.PathLike[str]) -> tuple[EvalWriter, EvalState]:
    """Lock an evaluation records file for this run, then read it: (writer, state). The lock
    comes first and stays until the writer closes (as ``records.open_output``)."""
    path = Path(path)
    state = EvalState(path=path)
    fd, state.repaired_bytes = open_locked_scan(path, _scan_into(state))
    return EvalWriter.adopt(path, fd), state


class EvalWriter(JsonlWriter):
    """Appends evaluation records with ``JsonlWriter``'s locking, fsync and torn-write rules."""

    def write_record(self, rec: Mapping[str, Any]) -> None:
        """Write one validated record as one complete line, then flush (and fsync a file)."""
        validate(dict(rec))
        self.write_line(to_line(rec))
