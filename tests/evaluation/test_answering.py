"""End to end through tiny checkpoints: every benchmark's format, scoring, resume, the seam."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ixcdoc
from ixcdoc.evaluation import answering
from ixcdoc.evaluation.answering import run_eval
from ixcdoc.tokenizer import Tokenizer
from tests.evaluation import builders
from tests.evaluation.conftest import EvalCkpts

MNT = 4  # generated tokens per answer


@pytest.fixture(scope="module")
def normal_model(eval_ckpts: EvalCkpts) -> Any:
    return ixcdoc.load(eval_ckpts.normal, device="cpu")


@pytest.fixture(scope="module")
def steered(eval_ckpts: EvalCkpts) -> tuple[Any, str]:
    """The steered model and the answer it gives to anything: its token, MNT times."""
    text = Tokenizer.from_dir(eval_ckpts.steered).decode([eval_ckpts.token] * MNT).strip()
    assert text and "#" not in text
    return ixcdoc.load(eval_ckpts.steered, device="cpu"), text


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    ("name", "build", "n", "hd"),
    [
        ("docvqa", builders.docvqa, 3, 55),
        ("infovqa", builders.infovqa, 2, 55),
        ("chartqa", builders.chartqa, 3, 25),
        ("ocrbench", builders.ocrbench, 2, 25),
    ],
)
def test_each_format_end_to_end(
    normal_model: Any, tmp_path: Path, name: str, build: Any, n: int, hd: int
) -> None:
    data = build(tmp_path / "data")
    out = tmp_path / "out.jsonl"
    s = run_eval(normal_model, name, data, output=out, max_new_tokens=MNT)
    assert (s.answered, s.failed, s.skipped) == (n, 0, 0)
    recs = lines(out)
    assert len(recs) == n
    for r in recs:
        assert r["benchmark"] == name
        assert r["status"] == "ok"
        assert r["tier"] == hd and r["hd_setting"] == str(hd)
        assert r["tokens"] <= MNT
        assert r["prompt"].endswith(r["question"])
        assert r["precision"] == "fp32" and r["device"] == "cpu"
        assert 0.0 <= r["score"] <= 1.0
    # resume: a second run answers nothing and adds no line
    again = run_eval(normal_model, name, data, output=out, max_new_tokens=MNT)
    assert (again.answered, again.skipped) == (0, n)
    assert len(lines(out)) == n
    assert [r["question_id"] for r in again.records] == [r["question_id"] for r in recs]


def test_scores_the_models_answer(steered: tuple[Any, str], tmp_path: Path) -> None:
    model, text = steered
    data = tmp_path / "docvqa"
    builders.png(data / "documents" / "a.png", "a")
    qs = [
        {"questionId": 1, "question": "right?", "image": "documents/a.png", "answers": [text]},
        # a different case and extra spaces: ANLS normalizes both -> still 1.0
        {
            "questionId": 2,
            "question": "case?",
            "image": "documents/a.png",
            "answers": [f"  {text.upper()}  "],
        },
        # no character in common and 40 long: distance 40 of 40 -> 0
        {"questionId": 3, "question": "wrong?", "image": "documents/a.png", "answers": ["#" * 40]},
    ]
    (data / "val_v1.0.json").write_text(json.dumps({"data": qs}), encoding="utf-8")
    s = run_eval(model, "docvqa", data, max_new_tokens=MNT)
    assert [r["prediction"] for r in s.records] == [text] * 3
    assert [r["score"] for r in s.records] == [1.0, 1.0, 0.0]


def test_limit_and_fixed_or_auto_tier(normal_model: Any, tmp_path: Path) -> None:
    data = builders.docvqa(tmp_path / "d", n=3)
    s = run_eval(normal_model, "docvqa", data, limit=2, hd=9, max_new_tokens=MNT)
    assert [r["question_id"] for r in s.records] == ["1000", "1001"]
    assert {r["tier"] for r in s.records} == {9}
    auto = run_eval(normal_model, "docvqa", data, limit=2, hd="auto", max_new_tokens=MNT)
    assert {r["hd_setting"] for r in auto.records} == {"auto"}
    # the ask preset's floor is 9: these small pages fit HD1 natively -> HD9
    assert {r["tier"] for r in auto.records} == {9}


def test_missing_image_fails_one_question_then_redo(normal_model: Any, tmp_path: Path) -> None:
    data = builders.docvqa(tmp_path / "d", n=2)
    moved = tmp_path / "doc1.png"
    (data / "documents" / "doc1.png").rename(moved)
    out = tmp_path / "out.jsonl"
    s = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT)
    assert (s.answered, s.failed) == (2, 1)
    # The file is in finishing order (a question whose image is missing is done at once).
    (bad,) = [r for r in lines(out) if r["status"] == "error"]
    assert bad["score"] is None
    assert "doc1.png" in bad["error"]["message"]
    # without --redo-failed the failure is not retried
    s = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT)
    assert (s.answered, s.skipped, s.skipped_failed) == (0, 1, 1)
    moved.rename(data / "documents" / "doc1.png")
    s = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT, redo_failed=True)
    assert (s.answered, s.failed, s.skipped) == (1, 0, 1)
    assert len(lines(out)) == 3
    assert [r["status"] for r in s.records] == ["ok", "ok"]


class ChatOnly:
    """A real DocModel seen without ``chat_batch``: answer_all falls back to ``chat``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "chat_batch":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The requests of every ``DocModel.chat_batch`` call, one list per call."""
    from ixcdoc.runtime import DocModel

    calls: list[list[Any]] = []
    real = DocModel.chat_batch

    def chat_batch(self: Any, requests: Any, **kw: Any) -> Any:
        calls.append(list(requests))
        return real(self, requests, **kw)

    monkeypatch.setattr(DocModel, "chat_batch", chat_batch)
    return calls


def test_uses_chat_batch_when_the_model_has_it(
    normal_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batches: list
) -> None:
    monkeypatch.setattr(answering, "BATCH_SIZE", 2)
    data = builders.docvqa(tmp_path / "d", n=3)
    batched = run_eval(normal_model, "docvqa", data, max_new_tokens=MNT)
    assert [len(b) for b in batches] == [2, 1]
    single = run_eval(ChatOnly(normal_model), "docvqa", data, max_new_tokens=MNT)
    assert [len(b) for b in batches] == [2, 1]  # the chat-only model never batched
    # greedy answers do not depend on the path taken
    assert [r["prediction"] for r in batched.records] == [r["prediction"] for r in single.records]


def test_beams_run_as_chat_with_beams_under_their_own_key(
    normal_model: Any, tmp_path: Path, batches: list
) -> None:
    from PIL import Image

    from ixcdoc.errors import UsageError
    from ixcdoc.evaluation.report import summarize

    data = builders.docvqa(tmp_path / "d", n=2)
    out = tmp_path / "out.jsonl"
    greedy = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT)
    beams = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT, num_beams=3)
    assert [r.num_beams for b in batches for r in b] == [1, 1, 3, 3]
    # another setting: answered again, not skipped as done
    assert (beams.answered, beams.skipped) == (2, 0)
    assert [r["num_beams"] for r in greedy.records] == [None, None]  # greedy, as extract's
    assert [r["num_beams"] for r in beams.records] == [3, 3]
    for i, r in enumerate(beams.records):  # what chat answers with 3 beams
        image = Image.open(data / "documents" / f"doc{i}.png").convert("RGB")
        ans = normal_model.chat(
            [image], r["prompt"], hd=r["tier"], meta_instruction="", max_new_tokens=MNT, num_beams=3
        )
        assert r["prediction"] == ans.text.strip()
    again = run_eval(normal_model, "docvqa", data, output=out, max_new_tokens=MNT, num_beams=3)
    assert (again.answered, again.skipped) == (0, 2)
    assert [row.num_beams for row in summarize(lines(out))] == [1, 3]
    with pytest.raises(UsageError, match="--beams"):
        run_eval(normal_model, "docvqa", data, max_new_tokens=MNT, num_beams=0)


def test_mpdocvqa_answers_from_the_screened_page(normal_model: Any, tmp_path: Path) -> None:
    """Each question's pages are screened, the best one answered: records carry every page's
    score, the chosen page and the gold one; the answer's grid is the chosen page's."""
    from ixcdoc.tiling import hd_geometry

    data = builders.mpdocvqa(tmp_path / "mp")
    out = tmp_path / "out.jsonl"
    s = run_eval(normal_model, "mpdocvqa", data, output=out, max_new_tokens=MNT)
    assert (s.answered, s.failed) == (2, 0)
    recs = {r["question_id"]: r for r in lines(out)}
    for qid, doc, gold in (("57344", "ffbf0023", 1), ("57345", "gkhd0001", 0)):
        r = recs[qid]
        sizes = builders.MP_DOCS[doc]
        scores = r["page_scores"]
        assert len(scores) == len(sizes)
        chosen = max(range(len(scores)), key=lambda i: (scores[i], -i))
        assert (r["predicted_page_idx"], r["answer_page_idx"]) == (chosen, gold)
        w, h = sizes[chosen]
        g = hd_geometry(h, w, 55, normal_model.tile)
        assert (r["tier"], r["grid"]) == (55, [g.rows, g.cols])
        assert 0.0 <= r["score"] <= 1.0 and r["metric"] == "anls"
    # page scores are the model's own: the same page_relevance on the same images
    pages = [data / "images" / f"gkhd0001_{i}.jpg" for i in range(2)]
    from PIL import Image

    want = normal_model.page_relevance(
        [Image.open(p).convert("RGB") for p in pages], "Who signed the letter?"
    )
    assert recs["57345"]["page_scores"] == pytest.approx(want, abs=1e-5)

    from ixcdoc.evaluation.report import summarize

    (row,) = summarize(s.records)
    hits = sum(r["predicted_page_idx"] == r["answer_page_idx"] for r in recs.values())
    assert row.page_accuracy == 100.0 * hits / 2
    # resume: done, nothing screened or answered again
    again = run_eval(normal_model, "mpdocvqa", data, output=out, max_new_tokens=MNT)
    assert (again.answered, again.skipped) == (0, 2)


def test_mpdocvqa_scores_anls_of_the_answer(steered: tuple[Any, str], tmp_path: Path) -> None:
    model, text = steered
    data = builders.mpdocvqa(tmp_path / "mp")
    path = data / "qas" / "val.json"
    doc = json.loads(path.read_text())
    doc["data"][0]["answers"] = [text]
    path.write_text(json.dumps(doc))
    s = run_eval(model, "mpdocvqa", data, max_new_tokens=MNT)
    assert [r["prediction"] for r in s.records] == [text, text]
    assert [r["score"] for r in s.records] == [1.0, 0.0]


def test_mpdocvqa_missing_page_fails_that_question(normal_model: Any, tmp_path: Path) -> None:
    data = builders.mpdocvqa(tmp_path / "mp")
    (data / "images" / "ffbf0023_2.jpg").unlink()
    s = run_eval(normal_model, "mpdocvqa", data, max_new_tokens=MNT)
    assert (s.answered, s.failed) == (2, 1)
    bad = next(r for r in s.records if r["status"] == "error")
    assert bad["question_id"] == "57344" and "ffbf0023_2.jpg" in bad["error"]["message"]
    assert bad["answer_page_idx"] == 1 and "predicted_page_idx" not in bad
    from ixcdoc.evaluation.report import summarize

    (row,) = summarize(s.records)
    good = next(r for r in s.records if r["status"] == "ok")
    hit = good["predicted_page_idx"] == good["answer_page_idx"]
    assert row.failed == 1 and row.page_accuracy == 100.0 * hit / 2  # the failure is a miss
