"""BM25 page ranking for ask."""

from __future__ import annotations

import math

from ixcdoc.ranking import bm25_scores, rank_pages, tokenize

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
