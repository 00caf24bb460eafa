"""Evaluation records (resume, repair, lock) and the report on fixed predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from ixcdoc.evaluation.report import mean_ci, report_dict, summarize
from ixcdoc.evaluation.results import (
    EvalWriter,
    key_of,
    load_records,
    make_record,
)
from ixcdoc.records import RecordsError


def write_all(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records to a file, as an evaluation run writes them."""
    with EvalWriter(path) as w:
        for rec in records:
            w.write_record(rec)


def rec(qid: str, score: float | None, *, bench: str = "docvqa", **kw: object) -> dict:
    """A record as run_eval writes one; score None makes it an error record."""
    base = dict(
        benchmark=bench,
        split="val",
        question_id=qid,
        question=f"q{qid}",
        prompt=f"P q{qid}",
        answers=["a"],
        metric="anls",
        hd_setting="55",
        model="m",
        precision="bf16",
        device="cuda:0",
    )
    base.update(kw)
    if score is None:
        return make_record(**base, status="error", error={"code": "oom", "message": "x"})
    return make_record(**base, status="ok", prediction="a", score=score, tier=55, seconds=2.0)


def test_latest_record_per_key_wins(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_all(out, [rec("1", None), rec("2", 1.0), rec("1", 0.5)])
    state = load_records(out)
    assert [(r["question_id"], r["status"]) for r in state.records()] == [("2", "ok"), ("1", "ok")]
    k = key_of(rec("1", 0.5))
    assert state.should_skip(k, redo_failed=False)
    # another precision or HD setting is another job
    assert not state.should_skip(key_of(rec("1", 0.5, precision="4bit")), redo_failed=False)
    assert not state.should_skip(key_of(rec("1", 0.5, hd_setting="auto")), redo_failed=False)


def test_failed_skipped_unless_redo(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_all(out, [rec("1", None)])
    state = load_records(out)
    k = key_of(rec("1", None))
    assert state.should_skip(k, redo_failed=False)
    assert not state.should_skip(k, redo_failed=True)


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_all(out, [rec("1", 1.0)])
    good = out.read_bytes()
    out.write_bytes(good + b'{"schema":"ixcdoc.eval/1","bench')
    state = load_records(out)
    assert state.repaired_bytes == len(b'{"schema":"ixcdoc.eval/1","bench')
    assert out.read_bytes() == good
    assert len(state.records()) == 1


def test_corrupt_middle_line_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    write_all(out, [rec("1", 1.0)])
    line = out.read_bytes()
    out.write_bytes(line + b"not json\n" + line)
    with pytest.raises(RecordsError, match="line 2"):
        load_records(out)


def test_writer_holds_an_exclusive_lock(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with EvalWriter(out) as w:
        w.write_record(rec("1", 1.0))
        with pytest.raises(RecordsError, match="another process"):
            EvalWriter(out)


def test_invalid_records_are_rejected() -> None:
    with pytest.raises(ValueError, match="score"):
        rec("1", 1.5)
    with pytest.raises(ValueError, match="unknown evaluation record keys"):
        make_record(benchmark="docvqa", colour="red")


def test_num_beams_is_part_of_the_key_and_absent_means_greedy(tmp_path: Path) -> None:
    old = {k: v for k, v in rec("1", 1.0).items() if k != "num_beams"}  # an older file's line
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(old) + "\n", encoding="utf-8")
    state = load_records(out)
    assert key_of(old).num_beams == 1
    assert state.should_skip(key_of(rec("1", 1.0, num_beams=None)), redo_failed=False)
    assert not state.should_skip(key_of(rec("1", 1.0, num_beams=3)), redo_failed=False)
    rows = summarize([old, rec("2", 0.0, num_beams=3)])
    assert [(r.num_beams, r.n, r.score) for r in rows] == [(1, 1, 100.0), (3, 1, 0.0)]
    for bad in (0, 1, "3", True, 1.5):
        with pytest.raises(ValueError, match="num_beams"):
            rec("1", 1.0, num_beams=bad)


def test_page_keys_only_on_multi_page_records_and_page_accuracy(tmp_path: Path) -> None:
    plain = rec("1", 1.0)
    assert "answer_page_idx" not in plain and "page_scores" not in plain  # lines unchanged
    paged = [
        rec(
            "1",
            1.0,
            bench="mpdocvqa",
            answer_page_idx=2,
            predicted_page_idx=2,
            page_scores=[0.1, -0.5, 1.5],
        ),
        rec(
            "2",
            0.5,
            bench="mpdocvqa",
            answer_page_idx=0,
            predicted_page_idx=1,
            page_scores=[0.0, 0.2],
        ),
        rec("3", None, bench="mpdocvqa", answer_page_idx=1),  # failed: a miss
        rec("4", 1.0, bench="mpdocvqa", answer_page_idx=0, predicted_page_idx=0),
    ]
    out = tmp_path / "r.jsonl"
    write_all(out, [plain, *paged])
    back = load_records(out).records()
    assert back[1]["page_scores"] == [0.1, -0.5, 1.5] and "predicted_page_idx" not in back[3]
    docvqa, mp = summarize(back)
    assert docvqa.page_accuracy is None
    assert (mp.benchmark, mp.n, mp.page_accuracy) == ("mpdocvqa", 4, 50.0)  # 2 of 4
    assert mp.score == pytest.approx(100.0 * 2.5 / 4)
    for bad in (
        {"answer_page_idx": -1},
        {"predicted_page_idx": 1.0},
        {"predicted_page_idx": True},
        {"page_scores": [0.1, math.inf]},
        {"page_scores": "0.1"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            rec("1", 1.0, bench="mpdocvqa", **bad)


def test_report_score_and_ci_by_hand(tmp_path: Path) -> None:
    # scores 1, 0, 0.8, 0.6 and one error (counts 0): mean = 2.4 / 5 = 0.48
    # sample variance: deviations .52, -.48, .32, .12, -.48 -> squares .2704 .2304 .1024 .0144
    # .2304 = .848, / 4 = .212; s = sqrt(.212); half width = 1.96 * s / sqrt(5)
    recs = [rec("1", 1.0), rec("2", 0.0), rec("3", 0.8), rec("4", 0.6), rec("5", None)]
    [row] = summarize(recs)
    assert row.n == 5
    assert row.failed == 1
    assert row.score == pytest.approx(48.0)
    half = 1.959963984540054 * math.sqrt(0.212) / math.sqrt(5) * 100
    assert row.ci_low == pytest.approx(48.0 - half)
    assert row.ci_high == pytest.approx(48.0 + half)
    assert row.tiers == {"HD55": 4}
    assert row.seconds_mean == 2.0
    assert row.paper == 90.0
    assert "2404.06512" in (row.paper_source or "")


def test_report_groups_settings_and_scales_ocrbench() -> None:
    recs = [
        rec("1", 1.0, precision="bf16"),
        rec("1", 0.0, precision="4bit"),
        rec("0", 1.0, bench="ocrbench", metric="ocrbench"),
        rec("1", 0.0, bench="ocrbench", metric="ocrbench"),
        rec("2", 1.0, bench="ocrbench", metric="ocrbench"),
        rec("3", 1.0, bench="ocrbench", metric="ocrbench"),
    ]
    rows = summarize(recs)
    assert [(r.benchmark, r.precision, r.score) for r in rows] == [
        ("docvqa", "bf16", 100.0),
        ("docvqa", "4bit", 0.0),
        ("ocrbench", "bf16", 750.0),  # 3 hits of 4 -> 750 per 1000
    ]
    assert rows[0].ci_low is None  # one question: no interval
    assert rows[2].unit == "/1000"
    assert rows[2].paper == 675.0
    d = report_dict(rows)
    assert json.loads(json.dumps(d))["rows"][2]["score"] == 750.0


def test_mean_ci_clips_and_degenerates() -> None:
    assert mean_ci([]) == (0.0, None, None)
    assert mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)  # no spread
    m, lo, hi = mean_ci([1.0, 1.0, 1.0, 0.0])  # mean .75, s = .5, half = 1.96 * .5 / 2 = .49
    assert (m, lo) == (0.75, pytest.approx(0.75 - 0.48999, abs=1e-5))
    assert hi == 1.0  # .75 + .49 clipped to 1


def test_an_eval_output_is_locked_bounded_and_never_someone_elses(tmp_path: Path) -> None:
    """The records file's rules hold for evaluation records too (issue 9 items 1, 2 and 4)."""
    from ixcdoc.evaluation.results import load_records, open_eval_output
    from ixcdoc.records import RecordsError

    theirs = tmp_path / "package.json"
    theirs.write_text('{"name": "my-project"}\n')
    with pytest.raises(RecordsError) as e:
        open_eval_output(theirs)
    assert e.value.code == "not_records"
    assert theirs.read_text() == '{"name": "my-project"}\n'  # untouched
    notes = tmp_path / "notes.txt"
    notes.write_text("no newline at the end")
    with pytest.raises(RecordsError):
        load_records(notes)
    assert notes.read_text() == "no newline at the end"
    with pytest.raises(RecordsError) as e:
        open_eval_output("/dev/zero")  # would be an endless line
    assert "regular file" in e.value.message
    out = tmp_path / "eval.jsonl"
    writer, _state = open_eval_output(out)
    try:
        with pytest.raises(RecordsError) as e:
            open_eval_output(out)
        assert e.value.code == "output_locked"
    finally:
        writer.close()
