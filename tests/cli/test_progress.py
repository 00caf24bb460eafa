"""The progress counts: means over the run, an ETA in tokens, lines that fit the screen."""

from __future__ import annotations

import pytest
from rich.cells import cell_len

from ixcdoc.cli.progress import RunProgress, clock, from_drafts, pack


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _run(total: int = 6, cap: int = 100) -> tuple[RunProgress, Clock]:
    c = Clock()
    p = RunProgress(cap=cap, now=c)
    p.total = total
    return p, c


def test_rates_are_means_over_the_run_not_the_last_samples() -> None:
    p, c = _run(total=4)
    p.start(1, "a.pdf p1")
    p.start(2, "a.pdf p2")
    c.t += 10
    for _ in range(30):
        p.token(1)
    for _ in range(10):
        p.token(2)
    p.end(1, 30)
    c.t += 30  # 40 s since the first page started; one page done
    assert p.tokens_per_s() == pytest.approx(40 / 40)
    assert p.pages_per_s() == pytest.approx(1 / 40)
    p.end(2, 10)  # a second page finishing at the same instant doubles the mean, no spike
    assert p.pages_per_s() == pytest.approx(2 / 40)
    assert p.summary() == "2 pages in 0:40, 0.05 pages/s, 40 tokens, 1.00 tok/s"


def test_the_eta_counts_tokens_from_the_first_token_and_is_a_bound_until_a_page_ends() -> None:
    p, c = _run(total=3, cap=100)
    assert p.eta() is None  # nothing generated: no rate yet
    p.start(1, "x p1")
    p.start(2, "x p2")
    c.t += 5
    for _ in range(10):
        p.token(1)
        p.token(2)
    # 20 tokens in 5 s = 4 tok/s; left: 2 x (100 - 10) in flight + 1 x 100 waiting = 280.
    left, exact = p.eta()  # type: ignore[misc]
    assert (left, exact) == (pytest.approx(280 / 4), False)
    p.end(1, 10)  # finished pages are 10 tokens long: the estimate follows them
    left, exact = p.eta()  # type: ignore[misc]
    assert exact is True
    assert left == pytest.approx((0 + 10) / 4)  # page 2 is at its 10; page 3: 10


def test_skipped_and_blank_pages_count_as_done_but_not_as_model_pages() -> None:
    p, c = _run(total=3)
    p.end(1, None)  # skipped (done in an earlier run)
    p.start(2, "b p1")
    c.t += 2
    p.token(2)
    p.end(2, 1)
    p.end(3, None)  # blank
    assert (p.done, p.finished, p.lengths) == (3, 1, [1])
    assert p.summary().startswith("1 page in 0:02")


@pytest.mark.parametrize("width", range(20, 201, 9))
def test_no_line_is_wider_than_the_screen(width: int) -> None:
    p, c = _run(total=1234)
    for k in range(40):
        p.start(k, f"a-rather-long-document-name-{k}.pdf p{k + 1}")
    c.t += 3725
    for _ in range(123456):
        p.token(3)
    p.end(0, 500, 4321, 123)
    lines = p.lines(width)
    assert all(cell_len(line) <= width for line in lines), lines
    assert any("24% from drafts" in line for line in lines)
    assert any("1/1234 pages" in line for line in lines)
    assert any(line.startswith("running 39") for line in lines)
    assert any("123,456 tokens" in line for line in lines)


def test_the_pages_in_flight_are_named_as_far_as_they_fit() -> None:
    p, _ = _run()
    for k in range(5):
        p.start(k, f"doc{k}.pdf p1")
    (line,) = [x for x in p.lines(60) if x.startswith("running")]
    assert line == "running 5: doc0.pdf p1 (0 tok), doc1.pdf p1 (0 tok), +3 more"


def test_pack_never_splits_an_item() -> None:
    assert pack(["aaa", "bb", "cccc"], 9) == ["aaa · bb", "cccc"]
    assert pack(["a" * 12, "b"], 9) == ["a" * 12, "b"]


def test_clock() -> None:
    assert [clock(s) for s in (0, 59.4, 61, 3600, 3725)] == [
        "0:00",
        "0:59",
        "1:01",
        "1:00:00",
        "1:02:05",
    ]


def test_the_tokens_from_drafts_are_summed_over_the_pages_the_model_finished() -> None:
    p, c = _run(total=4)
    p.start(1, "a.pdf p1")
    c.t += 10
    for _ in range(20):
        p.token(1)
    p.end(1, 20, 300, 12)  # 20 tokens, 12 of them accepted from a 300-token draft
    p.end(2, None)  # blank: no model work, nothing drafted
    p.end(3, 17, 0, 7)  # no draft (a scan): 7 accepted from its own output
    assert (p.drafting, p.accepted, sum(p.lengths)) == (True, 19, 37)
    # 19 of 37 is 51.4%: floored, so 100% only when every token came from a draft
    assert p.summary().endswith(", 51% of tokens from drafts (19 of 37)")
    assert p.lines(80)[-1].endswith(" · 51% from drafts")


def test_no_draft_no_acceptance() -> None:
    p, c = _run(total=2)
    p.start(1, "a.pdf p1")
    c.t += 4
    p.token(1)
    p.end(1, 1, 0, 0)  # --speculate off: the record says 0 and 0
    assert "drafts" not in p.summary() and not any("drafts" in x for x in p.lines(80))


def test_the_share_from_drafts_is_floored() -> None:
    assert from_drafts(3402, 5577) == "61% of tokens from drafts"
    assert from_drafts(999, 1000) == "99% of tokens from drafts"
    assert from_drafts(7, 7) == "100% of tokens from drafts"
    assert from_drafts(0, 0) == "0% of tokens from drafts"
    assert from_drafts(3402, 5577, short=True) == "61% from drafts"


def test_the_note_under_a_page_gives_its_drafts_acceptance() -> None:
    from ixcdoc.cli.display import page_note
    from tests.test_records import make

    rec = make()  # 120 tokens in 2 s, 61 of them accepted from drafts
    assert page_note(rec).endswith(", 120 tokens, 60.0 tok/s, 50% of tokens from drafts)")
    off = make(timings={**make().to_dict()["timings"], "draft_tokens": 0, "accepted_tokens": 0})
    assert page_note(off).endswith(", 120 tokens, 60.0 tok/s)")
