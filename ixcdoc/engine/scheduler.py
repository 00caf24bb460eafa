"""Admission: which waiting requests start now (FIFO, never more rows than are free).

A request is admitted when the cache has a free row for each of its beams; its slot rows hold
``max_len`` positions, and ``Engine.submit`` already refused any request whose prompt plus
``max_new_tokens`` exceeds that, so an admitted sequence can never run out of cache: there is
nothing to preempt. The head of the queue is never overtaken (a beam request waiting for three
rows is not starved by single-row requests behind it). Admissions per step are capped by the
vision tiles they bring (their crops go through the vision tower as one batch) so the vision
activations stay within what the memory model counts.
"""

from __future__ import annotations

from collections import deque

from ixcdoc.engine.sequence import Sequence


class Scheduler:
    """The waiting queue and the admission rule."""

    def __init__(self, vision_tiles: int) -> None:
        self.waiting: deque[tuple[Sequence, int]] = deque()  # (sequence, its vision tiles)
        self.vision_tiles = vision_tiles

    def add(self, seq: Sequence, tiles: int) -> None:
        """Queue a sequence that brings ``tiles`` ViT tiles (global views + crops)."""
        self.waiting.append((seq, tiles))

    def __len__(self) -> int:
        return len(self.waiting)

    def drain(self) -> list[Sequence]:
        """Empty the queue: every waiting sequence, in arrival order."""
        out = [seq for seq, _ in self.waiting]
        self.waiting.clear()
        return out

    def admit(self, free_rows: int) -> list[Sequence]:
        """Pop the sequences to start now, in arrival order."""
        out: list[Sequence] = []
        tiles = 0
        while self.waiting:
            seq, t = self.waiting[0]
            if seq.n_rows > free_rows:
                break
            if out and tiles + t > self.vision_tiles:
                break  # the first one always goes, whatever its size
            self.waiting.popleft()
            out.append(seq)
            free_rows -= seq.n_rows
            tiles += t
        return out
