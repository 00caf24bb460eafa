"""The page reader (ixcdoc/reading.py), without a model: which pages are read and in what
order, what a skipped or unreadable one looks like, the blank check and its text-layer
exception, the tier plan, and reading ahead on a thread."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ixcdoc.inputs import Document, Sources, open_document
from ixcdoc.planning import TierChoice
from ixcdoc.ranking import PageChoice
from ixcdoc.reading import (
    Opened,
    PageItem,
    Selected,
    TierPlan,
    ahead,
    read_page,
    read_pages,
    select_pages,
)
from ixcdoc.records import Screening
from tests.cli.helpers import corrupt_pdf, text_pdf, text_png, white_png


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    text_png(root / "a.png", "alpha")
    text_pdf(root / "b.pdf", ["page one", None, "page three"])
    corrupt_pdf(root / "c.pdf")
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shape(items: Iterator[Opened | PageItem | Selected]) -> list[tuple[str, ...]]:
    """Each item as (kind, file name, page, what it is) for comparing a whole stream."""
    out: list[tuple[str, ...]] = []
    for it in items:
        if isinstance(it, Opened):
            out.append(("opened", Path(it.source).name, str(it.pages), str(it.numbers)))
        elif isinstance(it, Selected):
            out.append(("read", Path(it.doc.source).name, str(it.page)))
        else:
            what = "skipped" if it.skipped else (it.error.code if it.error else "page")
            out.append(("item", Path(it.source).name, str(it.page), what))
    return out


def test_every_selected_page_in_input_order_and_a_file_that_did_not_open_as_one_error(
    folder: Path,
) -> None:
    assert _shape(select_pages(Sources([str(folder)]).documents())) == [
        ("opened", "a.png", "1", "(1,)"),
        ("read", "a.png", "1"),
        ("opened", "b.pdf", "3", "(1, 2, 3)"),
        ("read", "b.pdf", "1"),
        ("read", "b.pdf", "2"),
        ("read", "b.pdf", "3"),
        ("opened", "c.pdf", "1", "()"),
        ("item", "c.pdf", "None", "corrupt"),
    ]


def test_a_file_whose_bytes_were_read_keys_its_error_by_them_a_missing_one_by_nothing(
    folder: Path,
) -> None:
    items = [
        it
        for it in select_pages(
            Sources([str(folder / "c.pdf"), str(folder / "nope.pdf")]).documents()
        )
        if isinstance(it, PageItem)
    ]
    assert [(it.sha256, it.error.code if it.error else None) for it in items] == [
        (_sha(folder / "c.pdf"), "corrupt"),
        (None, "not_found"),
    ]


def test_done_pages_are_handed_over_skipped_and_never_read(folder: Path) -> None:
    sha = _sha(folder / "b.pdf")
    asked: list[tuple[str, int]] = []

    def skip(sha256: str, page: int) -> bool:
        asked.append((sha256, page))
        return sha256 == sha and page != 2

    items = list(read_pages(Sources([str(folder / "b.pdf")]), skip=skip))
    pages = [it for it in items if isinstance(it, PageItem)]
    assert asked == [(sha, 1), (sha, 2), (sha, 3)]
    assert [(it.page, it.skipped, it.rendered is not None) for it in pages] == [
        (1, True, False),
        (2, False, True),
        (3, True, False),
    ]


def test_the_choice_narrows_and_orders_the_pages_and_its_screening_goes_with_each(
    folder: Path,
) -> None:
    def choose(doc: Document, numbers: list[int]) -> PageChoice:
        assert numbers == [1, 2, 3]
        return PageChoice(pages=(3, 1), scores={1: 0.5, 2: -1.0, 3: 2.0}, tier=4)

    items = list(read_pages(Sources([str(folder / "b.pdf")]), choose=choose))
    assert [(it.pages, it.numbers) for it in items if isinstance(it, Opened)] == [(2, (3, 1))]
    pages = [it for it in items if isinstance(it, PageItem)]
    want = Screening(tier=4, scores={1: 0.5, 2: -1.0, 3: 2.0}, chosen=(3, 1))
    assert [(it.page, it.screening) for it in pages] == [(3, want), (1, want)]


def test_a_choice_without_a_model_pass_records_no_screening(folder: Path) -> None:
    items = read_pages(Sources([str(folder / "b.pdf")]), choose=lambda d, n: PageChoice((2,)))
    assert [(it.page, it.screening) for it in items if isinstance(it, PageItem)] == [(2, None)]


def test_a_white_page_is_blank_unless_its_text_layer_has_words(tmp_path: Path) -> None:
    import pymupdf

    white = white_png(tmp_path / "white.png")
    # Page 1: words white on white (the render looks empty, the text layer has them);
    # page 2: nothing at all.
    pdf = pymupdf.open()
    pdf.new_page(width=200, height=150).insert_text((10, 40), "words", color=(1, 1, 1))
    pdf.new_page(width=200, height=150)
    pdf.save(tmp_path / "b.pdf")
    with open_document(white) as doc:
        assert read_page(doc, 1).blank
    with open_document(tmp_path / "b.pdf") as doc:
        assert [read_page(doc, n).blank for n in (1, 2)] == [False, True]


def test_the_reader_without_rendering_hands_over_what_the_feeder_needs(folder: Path) -> None:
    with open_document(folder / "b.pdf") as doc:
        page = read_page(doc, 1, render=False, source="named.pdf")
    assert page.rendered is None and page.info is not None and page.has_text
    assert (page.source, page.page, page.page_count) == ("named.pdf", 1, 3)
    assert page.origin == folder / "b.pdf"


def test_a_page_with_a_text_layer_carries_it_as_the_draft_when_asked(folder: Path) -> None:
    """The draft is the page's text layer as ``page_text`` reads it, rendered or not; a page
    without one (page 2, an image) has none, and a job that does not draft reads none."""
    with open_document(folder / "b.pdf") as doc:
        text = doc.page_text(1)
        assert "page one" in text
        assert read_page(doc, 1, draft=True).draft == text
        assert read_page(doc, 1, render=False, draft=True).draft == text
        assert read_page(doc, 2, draft=True).draft is None
        assert read_page(doc, 2, render=False, draft=True).draft is None
        assert read_page(doc, 1).draft is None
    with open_document(folder / "a.png") as doc:
        assert read_page(doc, 1, draft=True).draft is None
    items = read_pages(Sources([str(folder / "b.pdf")]), drafts=True)
    drafts = [(it.page, it.draft) for it in items if isinstance(it, PageItem)]
    assert [(p, d is not None and "page" in d) for p, d in drafts] == [
        (1, True),
        (2, False),
        (3, True),
    ]


def test_a_huge_text_layer_is_cut_to_the_draft_limit(tmp_path: Path) -> None:
    import pymupdf

    from ixcdoc.tasks import DRAFT_CHARS

    # A page whose text layer is far longer than any transcription: 400 rows of 1-pt text.
    pdf = pymupdf.open()
    rows = "\n".join(f"{i:04d} " + "0123456789 " * 24 for i in range(400))
    pdf.new_page(width=400, height=400).insert_text((2, 2), rows, fontsize=1)
    pdf.save(tmp_path / "huge.pdf")
    with open_document(tmp_path / "huge.pdf") as doc:
        text = doc.page_text(1)
        draft = read_page(doc, 1, draft=True).draft
    assert len(text) > DRAFT_CHARS
    assert draft == text[:DRAFT_CHARS]


def test_the_tier_plan_applies_only_once_set_and_only_to_pages_the_model_reads(
    folder: Path,
) -> None:
    plan = TierPlan()
    with open_document(folder / "b.pdf") as doc:
        before, page, blank = read_page(doc, 1), read_page(doc, 3), read_page(doc, 2)
    plan.apply(before)
    assert before.tier is None  # no rule yet: the runner chooses later
    chosen: list[int] = []

    def choose(info: object) -> TierChoice:
        chosen.append(1)
        return SimpleNamespace(hd=7)  # type: ignore[return-value]

    plan.set(choose)
    plan.apply(page)
    plan.apply(blank)
    assert page.tier is not None and page.tier.hd == 7
    assert blank.blank and blank.tier is None
    plan.apply(page)  # chosen once
    assert chosen == [1]


def test_reading_ahead_keeps_the_order_and_raises_the_readers_error_in_the_consumer() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("reader failed")

    got: list[int] = []
    with pytest.raises(RuntimeError, match="reader failed"):
        for x in ahead(items(), depth=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
