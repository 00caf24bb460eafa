"""The n-gram proposer (engine/draft.py): what it proposes from a draft and from own output."""

from __future__ import annotations

import pytest

from ixcdoc.engine.draft import DRAFT, OWN, Proposer


def test_it_proposes_what_follows_the_longest_match_in_the_draft() -> None:
    p = Proposer([1, 2, 3, 4, 5, 6, 7, 8, 9])
    p.extend([9, 9, 3, 4])
    assert p.propose(3) == [5, 6, 7]
    assert p.source == DRAFT
    assert p.propose(10) == [5, 6, 7, 8, 9]  # the draft's end
    # the longest n wins: [2, 3] occurs twice, [1, 2, 3] only before 9
    q = Proposer([2, 3, 50, 1, 2, 3, 60])
    q.extend([1, 2, 3])
    assert q.propose(1) == [60]


def test_nothing_matches_nothing_is_proposed() -> None:
    p = Proposer([1, 2, 3])
    assert p.propose(4) == []  # no output yet
    p.extend([7, 8])
    assert p.propose(4) == [] and p.source is None
    assert p.propose(0) == []
    assert Proposer([]).propose(3) == []


def test_the_cursor_prefers_the_occurrence_after_the_last_verified_tokens() -> None:
    # "a b" occurs twice: first at 0, then at 4; once the model has followed the draft past
    # the first one, the next lookup continues after it, not back at the start
    draft = [10, 11, 20, 21, 10, 11, 30, 31]
    p = Proposer(draft, max_n=2)
    p.extend([10, 11])
    assert p.propose(2) == [20, 21]  # no cursor yet: the first occurrence
    p.accepted(2, 2)  # the model took 20, 21: the cursor is at 4
    p.extend([20, 21, 10, 11])
    assert p.propose(2) == [30, 31]  # the occurrence at/after the cursor
    assert p.cursor == 4
    # an occurrence before the cursor only when none follows it
    p.accepted(2, 2)
    assert p.cursor == 8
    p.extend([30, 31, 10, 11])
    assert p.propose(2) == [20, 21]


def test_own_output_repeats_are_proposed_latest_first() -> None:
    p = Proposer([], max_n=3)
    row = [5, 6, 7, 8]
    p.extend([*row, 1, *row[:2]])  # a repeated table row: "5 6" seen before
    assert p.propose(3) == [7, 8, 1]
    assert p.source == OWN
    p.extend([7, 8, 2, 5, 6])  # two earlier "5 6": the latest is followed by 7, 8, 2
    assert p.propose(3) == [7, 8, 2]
    p.accepted(3, 3)  # own-output proposals do not move the draft cursor
    assert p.cursor == 0


def test_the_draft_wins_over_own_output_at_the_same_length_unless_told() -> None:
    p = Proposer([1, 2, 99], max_n=2)
    p.extend([1, 2, 3, 1, 2])
    assert p.propose(1) == [99] and p.source == DRAFT
    assert p.propose(1, own_first=True) == [3] and p.source == OWN


def test_after_a_miss_the_draft_resumes_right_after_the_missed_token() -> None:
    # the model wrote 77 where the draft says 13 (a misread character): the next proposal
    # is the draft after the 13, though "77" occurs nowhere in the draft
    draft = [10, 11, 12, 13, 14, 15, 16]
    p = Proposer(draft, max_n=2)
    p.extend([10])
    assert p.propose(4) == [11, 12, 13, 14]
    p.accepted(2, 4)  # 11, 12 taken; then the model wrote 77 instead of 13
    p.extend([11, 12, 77])
    assert p.propose(3) == [14, 15, 16] and p.source == DRAFT
    p.accepted(0, 3)  # that missed at once too: back to n-gram lookups, nothing matches 77
    p.extend([78])
    assert p.propose(3) == []


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError):
        Proposer([1], max_n=1, min_n=2)
