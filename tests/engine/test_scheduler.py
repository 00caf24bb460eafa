"""Admission rules: arrival order, never more rows than are free, the head never overtaken,
and a step's vision tiles capped (the first request always goes)."""

from __future__ import annotations

from ixcdoc.engine.request import ChatRequest
from ixcdoc.engine.scheduler import Scheduler
from ixcdoc.engine.sequence import Handle, Sequence
from ixcdoc.generate import SamplingConfig


def _seq(name: str, beams: int = 1) -> Sequence:
    return Sequence(Handle(ChatRequest([], name, num_beams=beams)), SamplingConfig())


def _names(seqs: list[Sequence]) -> list[str]:
    return [s.request.query for s in seqs]


def _queue(*items: tuple[str, int, int], cap: int = 100) -> Scheduler:
    """A scheduler holding (name, beams, tiles) in arrival order."""
    s = Scheduler(cap)
    for name, beams, tiles in items:
        s.add(_seq(name, beams), tiles)
    return s


def test_admits_in_arrival_order_up_to_the_free_rows() -> None:
    s = _queue(("a", 1, 1), ("b", 1, 1), ("c", 1, 1))
    assert _names(s.admit(2)) == ["a", "b"]
    assert len(s) == 1
    assert s.admit(0) == []
    assert _names(s.admit(5)) == ["c"] and len(s) == 0


def test_beams_count_one_row_each() -> None:
    s = _queue(("a", 2, 1), ("b", 3, 1))
    assert _names(s.admit(4)) == ["a"]  # b needs 3 rows, 2 are left
    assert _names(s.admit(3)) == ["b"]


def test_the_head_of_the_queue_is_never_overtaken() -> None:
    s = _queue(("beams", 3, 1), ("small", 1, 1), ("small2", 1, 1))
    assert s.admit(2) == []  # the single-row requests behind it wait too
    assert len(s) == 3
    assert _names(s.admit(5)) == ["beams", "small", "small2"]


def test_a_steps_vision_tiles_are_capped_but_the_first_always_goes() -> None:
    s = _queue(("big", 1, 60), ("a", 1, 30), ("b", 1, 10), cap=50)
    assert _names(s.admit(8)) == ["big"]  # over the cap alone: admitted, and nothing with it
    assert _names(s.admit(8)) == ["a", "b"]  # 30 + 10 <= 50
    s = _queue(("a", 1, 30), ("b", 1, 30), ("c", 1, 5), cap=50)
    assert _names(s.admit(8)) == ["a"]  # b would bring 60; c behind it waits (FIFO)


def test_drain_empties_the_queue_in_arrival_order() -> None:
    s = _queue(("a", 1, 1), ("b", 2, 1))
    assert _names(s.drain()) == ["a", "b"]
    assert len(s) == 0 and s.admit(4) == []
