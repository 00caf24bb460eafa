"""One page to one record (ixcdoc/pagerun.py), with a tiny real model: the one rule for a
page whose generation failed (its error record, or one tier lower when out of GPU memory),
the same on ``chat`` (batch size 1) and on the batched engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from ixcdoc.batch import run
from ixcdoc.inputs import Sources, open_document
from ixcdoc.pagerun import Failure, Job, PageRunner, Retry
from ixcdoc.planning import lower_tier
from ixcdoc.reading import PageItem, read_page
from ixcdoc.records import ErrorInfo, latest_records
from ixcdoc.runtime import DocModel, load
from ixcdoc.tasks import EXTRACT
from ixcdoc.tinyckpt import write_tiny_checkpoint

AUTO = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=4)  # tier per page, so lower ones exist
OOM = Failure(oom=True, code="oom", why="CUDA out of memory")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DocModel:
    return load(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"), device="cpu")


def _png(path: Path, size: tuple[int, int]) -> Path:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((10, 10), "Total 12.50", fill="black", font_size=20)
    img.save(path)
    return path


def _page(path: Path) -> PageItem:
    with open_document(path) as doc:
        return read_page(doc, 1)


def test_a_failure_that_is_not_out_of_memory_is_the_pages_error_record(
    model: DocModel, tmp_path: Path
) -> None:
    runner = PageRunner.loaded(AUTO, model)
    item = _page(_png(tmp_path / "a.png", (300, 200)))
    boom = Failure.of(RuntimeError("boom"))
    assert boom == Failure(oom=False, code="error", why="RuntimeError: boom")
    rec = runner.after_failure(item, 6, ["repetition"], boom)
    assert not isinstance(rec, Retry)
    assert rec.status == "error" and rec.tier == 6 and rec.flags == ("repetition",)
    assert rec.error == ErrorInfo("error", f"{item.source} page 1: RuntimeError: boom")


def test_out_of_memory_retries_one_tier_lower_then_is_an_oom_record(
    model: DocModel, tmp_path: Path
) -> None:
    runner = PageRunner.loaded(AUTO, model)
    item = _page(_png(tmp_path / "a.png", (300, 200)))
    lower = lower_tier(200, 300, 6, model.tile)
    assert lower is not None
    first = runner.after_failure(item, 6, [], OOM)
    assert first == Retry(lower, ["tier_fallback"])
    again = runner.after_failure(item, first.tier, first.flags, OOM)  # type: ignore[union-attr]
    if isinstance(again, Retry):
        assert again.flags == ["tier_fallback"]  # flagged once, however many tiers down
    last = runner.after_failure(item, 1, ["tier_fallback"], OOM)
    assert not isinstance(last, Retry)
    assert last.status == "error" and last.tier == 1 and last.flags == ("tier_fallback",)
    assert last.error == ErrorInfo(
        "oom", f"{item.source} page 1: out of GPU memory even at HD1; try --quant 4bit"
    )


def _inject(
    monkeypatch: pytest.MonkeyPatch, fail: Callable[[Any, int], BaseException | None]
) -> None:
    """``fail(image, hd)`` raised where a page's generation starts, on both paths."""
    chat, engine = DocModel.chat, DocModel.engine

    def failing_chat(self, images, prompt, **kw):  # type: ignore[no-untyped-def]
        err = fail(images[0], kw["hd"])
        if err is not None:
            raise err
        return chat(self, images, prompt, **kw)

    def hook(request) -> None:  # type: ignore[no-untyped-def]
        err = fail(request.images[0], request.hd)
        if err is not None:
            raise err

    def faulty_engine(self, **kw):  # type: ignore[no-untyped-def]
        return engine(self, fault_hook=hook, **kw)

    monkeypatch.setattr(DocModel, "chat", failing_chat)
    monkeypatch.setattr(DocModel, "engine", faulty_engine)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_chat_and_the_engine_record_failures_by_the_same_rule(
    model: DocModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    """a.png runs out of memory at every tier, b.png raises a plain error, c.png reads."""
    import torch

    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", (300, 200))
    _png(folder / "b.png", (200, 300))
    _png(folder / "c.png", (240, 240))
    tiers: list[int] = []

    def fail(image: Any, hd: int) -> BaseException | None:
        if image.size == (300, 200):
            tiers.append(hd)
            return torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        if image.size == (200, 300):
            return ValueError("injected")
        return None

    _inject(monkeypatch, fail)
    out = tmp_path / "out.jsonl"
    stats = run(AUTO, Sources([str(folder)]), model=model, output=out, batch_size=batch_size)
    recs = {Path(r.source).name: r for r in latest_records(out)}
    a, b, c = recs["a.png"], recs["b.png"], recs["c.png"]
    assert len(tiers) > 1 and tiers == sorted(tiers, reverse=True)
    assert a.error is not None and a.error.code == "oom" and a.tier == tiers[-1]
    assert lower_tier(200, 300, tiers[-1], model.tile) is None  # every tier down was tried
    assert a.flags == ("tier_fallback",)
    assert b.error == ErrorInfo("error", f"{b.source} page 1: ValueError: injected")
    assert b.flags == () and b.tier is not None
    assert c.status == "ok" and c.flags == ()
    assert (stats.ok, stats.failed, stats.batch_size) == (1, 2, batch_size)


def _spy_drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str]]:
    """Every page's (draft, speculate) as it reaches the model, on both paths (the real
    generation runs unchanged)."""
    seen: list[tuple[str | None, str]] = []
    chat, engine = DocModel.chat, DocModel.engine

    def spying_chat(self, images, prompt, **kw):  # type: ignore[no-untyped-def]
        seen.append((kw["draft"], kw["speculate"]))
        return chat(self, images, prompt, **kw)

    def hook(request) -> None:  # type: ignore[no-untyped-def]
        seen.append((request.draft, request.speculate))

    def spying_engine(self, **kw):  # type: ignore[no-untyped-def]
        return engine(self, fault_hook=hook, **kw)

    monkeypatch.setattr(DocModel, "chat", spying_chat)
    monkeypatch.setattr(DocModel, "engine", spying_engine)
    return seen


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_page_drafts_from_its_text_layer_and_off_sends_no_draft(
    model: DocModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    """On chat and on the engine: a PDF page sends its text layer as the draft, a scan none;
    ``--speculate off`` sends none at all and writes the same records, drafts counted 0."""
    from tests.cli.helpers import text_pdf

    folder = tmp_path / "in"
    text_pdf(folder / "a.pdf", ["Invoice 0042 total 12.50"])
    _png(folder / "b.png", (300, 200))
    seen = _spy_drafts(monkeypatch)
    runs, sent = {}, {}
    for mode in ("auto", "off"):
        out = tmp_path / f"{mode}.jsonl"
        job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=4, speculate=mode)
        run(job, Sources([str(folder)]), model=model, output=out, batch_size=batch_size)
        runs[mode] = {Path(r.source).name: r for r in latest_records(out)}
        # chat with a draft runs on a one-request engine: the same request seen twice
        sent[mode] = set(seen)
        seen.clear()
    with open_document(folder / "a.pdf") as doc:
        text = doc.page_text(1)
    assert sent == {"auto": {(None, "auto"), (text, "auto")}, "off": {(None, "off")}}
    for name in ("a.pdf", "b.png"):
        on, off = runs["auto"][name], runs["off"][name]
        assert off.timings.draft_tokens == off.timings.accepted_tokens == 0
        assert on.timings.draft_tokens is not None and on.timings.accepted_tokens is not None
        assert 0 <= on.timings.accepted_tokens <= on.timings.tokens
        assert (on.text, on.timings.tokens, on.tier) == (off.text, off.timings.tokens, off.tier)


def test_a_records_draft_counts_are_the_answers(model: DocModel, tmp_path: Path) -> None:
    from ixcdoc.answer import Answer
    from ixcdoc.guards import RepetitionGuard

    runner = PageRunner.loaded(AUTO, model)
    item = _page(_png(tmp_path / "a.png", (300, 200)))
    ans = Answer("a b c", [5, 6, 7, 8, 9], "stop_token", 6, [(2, 3)], 100, 120)
    ans.draft_tokens, ans.accepted_tokens = 900, 4
    rec = runner.answered(item, ans, RepetitionGuard(), [])
    t = rec.timings
    assert (t.tokens, t.draft_tokens, t.accepted_tokens) == (5, 900, 4)


def test_a_job_drafts_only_when_speculating_with_one_beam() -> None:
    from ixcdoc.errors import UsageError

    assert AUTO.speculate == "auto" and AUTO.drafts
    assert not Job(EXTRACT, EXTRACT.prompt, speculate="off").drafts
    assert not Job(EXTRACT, EXTRACT.prompt, num_beams=3).drafts
    with pytest.raises(UsageError, match="speculate must be one of auto, off, got 'on'"):
        Job(EXTRACT, EXTRACT.prompt, speculate="on")
