"""KV cache slots: which cache row each running sequence owns, kept dense at the front.

The cache is the decoder's static ``[slots, n_kv, max_len, head_dim]`` per layer; a sequence
owns one row (a beam search owns one row per beam). Rows in use are always ``0..used-1``: when
a sequence leaves, the last rows move into the holes it left (at most one row copy per freed
row), so a decode step runs on the leading ``used`` rows as a plain view, never a gather. A
sequence therefore keeps a list of its rows and updates it from the moves (the engine's
``_leave``). Pure bookkeeping.
"""

from __future__ import annotations

from collections.abc import Hashable


class SlotTable:
    """Owner of every cache row; allocation is lowest-first, release compacts."""

    def __init__(self, n_slots: int) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be >= 1")
        self.n_slots = n_slots
        self._owner: list[Hashable | None] = [None] * n_slots

    @property
    def used(self) -> int:
        """Rows in use; always the leading ones."""
        return sum(o is not None for o in self._owner)

    @property
    def free(self) -> int:
        """Rows that can be allocated now."""
        return self.n_slots - self.used

    def allocate(self, owner: Hashable, n: int = 1) -> list[int]:
        """Give ``owner`` n rows right after the used block."""
        start = self.used
        if start + n > self.n_slots:
            raise RuntimeError(f"{n} slot(s) requested, {self.free} free")
        for r in range(start, start + n):
            self._owner[r] = owner
        return list(range(start, start + n))

    def release(self, owner: Hashable) -> list[tuple[int, int]]:
        """Free ``owner``'s rows and refill the holes from the end; return the moves (src, dst).

        Apply the moves in order (copy row src to row dst); no move reads a row that an
        earlier move wrote.
        """
        self._owner = [None if o is owner else o for o in self._owner]
        moves: list[tuple[int, int]] = []
        used = self.used
        holes = [r for r in range(used) if self._owner[r] is None]
        tail = [r for r in range(used, self.n_slots) if self._owner[r] is not None]
        for dst, src in zip(holes, tail, strict=True):
            self._owner[dst], self._owner[src] = self._owner[src], None
            moves.append((src, dst))
        return moves
