"""Screening pages without a text layer: the engine's scores against an independent forward,
and ``ask`` through ``batch.run`` (one answer, the scores recorded, reused on a rerun)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ixcdoc.batch import Events, run
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.records import latest_records
from ixcdoc.runtime import DocModel, load
from ixcdoc.screening import choose_among
from ixcdoc.tasks import ASK, SCREEN_HD, SCREEN_PROMPT
from ixcdoc.tinyckpt import write_tiny_checkpoint
from tests.cli.helpers import scan_page, scan_pdf

LABELS = ["Meeting notes office move", "Revenue table invoice totals", "Signature contract stamp"]


@pytest.fixture(scope="module")
def dm(tmp_path_factory: pytest.TempPathFactory) -> DocModel:
    return load(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"), device="cpu")


def independent_score(dm: DocModel, image: Image.Image, question: str, hd: int) -> float:
    """The screening score from a full forward with no cache (``prompt_logits``), its last
    position: log-sum-exp over the first pieces of Yes/yes/YES minus that of No/no/NO."""
    logits = dm.prompt_logits([image], SCREEN_PROMPT.format(question=question), hd=hd)[-1]
    tok = dm.tokenizer
    yes = sorted({tok.encode(w, bos=False)[0] for w in ("Yes", "yes", "YES")})
    no = sorted({tok.encode(w, bos=False)[0] for w in ("No", "no", "NO")})
    assert not set(yes) & set(no)
    return float(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0))


def test_engine_scores_equal_an_independent_forward(dm: DocModel) -> None:
    """All pages on one engine (packed prefills, a shared system prompt) score what each
    page scores alone through a plain forward, at two tiers and two page shapes."""
    images = [
        scan_page(LABELS[0]),
        scan_page(LABELS[1], (300, 500)),
        scan_page(LABELS[2], (640, 200)),
    ]
    q = "Who signed the contract?"
    for hd in (SCREEN_HD, 1, 25):  # HD25: prompts past the prefix longer than BMM_MAX_ROWS
        got = dm.page_relevance(images, q, hd=hd)
        want = [independent_score(dm, im, q, hd) for im in images]
        assert len(got) == 3
        for g, w in zip(got, want, strict=True):
            assert abs(g - w) < 1e-4, (hd, got, want)
        assert len(set(got)) == 3  # the pages differ, and so do their scores
    one_by_one = dm.page_relevance(images, q, max_batch=1)
    together = dm.page_relevance(images, q)
    assert max(abs(a - b) for a, b in zip(one_by_one, together, strict=True)) < 1e-4
    assert dm.page_relevance([], q) == []


def test_choose_among_takes_the_best_scored_image(dm: DocModel) -> None:
    images = [scan_page(label) for label in LABELS]
    q = "What is the invoice total?"
    scores = dm.page_relevance(images, q)
    choice = choose_among(dm, images, q)
    best = max(range(3), key=lambda i: (scores[i], -i)) + 1
    assert choice.pages == (best,) and choice.tier == SCREEN_HD
    assert choice.scores == pytest.approx({i + 1: s for i, s in enumerate(scores)}, abs=1e-4)
    assert choose_among(dm, images[:1], q).pages == (1,)  # one page: nothing to screen


class Notes(Events):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.mark.parametrize("name", ["out.jsonl", "out/"])
def test_ask_answers_once_and_a_rerun_reuses_the_scores(
    dm: DocModel, tmp_path: Path, name: str
) -> None:
    """batch.run: one record, with every page's score; the rerun neither screens nor loads.
    The same from a folder of shards (-o DIR/)."""
    from ixcdoc.records import latest_of

    pdf = scan_pdf(tmp_path / "scan.pdf", LABELS)
    q = "Who signed the contract?"
    job = Job(ASK, q, question=q, hd=4, max_new_tokens=2, top_k=1)
    out = f"{tmp_path}/{name}"
    events = Notes()
    stats = run(
        job, Sources([str(pdf)]), model=str(dm.path), device="cpu", output=out, events=events
    )
    assert stats.ok == 1 and stats.loaded
    (rec,) = latest_of(out)
    assert rec.screening is not None and set(rec.screening.scores) == {1, 2, 3}
    scores = rec.screening.scores
    assert rec.page == max(scores, key=lambda p: (scores[p], -p))
    assert rec.screening.chosen == (rec.page,)
    assert [n for n in events.notes if "screened 3 pages at HD4" in n] == events.notes
    assert len(events.notes) == 1 and f"answering page {rec.page}" in events.notes[0]

    again = Notes()
    stats = run(
        job, Sources([str(pdf)]), model=str(dm.path), device="cpu", output=out, events=again
    )
    assert (stats.ok, stats.skipped, stats.loaded) == (0, 1, False)  # no model at all
    assert "scores of an earlier run" in again.notes[0]
    assert len(latest_of(out)) == 1


def test_blank_pages_are_not_screened(dm: DocModel, tmp_path: Path) -> None:
    pdf = scan_pdf(tmp_path / "scan.pdf", [LABELS[0], None, LABELS[2]])
    q = "Who signed the contract?"
    job = Job(ASK, q, question=q, hd=4, max_new_tokens=2, top_k=1)
    out = tmp_path / "out.jsonl"
    run(job, Sources([str(pdf)]), model=dm, output=out)
    (rec,) = latest_records(out)
    assert rec.screening is not None and set(rec.screening.scores) == {1, 3}
    assert rec.page in (1, 3)
