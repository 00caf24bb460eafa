"""BM25 page ranking for ask, and the page choice with the model's screening."""

from __future__ import annotations

import math

from ixcdoc.ranking import PageChoice, Screen, bm25_scores, choose_pages, rank_pages, tokenize

PAGES = [
    "Introduction. We study document understanding with large models.",
    "Table 3 lists the datasets: DocVQA, ChartQA and InfoVQA, with their sizes.",
    "Conclusion. Future work will study video.",
]


def test_the_page_with_the_answer_ranks_first() -> None:
    assert rank_pages("What dataset is used in Table 3?", PAGES) == [1]
    assert rank_pages("future work", PAGES, top_k=2) == [2]


def test_no_overlap_gives_no_page() -> None:
    assert rank_pages("zebra", PAGES) == []
    assert rank_pages("what is the", PAGES) == []  # stopwords only


def test_scores_equal_a_hand_computed_bm25() -> None:
    pages = ["apple banana", "apple apple cherry cherry"]
    # one query term "cherry": df=1, n=2, idf=ln(1 + 1.5/1.5)=ln 2; page 2: f=2, len=4, avg=3
    norm = 1 - 0.75 + 0.75 * 4 / 3
    expect = math.log(2) * 2 * 2.5 / (2 + 1.5 * norm)
    got = bm25_scores("cherry", pages)
    assert got[0] == 0.0 and abs(got[1] - expect) < 1e-12


def test_tokenize_splits_cjk_characters() -> None:
    assert tokenize("表格 Table-3") == ["表", "格", "table", "3"]


# ---- choose_pages: the text layer first, the model's screening where it cannot rank --------

REPORT = [
    "Meeting notes about the office move.",
    "Quarterly revenue table with the invoice totals.",
    "Signature page with the contract stamp.",
]


def screen_by(scores: dict[int, float], calls: list[list[int]]) -> Screen:
    """A screen that returns fixed scores for the pages asked, remembering each call."""

    def screen(pages: list[int]) -> dict[int, float]:
        calls.append(list(pages))
        return {p: scores[p] for p in pages if p in scores}

    return screen


def test_text_pages_that_match_use_bm25_and_never_the_model() -> None:
    calls: list[list[int]] = []
    got = choose_pages("quarterly revenue", [1, 2, 3], REPORT, 1, screen_by({}, calls))
    assert got == PageChoice((2,)) and calls == []


def test_scanned_pages_are_screened_and_the_best_answered() -> None:
    calls: list[list[int]] = []
    scores = {1: -0.4, 2: 1.3, 3: 0.2}
    got = choose_pages("who signed?", [1, 2, 3], ["", " ", ""], 1, screen_by(scores, calls))
    assert calls == [[1, 2, 3]]
    assert got.pages == (2,) and got.scores == scores
    two = choose_pages("who signed?", [1, 2, 3], ["", "", ""], 2, screen_by(scores, []))
    assert two.pages == (2, 3)  # best first
    tie = choose_pages("q", [1, 2, 3], ["", "", ""], 1, screen_by({1: 0.5, 2: 0.9, 3: 0.9}, []))
    assert tie.pages == (2,)  # a tie goes to the earlier page


def test_no_screen_or_nothing_screened_answers_every_candidate() -> None:
    assert choose_pages("q", [1, 2, 3], ["", "", ""], 1).pages == (1, 2, 3)
    calls: list[list[int]] = []
    got = choose_pages("q", [1, 2, 3], ["", "", ""], 1, screen_by({}, calls))  # all blank
    assert got == PageChoice((1, 2, 3)) and calls == [[1, 2, 3]]


def test_as_many_candidates_as_top_k_need_no_screening() -> None:
    calls: list[list[int]] = []
    got = choose_pages("q", [4, 7], ["", ""], 2, screen_by({4: 1.0, 7: 2.0}, calls))
    assert got.pages == (4, 7) and calls == []
    assert choose_pages("q", [5], [""], 1, screen_by({}, calls)).pages == (5,)
    assert calls == []


def test_mixed_document_screens_the_scans_and_the_best_text_page() -> None:
    # pages 1-3 have text (page 2 matches, 1 and 3 share no word), 4 and 5 are scans
    texts = [*REPORT[:2], "Office move schedule.", "", ""]
    calls: list[list[int]] = []
    scores = {2: 0.1, 4: 2.0, 5: -1.0}
    got = choose_pages("quarterly revenue", [1, 2, 3, 4, 5], texts, 1, screen_by(scores, calls))
    assert calls == [[2, 4, 5]]  # text pages without a matching word are ruled out
    assert got.pages == (4,) and set(got.scores) == {2, 4, 5}


def test_text_pages_with_no_match_go_to_the_model() -> None:
    calls: list[list[int]] = []
    scores = {1: 0.0, 2: -1.0, 3: 3.0}
    got = choose_pages("zebra", [1, 2, 3], REPORT, 1, screen_by(scores, calls))
    assert calls == [[1, 2, 3]] and got.pages == (3,)
    # without a model (the text layer alone): every page, as before screening existed
    assert choose_pages("zebra", [1, 2, 3], REPORT, 1).pages == (1, 2, 3)
