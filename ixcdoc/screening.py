"""Which pages ``ask`` answers when some pages of a document have no text layer.

BM25 (``ranking``) ranks the pages that have text; the pages it cannot rank are screened by the
model: each is asked at a low tier (``tasks.SCREEN_HD``) whether it answers the question, all
in one batch on the engine (``DocModel.page_relevance``), and only the best ``top_k`` pages are
answered at the task's tier. ``ranking.choose_pages`` is the rule; this module gives it the
pages' text and images and the model. ``ask`` screens every document before its first page is
answered (``prescreen``): the engine's KV cache is the model's, so screening cannot run beside
the answers. docs/screening.md describes the method and what it costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ixcdoc.errors import InputError, IxcdocError
from ixcdoc.ranking import PageChoice, Screen, choose_pages
from ixcdoc.tasks import SCREEN_HD

if TYPE_CHECKING:
    from PIL import Image

    from ixcdoc.inputs import Document, Sources
    from ixcdoc.preprocess import HDImage
    from ixcdoc.records import ResumeKey
    from ixcdoc.runtime import DocModel

Choose = Callable[["Document", list[int]], PageChoice]
Busy = Callable[[str, int], contextlib.AbstractContextManager[object]]


def text_choice(
    doc: Document, numbers: list[int], question: str, top_k: int, screen: Screen | None = None
) -> PageChoice:
    """The pages of ``doc`` to answer ``question`` from (``ranking.choose_pages`` over their
    text layer; without ``screen``, every page the text layer cannot rule out)."""
    texts = [doc.page_text(n) for n in numbers] if len(numbers) > 1 else [""] * len(numbers)
    return choose_pages(question, numbers, texts, top_k, screen)


def choose_among(
    model: DocModel,
    images: Sequence[Image.Image | HDImage],
    question: str,
    top_k: int = 1,
    *,
    batch_size: int | None = None,
) -> PageChoice:
    """The ``top_k`` of ``images`` (pages 1..n, none with a text layer) to answer from, as
    ``ask`` chooses them: all screened in one batch (MP-DocVQA's page images)."""

    def screen(pages: list[int]) -> dict[int, float]:
        scored = model.page_relevance(
            [images[p - 1] for p in pages], question, hd=SCREEN_HD, max_batch=batch_size
        )
        return dict(zip(pages, scored, strict=True))

    n = len(images)
    choice = choose_pages(question, range(1, n + 1), [""] * n, top_k, screen)
    return dataclasses.replace(choice, tier=SCREEN_HD) if choice.scores else choice


class Screener:
    """``ask``'s page choice for one run: ``screener(doc, numbers)`` -> ``PageChoice``.

    ``model()`` gives the loaded model (loading it on first need: a document whose pages all
    have text never needs it). ``known``: scores an earlier run recorded, by content hash and
    page, reused instead of screening again. ``note(message)``: one line per screened
    document for the user (which pages, the tier, the choice and its scores).
    ``busy(source, pages)``: a context manager around the model's screening (a spinner).
    """

    def __init__(
        self,
        question: str,
        top_k: int,
        model: Callable[[], DocModel],
        *,
        batch_size: int | None = None,
        known: Mapping[str, Mapping[int, float]] | None = None,
        note: Callable[[str], None] | None = None,
        busy: Busy | None = None,
    ) -> None:
        self.question = question
        self.top_k = top_k
        self.model = model
        self.batch_size = batch_size
        self.known = known or {}
        self.note = note or (lambda message: None)
        self.busy = busy or (lambda source, pages: contextlib.nullcontext())

    def __call__(self, doc: Document, numbers: list[int]) -> PageChoice:
        reused: list[bool] = []

        def screen(pages: list[int]) -> dict[int, float]:
            known = self.known.get(doc.sha256, {})
            if all(p in known for p in pages):
                reused.append(True)
                return {p: known[p] for p in pages}
            return self._screen(doc, pages)

        choice = text_choice(doc, numbers, self.question, self.top_k, screen)
        if not choice.scores:
            return choice
        self.note(_summary(doc.source, choice, earlier=bool(reused)))
        return dataclasses.replace(choice, tier=SCREEN_HD)

    def _screen(self, doc: Document, pages: list[int]) -> dict[int, float]:
        """Scores of the pages that can be screened: rendered, not blank, at SCREEN_HD."""
        from ixcdoc.guards import is_blank
        from ixcdoc.preprocess import HDImage, hd_transform

        model = self.model()
        tile = model.config.tile
        images: list[HDImage] = []
        screened: list[int] = []
        for n in pages:
            try:
                page = doc.render(n).image
            except InputError as e:  # it cannot answer; not chosen, so say why here
                self.note(f"{doc.source} page {n}: not screened: {e.message}")
                continue
            if is_blank(page) and not doc.has_text_layer(n):
                continue  # a blank page answers nothing
            # Only the small image is kept: a long scan's native renders would fill the RAM.
            small = hd_transform(page, SCREEN_HD, tile)
            images.append(HDImage(None, small, SCREEN_HD, tile, native=page.size))
            screened.append(n)
        if not screened:
            return {}
        try:
            with self.busy(doc.source, len(images)):
                scores = model.page_relevance(
                    images, self.question, hd=SCREEN_HD, max_batch=self.batch_size
                )
        except IxcdocError as e:
            self.note(f"{doc.source}: screening failed ({e.message}); answering every page")
            return {}
        return dict(zip(screened, scores, strict=True))


def _summary(source: str, choice: PageChoice, *, earlier: bool) -> str:
    """``scan.pdf: screened 3 pages at HD4 for the question; answering page 2 (score 1.3;
    next: page 1, -0.4)``."""
    scores = choice.scores
    chosen = list(choice.pages)
    rest = sorted((p for p in scores if p not in chosen), key=lambda p: (-scores[p], p))
    noun = "page" if len(chosen) == 1 else "pages"
    picked = ", ".join(str(p) for p in chosen)
    values = ", ".join(f"{scores[p]:.3f}" for p in chosen)
    what = "score" if len(chosen) == 1 else "scores"
    nxt = f"; next: page {rest[0]}, {scores[rest[0]]:.3f}" if rest else ""
    how = " (scores of an earlier run)" if earlier else ""
    return (
        f"{source}: screened {len(scores)} pages at HD{SCREEN_HD} for the question{how}; "
        f"answering {noun} {picked} ({what} {values}{nxt})"
    )


def prescreen(sources: Sources, screener: Screener, *, fallback: Choose | None = None) -> Choose:
    """Choose the pages of every document of ``sources`` now, before any page is answered,
    and return the ``read_pages`` filter that hands each document its choice.

    A document opened again later (the main pass) gets its choice by source and content; one
    this pass could not open gets ``fallback`` (the text-layer choice), or every page.
    """
    choices: dict[tuple[str, str], PageChoice] = {}
    for item in sources.documents():
        if isinstance(item, IxcdocError):
            continue  # the main pass records the error
        doc, numbers = item
        try:
            choices[(doc.source, doc.sha256)] = screener(doc, numbers)
        except InputError:
            continue  # unreadable now: the main pass says why

    def choose(doc: Document, numbers: list[int]) -> PageChoice:
        got = choices.get((doc.source, doc.sha256))
        if got is not None:
            return got
        return fallback(doc, numbers) if fallback is not None else PageChoice(tuple(numbers))

    return choose


def earlier_scores(output: str | Path | None, probe: ResumeKey) -> dict[str, dict[int, float]]:
    """Screening scores that an output file's records of the same job (question, tier setting,
    model) hold, by content hash: a rerun reuses them instead of loading the model again."""
    from ixcdoc.records import latest_records, resume_key

    if output is None or not Path(output).is_file():
        return {}
    out: dict[str, dict[int, float]] = {}
    for rec in latest_records(output):
        s = rec.screening
        if s is None or s.tier != SCREEN_HD or rec.content_sha256 is None:
            continue
        if resume_key(rec)._replace(content="", page=0) != probe:
            continue
        out.setdefault(rec.content_sha256, {}).update(s.scores)
    return out


def ask_choice(
    question: str,
    top_k: int,
    sources: Sources,
    model: Callable[[], DocModel],
    *,
    probe: ResumeKey,
    output: str | Path | None = None,
    batch_size: int | None = None,
    note: Callable[[str], None] | None = None,
    busy: Busy | None = None,
) -> Choose:
    """The page filter of an ``ask`` run (``batch.run``): every document screened now where
    its text layer cannot choose, scores of an earlier run in ``output`` reused."""
    screener = Screener(
        question,
        top_k,
        model,
        batch_size=batch_size,
        known=earlier_scores(output, probe),
        note=note,
        busy=busy,
    )

    def by_text(doc: Document, numbers: list[int]) -> PageChoice:
        return text_choice(doc, numbers, question, top_k)

    return prescreen(sources, screener, fallback=by_text)
