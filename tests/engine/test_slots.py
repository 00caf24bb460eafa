"""The slot table: rows in use are always the leading ones; release refills holes from the end."""

from __future__ import annotations

import pytest

from ixcdoc.engine.slots import SlotTable


def test_slot_release_refills_holes_from_the_end() -> None:
    t = SlotTable(6)
    a, b, c, d = object(), object(), object(), object()
    assert t.allocate(a) == [0]
    assert t.allocate(b, 2) == [1, 2]
    assert t.allocate(c) == [3]
    assert t.allocate(d, 2) == [4, 5]
    assert t.free == 0
    moves = t.release(b)  # holes 1, 2 take the last rows 4, 5 (d's)
    assert moves == [(4, 1), (5, 2)] and t.used == 4
    assert t.release(d) == [(3, 1)]  # c moves down from row 3 into d's first row
    assert t.release(c) == [] and t.used == 1
    assert t.allocate(b) == [1]


def test_allocation_past_the_slots_is_refused() -> None:
    t = SlotTable(2)
    t.allocate(object())
    with pytest.raises(RuntimeError, match="2 slot"):
        t.allocate(object(), 2)
    assert t.used == 1
    with pytest.raises(ValueError):
        SlotTable(0)
